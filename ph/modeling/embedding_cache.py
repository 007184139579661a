"""Embeddings of texts seen before, kept per shared encoder: apps send the same phrases
again and again, and encoding is nearly all the cost of a real-text predict.

Bounded in bytes (least recently used out first); the bytes count in the process's
memory budget beside the encoder's own (HeadCache's `shared_bytes`).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Sequence

import torch

ENTRY_OVERHEAD = 120  # dict entry, key object and tensor header, roughly


class EmbeddingCache:
    """text -> embedding row, at most `max_bytes` (0 turns it off)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._rows: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = self.hits = self.misses = 0

    def encode(self, texts: Sequence[str], encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Rows for `texts`: cached ones looked up, the others (each distinct text once)
        encoded in one call of `encode`, then kept."""
        if self.max_bytes <= 0:
            return encode(list(texts))
        with self._lock:
            found = {t: self._rows.get(t) for t in texts}
            for text, row in found.items():
                if row is not None:
                    self._rows.move_to_end(text)
            missing = [t for t, row in found.items() if row is None]
            self.hits += len(texts) - len(missing)  # a repeat within the call is a hit too
            self.misses += len(missing)
        if missing:
            fresh = encode(missing)
            for text, row in zip(missing, fresh):
                found[text] = row.clone()  # its own storage: the batch is freed
            self._keep(missing, found)
        return torch.stack([found[t] for t in texts]) if texts else torch.zeros(0)

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
                    "hits": self.hits, "misses": self.misses}


def _size(text: str, row: torch.Tensor) -> int:
    return len(text.encode("utf-8")) + row.numel() * row.element_size() + ENTRY_OVERHEAD
