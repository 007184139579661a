"""Checkpoint files of a training run, written in the background.

The trainer hands over a snapshot (tensors copied, so training can go on changing its
own) and keeps training while a thread writes it atomically; at most one write is in
flight, so memory stays bounded and a slow disk slows training instead of piling up.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError
from ..stores.fileio import atomic_torch_save


def snapshot(value: Any) -> Any:
    """A copy of nested dicts/lists whose tensors no longer share memory with training."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return value


RESUME_ONLY = ("optimizer", "lr_scheduler")  # twice a head's size for Adam: checkpoints only


class CheckpointWriter:
    """Writes `best_model.pt` and `checkpoint-epochN.pt` files off the training thread.
    Only checkpoints carry the optimizer's and scheduler's state (resume needs it);
    best_model.pt holds the weights, so a run keeps about 1 + 3 x keep head sizes."""

    def __init__(self, directory: Path, keep: int):
        self.directory, self.keep = directory, keep
        self.written: list[Path] = []  # this run's periodic checkpoints, oldest first
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, state: dict, epoch: int, periodic: bool, best: bool) -> None:
        """Queue one epoch's files (waits for the previous write first)."""
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(state, epoch, periodic, best),
                                        name="ph-checkpoint-writer", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until written; raise if a write failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise TrainingError(f"could not write a checkpoint in {self.directory} "
                                f"({type(error).__name__}: {error}); check free disk space and "
                                "permissions") from error

    def _write(self, state: dict, epoch: int, periodic: bool, best: bool) -> None:
        try:
            if periodic:
                path = self.directory / f"checkpoint-epoch{epoch}.pt"
                atomic_torch_save(state, path)
                self.written.append(path)
                self._prune()
            if best:  # the weights and what describes them; resuming needs a checkpoint
                atomic_torch_save({k: v for k, v in state.items() if k not in RESUME_ONLY},
                                  self.directory / "best_model.pt")
        except BaseException as exc:  # noqa: BLE001  (reported by wait())
            self._error = exc

    def _prune(self) -> None:
        """Keep this run's newest `keep` periodic checkpoints (0 keeps all); files of
        earlier runs are not touched."""
        while self.keep > 0 and len(self.written) > self.keep:
            self.written.pop(0).unlink(missing_ok=True)
