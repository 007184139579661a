"""One forward pass for many users' heads.

Heads of one architecture (model class and args, device, dtype) keep their weights in a
HeadBank: every parameter is stacked across heads in chunks, and each head's own module
holds views into its slot, so a weight is stored once. `HeadBank.forward` answers the
requests of many heads with one `stacked_forward` per chunk (batched matrix products
across heads): each head's weights are read once, with no per-head Python or kernel
launches. The idea of multi-adapter LLM servers, applied to whole small heads.
"""
from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import as_ph_error

MAX_CHUNK = 256  # heads per chunk; chunks grow 8, 16, 32, ... up to this
DERIVE_AFTER_USES = 8  # derived weights (e.g. fused W_o W_v) pay off only for heads in use


@dataclass(eq=False)
class Slot:
    """A head's place in a bank; `valid` turns False once the head gives it back.
    `derived` once its derived weights are computed (after DERIVE_AFTER_USES passes)."""

    chunk: "Chunk"
    index: int
    valid: bool = True
    uses: int = 0
    derived: bool = False


class Chunk:
    """Storage for `capacity` heads: one [capacity, *shape] tensor per parameter."""

    def __init__(self, shapes: dict[str, torch.Size], capacity: int, device, dtype):
        self.params = {n: torch.empty((capacity, *s), device=device, dtype=dtype)
                       for n, s in shapes.items()}
        self.capacity = capacity
        self.free = list(range(capacity - 1, -1, -1))  # pop() hands out the lowest index

    @property
    def used(self) -> int:
        return self.capacity - len(self.free)


