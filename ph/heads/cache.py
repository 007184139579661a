"""HeadCache: loaded heads under a memory budget, least recently used dropped first.

A dropped head loses nothing: its config and weights are on disk and it reloads on
its next call. Counts hits, misses and evictions for the stats action and benchmarks.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class LoadedHead:
    """One head in memory, with what identifies the on-disk state it was loaded from."""

    uuid: str
    signature: tuple
    revision: int
    config: dict
    engine: Any
    nbytes: int
    extra: dict = field(default_factory=dict)


class HeadCache:
    """uuid -> LoadedHead, bounded by `budget_bytes` (None: unbounded)."""

    def __init__(self, budget_bytes: int | None = None,
                 on_evict: Callable[[LoadedHead], None] | None = None,
                 shared_bytes: Callable[[], int] = lambda: 0):
        self.budget_bytes = budget_bytes
        self.on_evict = on_evict
        self.shared_bytes = shared_bytes  # parts all heads use (text encoders, their caches)
        self._heads: OrderedDict[str, LoadedHead] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes_held = 0
        self.hits = self.misses = self.evictions = 0

    def get(self, uuid: str, signature: tuple) -> LoadedHead | None:
        """The head if loaded from the same on-disk state (marks it recently used)."""
        with self._lock:
            head = self._heads.get(uuid)
            if head is not None and head.signature == signature:
                self._heads.move_to_end(uuid)
                self.hits += 1
                return head
            self.misses += 1
            return None

    def peek(self, uuid: str) -> LoadedHead | None:
        with self._lock:
            return self._heads.get(uuid)

    def put(self, head: LoadedHead) -> None:
        """Add or replace a head, then evict the least recently used over the budget."""
        evicted = []
        with self._lock:
            old = self._heads.pop(head.uuid, None)
            if old is not None:
                self.bytes_held -= old.nbytes
            self._heads[head.uuid] = head
            self.bytes_held += head.nbytes
            limit = None if self.budget_bytes is None else self.budget_bytes - self.shared_bytes()
            while limit is not None and self.bytes_held > limit and len(self._heads) > 1:
                _, victim = self._heads.popitem(last=False)
                self.bytes_held -= victim.nbytes
                self.evictions += 1
                evicted.append(victim)
        for victim in evicted + ([old] if old is not None and old is not head else []):
            if self.on_evict is not None:
                self.on_evict(victim)

    def drop(self, uuid: str) -> None:
        with self._lock:
            head = self._heads.pop(uuid, None)
            if head is not None:
                self.bytes_held -= head.nbytes
        if head is not None and self.on_evict is not None:
            self.on_evict(head)

    def uuids(self) -> list[str]:
        with self._lock:
            return list(self._heads)

    def stats(self) -> dict:
        with self._lock:
            return {"heads_loaded": len(self._heads), "bytes_held": self.bytes_held,
                    "shared_bytes": self.shared_bytes(),
                    "budget_bytes": self.budget_bytes, "hits": self.hits,
                    "misses": self.misses, "evictions": self.evictions}
