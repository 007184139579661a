"""AddinBank: the add-ins of many users of one parent revision, answered in one pass.

All users' add-ins of one layout (kind, rank, targets) over one frozen parent live in
one tensor per add-in part, [capacity, ...], a user to a slot. A pass runs the parent
once over every request's rows and, at each target, adds each row's own correction,
gathered by slot index (one batched product per target). A user costs its add-in's
bytes (78 KB at the default lora rank 4), not a whole head.

It has HeadBank's interface (attach, release, reading, forward, slot_bytes), so the
loader, the cache and `answer_many` treat both alike.
"""
from __future__ import annotations

import contextlib
import copy
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch

from .addins import AddinSpec, FrozenBase, addin_shapes, apply_addin
from .engine import InferenceEngine

MIN_CAPACITY = 16
MAX_GROWTH = 1024  # slots (78 MB of the default lora): the most one growth adds


@dataclass(eq=False)
class AddinSlot:
    """A user's row in the bank; `valid` turns False once the user's head gives it back."""

    index: int
    valid: bool = True


class AddinBank:
    """Stacked add-ins over one FrozenBase on `device` in `dtype`."""

    def __init__(self, base: FrozenBase, spec: AddinSpec, device: torch.device, dtype: torch.dtype):
        self.base, self.spec, self.device, self.dtype = base, spec, device, dtype
        self.shapes = addin_shapes(spec)
        self.tensors: dict[str, torch.Tensor] = {}
        self.capacity = 0
        self.free: list[int] = []
        self._lock = threading.Lock()
        self._readers = 0
        self._deferred: list[AddinSlot] = []

    def attach(self, state: Mapping[str, torch.Tensor]) -> AddinSlot:
        """Copy a user's add-in into a free slot (the bank grows when full)."""
        with self._lock:
            if not self.free:
                self._grow()
            slot = AddinSlot(self.free.pop())
            with torch.no_grad():  # under the lock: a growth meanwhile would lose the copy
                for name, tensor in self.tensors.items():
                    tensor[slot.index].copy_(state[name])
        return slot

    def _grow(self) -> None:
        """Double the capacity up to MAX_GROWTH slots more at a time (call under the
        lock), so unused slots stay within one growth of what the budget counts. Passes
        running meanwhile keep reading the old tensors, which hold every slot they were
        given."""
        capacity = max(MIN_CAPACITY, self.capacity + min(self.capacity, MAX_GROWTH))
        grown = {}
        for name, shape in self.shapes.items():
            tensor = torch.zeros((capacity, *shape), device=self.device, dtype=self.dtype)
            if name in self.tensors:
                tensor[:self.capacity].copy_(self.tensors[name])
            grown[name] = tensor
        self.free = list(range(capacity - 1, self.capacity - 1, -1)) + self.free
        self.tensors, self.capacity = grown, capacity

    def state(self, slot: AddinSlot) -> dict[str, torch.Tensor]:
        """A user's add-in, float32 on the CPU."""
        return {n: t[slot.index].detach().to("cpu", torch.float32).clone() for n, t in self.tensors.items()}

    def release(self, slot: AddinSlot, model: Any = None) -> None:
        """Give a slot back; reused once no pass is reading."""
        with self._lock:
            if not slot.valid:
                return
            slot.valid = False
            if self._readers:
                self._deferred.append(slot)
            else:
                self.free.append(slot.index)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Hold while computing with slots: no slot is reused during it."""
        with self._lock:
            self._readers += 1
        try:
            yield
        finally:
            with self._lock:
                self._readers -= 1
                if not self._readers:
                    self.free += [s.index for s in self._deferred]
                    self._deferred.clear()

    def forward(self, slots: list[AddinSlot], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs for inputs[i] ([n_i, ...]) through user slots[i]'s add-in: one pass of
        the parent for all rows. Call inside `reading()`."""
        counts = [len(x) for x in inputs]
        x = torch.cat(inputs).to(self.device, self.dtype)
        rows = torch.repeat_interleave(torch.tensor([s.index for s in slots], device=self.device),
                                       torch.tensor(counts, device=self.device))
        tensors, spec = self.tensors, self.spec
        with torch.inference_mode():
            out = self.base(x, lambda name, x_in, y: apply_addin(spec, tensors, rows, name, x_in, y))
        return list(torch.split(out.float(), counts))

    def slot_bytes(self) -> int:
        """Memory one user takes in this bank."""
        size = torch.empty((), dtype=self.dtype).element_size()
        return size * sum(torch.Size(s).numel() for s in self.shapes.values())

    def bytes_allocated(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class _SlotModel:
    """What an add-in head's engine calls as its model: its slot of the bank."""

    def __init__(self, bank: AddinBank, slot: AddinSlot):
        self.bank, self.slot = bank, slot

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.bank.forward([self.slot], [x])[0]


class AddinEngine(InferenceEngine):
    """One add-in user's engine: the parent's processors (the post-processor copied, for
    the user's own labels) and the user's slot in an AddinBank."""

    def __init__(self, bank: AddinBank, slot: AddinSlot, preprocessor: Any, postprocessor: Any,
                 labels: list | None):
        super().__init__(_SlotModel(bank, slot), preprocessor, copy.copy(postprocessor),
                         bank.device, bank.dtype, labels)
        self.bank, self.slot = bank, slot
        self.guard = bank.reading

    def place(self, model: Any) -> Any:
        return model  # the bank holds the weights on its device

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The user's add-in (not the parent's weights)."""
        return self.bank.state(self.slot)

    def param_bytes(self) -> int:
        return self.bank.slot_bytes()