class HeadBank:
    """Stacked weights of the loaded heads of one architecture."""

    def __init__(self, model: nn.Module, args: dict, device: torch.device, dtype: torch.dtype,
                 budget_bytes: int | None = None):
        self.stacked_forward = type(model).stacked_forward
        self.derive = getattr(type(model), "stacked_derived", None)
        self.args, self.device, self.dtype = args, device, dtype
        self.param_names = [n for n, _ in model.named_parameters()]
        self.shapes = {n: p.shape for n, p in model.named_parameters()}
        with torch.device("meta"):
            derived = {n: t.shape[1:] for n, t in self._derived(model).items()}
        self.shapes.update(derived)
        self.derived_names = set(derived)
        # never allocate (much) more than the memory budget can hold: one head over it
        # may be loaded while the least recently used one is being dropped
        self.max_slots = budget_bytes // self.slot_bytes() + 2 if budget_bytes else None
        self.chunks: list[Chunk] = []
        self._lock = threading.Lock()
        self._readers = 0
        self._deferred: list[Slot] = []

    @staticmethod
    def key(model: nn.Module, args: dict, device, dtype) -> tuple | None:
        """Bank key for a model that can run stacked (pure-parameter, with stacked_forward)."""
        if not hasattr(type(model), "stacked_forward") or any(True for _ in model.buffers()):
            return None
        return (type(model), json.dumps(args, sort_keys=True, default=str), str(device), str(dtype))

    def attach(self, model: nn.Module) -> Slot:
        """Move a head's weights into a free slot; its module then uses views of it.

        Derived weights wait until the head has been used a few times: for the default
        head they cost 10 ms to compute (a 768^3 product) and save 0.2 ms per request, a
        loss for heads that are loaded for one request and evicted."""
        with self._lock:
            slot = self._take()
        with torch.no_grad():
            for name, param in model.named_parameters():
                view = slot.chunk.params[name][slot.index]
                view.copy_(param.detach())
                param.data = view
        return slot

    def _derive(self, slot: Slot) -> None:
        """Compute a slot's derived weights from its parameters, in place."""
        params = {n: slot.chunk.params[n][slot.index:slot.index + 1] for n in self.param_names}
        with torch.no_grad():
            for name, tensor in self.derive(params, self.args).items():
                slot.chunk.params[name][slot.index].copy_(tensor[0])
        slot.derived = True

    def _derived(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if self.derive is None:
            return {}
        with torch.no_grad():
            return self.derive({n: p.detach().unsqueeze(0) for n, p in model.named_parameters()},
                               self.args)

    def slot_bytes(self) -> int:
        """Memory one head takes in this bank (its weights and derived weights)."""
        return sum(torch.Size(s).numel() for s in self.shapes.values()) * \
            torch.empty((), dtype=self.dtype).element_size()

    def release(self, slot: Slot, model: nn.Module) -> None:
        """Give a slot back. The module gets private copies first, so anyone still holding
        it keeps answering correctly; the slot is reused once no pass is reading."""
        with self._lock:
            if not slot.valid:
                return  # given back already
            slot.valid = False
        with torch.no_grad():
            for param in model.parameters():
                param.data = param.data.clone()
        with self._lock:
            if self._readers:
                self._deferred.append(slot)
            else:
                self._free(slot)

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
                    for slot in self._deferred:
                        self._free(slot)
                    self._deferred.clear()

    def forward(self, slots: list[Slot], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs for inputs[i] ([n_i, ...] on the bank's device) through the head in
        slots[i]. Call inside `reading()`, with slots read inside it."""
        for slot in {id(s): s for s in slots}.values():
            slot.uses += 1
            if self.derived_names and not slot.derived and slot.uses >= DERIVE_AFTER_USES:
                self._derive(slot)
        outputs: list = [None] * len(slots)
        by_chunk: dict[int, list[int]] = {}
        for i, slot in enumerate(slots):
            by_chunk.setdefault(id(slot.chunk), []).append(i)
        for items in by_chunk.values():
            chunk = slots[items[0]].chunk
            derived = {slots[i].index for i in items if slots[i].derived}
            for i, out in zip(items, self._forward_chunk(chunk, [slots[i].index for i in items],
                                                         [inputs[i] for i in items], derived)):
                outputs[i] = out
        return outputs

    def _forward_chunk(self, chunk: Chunk, indices: list[int], inputs: list[torch.Tensor],
                       derived: set[int] = frozenset()):
        """Outputs for requests to heads `indices` of one chunk: one stacked pass per run of
        nearby slots, computed on a view of the chunk. Copying the heads' weights together
        first (index_select) would cost more than the pass itself: a fresh buffer of
        15 MB per head, page-faulted in."""
        runs = list(_runs(sorted(set(indices))))
        run_of = {h: r for r, (lo, hi) in enumerate(runs) for h in range(lo, hi + 1)}
        members: dict[int, list[int]] = {}
        for i, h in enumerate(indices):
            members.setdefault(run_of[h], []).append(i)
        outputs: list = [None] * len(indices)
        for r, items in members.items():
            lo, hi = runs[r]
            use_derived = all(indices[i] in derived for i in items)
            outs = self._forward_range(chunk, lo, hi, [indices[i] - lo for i in items],
                                       [inputs[i] for i in items], use_derived)
            for i, out in zip(items, outs):
                outputs[i] = out
        return outputs

    def _forward_range(self, chunk: Chunk, lo: int, hi: int, positions: list[int],
                       inputs: list[torch.Tensor], use_derived: bool) -> list[torch.Tensor]:
        """One stacked pass over slots lo..hi; inputs[i] goes to slot lo + positions[i].
        Without `use_derived` the model computes from its own parameters alone."""
        params = {n: t[lo:hi + 1] for n, t in chunk.params.items()
                  if use_derived or n not in self.derived_names}
        n_heads = hi - lo + 1
        counts = [len(x) for x in inputs]
        fill: dict[int, int] = {}
        targets = []
        for p, n in zip(positions, counts):
            start = fill.get(p, 0)
            fill[p] = start + n
            targets.append((p, start, n))
        batch = max(fill.values())
        rows = torch.cat(inputs).to(self.device, self.dtype)
        order = [p * batch + s + k for p, s, n in targets for k in range(n)]
        identity = order == list(range(n_heads * batch))  # one row per head, in slot order
        if identity:
            x = rows.view(n_heads, batch, *rows.shape[1:])
        else:
            flat = torch.tensor(order, device=self.device)
            x = rows.new_zeros((n_heads * batch, *rows.shape[1:]))
            x.index_copy_(0, flat, rows)
            x = x.view(n_heads, batch, *rows.shape[1:])
        with torch.inference_mode():
            out = self.stacked_forward(params, x, self.args)
        out = out.reshape(n_heads * batch, *out.shape[2:])
        out = (out if identity else out.index_select(0, flat)).float()
        return list(torch.split(out, counts))

    def bytes_allocated(self) -> int:
        return sum(t.numel() * t.element_size() for c in self.chunks for t in c.params.values())

    def _take(self) -> Slot:
        for chunk in self.chunks:
            if chunk.free:
                return Slot(chunk, chunk.free.pop())
        total = sum(c.capacity for c in self.chunks)
        capacity = min(MAX_CHUNK, max(8, total))
        if self.max_slots is not None:
            capacity = max(1, min(capacity, self.max_slots - total))
        chunk = Chunk(self.shapes, capacity, self.device, self.dtype)
        self.chunks.append(chunk)
        return Slot(chunk, chunk.free.pop())

    def _free(self, slot: Slot) -> None:
        slot.chunk.free.append(slot.index)
        slot.chunk.free.sort(reverse=True)
        if not slot.chunk.used and slot.chunk in self.chunks:
            self.chunks.remove(slot.chunk)  # its memory goes once no module views it


def _runs(heads: list[int], max_gap: int = 1) -> Iterator[tuple[int, int]]:
    """(first, last) slot of each run of sorted `heads`, bridging gaps of up to `max_gap`
    unused slots: reading one idle head's weights costs about what another pass would."""
    lo = prev = heads[0]
    for h in heads[1:]:
        if h - prev > max_gap + 1:
            yield lo, prev
            lo = h
        prev = h
    yield lo, prev


def answer_many(items: list[tuple[Any, Any]]) -> list[Any]:
    """Answers for (LoadedHead or the error loading it, data) pairs: heads of one bank and
    input shape answer in one stacked pass, others one by one. Every failure stays with
    its own request, as a PHError."""
    results: list[Any] = [None] * len(items)
    groups: dict[tuple, list] = {}
    encoded = _encode_together(items)
    for i, (head, data) in enumerate(items):
        if isinstance(head, Exception):
            results[i] = head
            continue
        try:
            engine = head.engine
            x = encoded[i] if i in encoded else engine.preprocess(data)
            single = engine.is_single(data)
            bank = head.extra.get("bank")
            if bank is None or not isinstance(x, torch.Tensor):
                results[i] = engine.postprocess(engine.forward(x), single)
            else:
                groups.setdefault((id(bank), tuple(x.shape[1:])), []).append((i, head, x, single))
        except Exception as exc:  # noqa: BLE001
            results[i] = as_ph_error(exc, f"predicting with head '{head.uuid}'")
    for group in groups.values():
        try:
            _answer_stacked(group, results)
        except Exception:  # noqa: BLE001  (answer this group one head at a time)
            for i, head, x, single in group:
                results[i] = _answer_alone(head, x, single)
    return results


def _encode_together(items: list[tuple[Any, Any]]) -> dict[int, torch.Tensor]:
    """Text requests to heads whose pre-processors share one model-backed encoder,
    encoded in one call ({item index: [1, 1, dim]}). Such an encoder costs far more per
    text than a head's forward, and one batch of texts costs much less than encoding them
    one by one. A group that fails is left to encode request by request (and keep its own
    error)."""
    by_encoder: dict[int, tuple[Any, list]] = {}
    for i, (head, data) in enumerate(items):
        if isinstance(head, Exception) or not isinstance(data, str):
            continue
        encoder = getattr(head.engine.preprocessor, "shared_text_encoder", None)
        if encoder is not None:
            by_encoder.setdefault(id(encoder), (encoder, []))[1].append((i, data))
    out: dict[int, torch.Tensor] = {}
    for encoder, rows in by_encoder.values():
        if len(rows) < 2:
            continue
        try:
            vectors = encoder.encode([text for _, text in rows])
        except Exception:  # noqa: BLE001
            continue
        for k, (i, _) in enumerate(rows):
            out[i] = vectors[k:k + 1].unsqueeze(1)  # as the pre-processor shapes one text
    return out


def _answer_stacked(group: list, results: list) -> None:
    bank = group[0][1].extra["bank"]
    with bank.reading():  # slots read in here stay valid until the pass ends
        live = [(i, head, x, single, head.extra["slot"]) for i, head, x, single in group]
        for i, head, x, single, slot in live:
            if not slot.valid:  # evicted meanwhile: its module holds its own weights
                results[i] = _answer_alone(head, x, single)
        live = [item for item in live if item[4].valid]
        if live:
            outs = bank.forward([item[4] for item in live], [item[2] for item in live])
            for (i, head, _, single, _), out in zip(live, outs):
                try:
                    results[i] = head.engine.postprocess(out, single)
                except Exception as exc:  # noqa: BLE001
                    results[i] = as_ph_error(exc, f"predicting with head '{head.uuid}'")


def _answer_alone(head: Any, x: Any, single: bool) -> Any:
    try:
        return head.engine.postprocess(head.engine.forward(x), single)
    except Exception as exc:  # noqa: BLE001
        return as_ph_error(exc, f"predicting with head '{head.uuid}'")
