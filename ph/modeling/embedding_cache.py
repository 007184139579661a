"""Embeddings of texts seen before, kept per shared encoder: apps send the same phrases
again and again, and encoding is nearly all the cost of a real-text predict. Behind the
memory, optionally, this machine's EmbeddingStore on disk (texts any process encoded
for training; serving only reads and fills the memory).

Bounded in bytes (least recently used out first); the bytes count in the process's
memory budget beside the encoder's own (HeadCache's `shared_bytes`).
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import OrderedDict
from typing import Callable, Iterator, Sequence

import torch

_TRAINING = contextvars.ContextVar("ph_encoding_for_training", default=False)
ENTRY_OVERHEAD = 120  # dict entry, key object and tensor header, roughly


class EmbeddingCache:
    """text -> embedding row, at most `max_bytes` (0 turns it off)."""

    def __init__(self, max_bytes: int, disk=None):
        self.max_bytes = max_bytes
        self.disk = disk  # an EmbeddingStore behind the memory, or None
        self._rows: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._pinned: dict[str, list] = {}  # text -> [row, how many pins hold it]
        self._lock = threading.Lock()
        self.bytes = self.hits = self.misses = self.disk_hits = 0

    @contextlib.contextmanager
    def for_training(self, rows: dict[str, torch.Tensor] | None = None) -> Iterator[None]:
        """A training encodes its data in here: the disk store is read and written (only
        training fills it: serving's texts would grow it without end), and `rows`, which
        the run brought from its head's store (ph.heads.stored_embeddings), are answered
        first whatever the bound, not counted in the bytes: they go when the run ends."""
        rows = rows or {}
        with self._lock:
            for text, row in rows.items():
                self._pinned.setdefault(text, [row, 0])[1] += 1
        token = _TRAINING.set(True)
        try:
            yield
        finally:
            _TRAINING.reset(token)
            with self._lock:
                for text in rows:
                    entry = self._pinned[text]
                    entry[1] -= 1
                    if not entry[1]:
                        del self._pinned[text]

    def encode(self, texts: Sequence[str], encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Rows for `texts`: cached ones looked up, the others (each distinct text once)
        encoded in one call of `encode`, then kept."""
        disk = self.disk if _TRAINING.get() else None
        if self.max_bytes <= 0 and disk is None and not self._pinned:
            return encode(list(texts))
        with self._lock:
            found = {t: self._lookup(t) for t in texts}
            for text, row in found.items():
                if row is not None and text in self._rows:
                    self._rows.move_to_end(text)
            missing = [t for t, row in found.items() if row is None]
            self.hits += len(texts) - len(missing)  # a repeat within the call is a hit too
            self.misses += len(missing)
        if missing:
            on_disk = disk.get(missing) if disk is not None else {}
            self.disk_hits += len(on_disk)
            to_encode = [t for t in missing if t not in on_disk]
            fresh = dict(zip(to_encode, encode(to_encode))) if to_encode else {}
            if disk is not None:
                disk.put(fresh)
            for text in missing:
                row = on_disk.get(text)
                found[text] = row if row is not None else fresh[text].clone()  # own storage
            if self.max_bytes > 0:
                self._keep(missing, found)
        return torch.stack([found[t] for t in texts]) if texts else torch.zeros(0)

    def _lookup(self, text: str) -> torch.Tensor | None:
        pin = self._pinned.get(text)
        return pin[0] if pin is not None else self._rows.get(text)

    def _keep(self, texts: list[str], rows: dict) -> None:
        with self._lock:
            for text in texts:
                if text in self._rows:
                    continue
                self._rows[text] = rows[text]
                self.bytes += _size(text, rows[text])
            while self.bytes > self.max_bytes and self._rows:
                text, row = self._rows.popitem(last=False)
                self.bytes -= _size(text, row)

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._rows), "bytes": self.bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses, "disk_hits": self.disk_hits}


def _size(text: str, row: torch.Tensor) -> int:
    return len(text.encode("utf-8")) + row.numel() * row.element_size() + ENTRY_OVERHEAD
