"""RedisStore's part in the object store: blobs by content (base.Blobs: user code and
training data sets) and the removal of objects nothing names any more, at once if the
object store answers, else queued in NS:gc for the sweeper (ph.stores.sweeper). The key
and object layout of the whole store: redis_store.
"""
from __future__ import annotations

import contextlib
import logging
import time

from ..errors import StoreUnavailableError, WeightsError
from .base import content_id, dataset_bytes, dataset_rows, snapshot_bytes, snapshot_state
from .objects import ObjectStore
from .redis_access import RedisAccess
from .sweeper import GC_PREFIX

log = logging.getLogger("ph.stores")


class RedisBlobs(RedisAccess):
    """base.Blobs, and forget_objects / remove_queued, for RedisStore, which gives
    `objects` (its ObjectStore)."""

    objects: ObjectStore

    # --- user code and data sets, by content ------------------------------------------------
    def save_code(self, source: str) -> str:
        digest = content_id(source.encode("utf-8"))
        self.objects.put(f"code/{digest}.py", source.encode("utf-8"))
        return digest

    def load_code(self, digest: str) -> str:
        data = self._by_content(f"code/{digest}.py", digest)
        if data is None:
            raise WeightsError(f"user code {digest} does not match its digest in the object "
                               "store; create the head list (or head) again with its source")
        return data.decode("utf-8")

    def save_dataset(self, rows: list[dict]) -> str:
        """Store a training data set by content (once, whoever trains on it); returns its id."""
        data = dataset_bytes(rows)
        digest = content_id(data)
        self.objects.put(f"data/{digest}.jsonl", data)
        return digest

    def load_dataset(self, digest: str) -> list[dict]:
        """The rows of a stored data set. Raises FileNotFoundError if it is gone."""
        data = self._by_content(f"data/{digest}.jsonl", digest)
        if data is None:
            raise FileNotFoundError(f"data set {digest}")
        return dataset_rows(data)

    def save_snapshot(self, state: dict) -> str:
        """Store a parent's weights by content (see base.Blobs); returns their id."""
        data = snapshot_bytes(state)
        digest = content_id(data)
        if self.objects.modified(f"bases/{digest}.pt") is None:  # 13 MB: upload once
            self.objects.put(f"bases/{digest}.pt", data)
        return digest

    def load_snapshot(self, digest: str) -> dict:
        return snapshot_state(self._by_content(f"bases/{digest}.pt", digest) or b"", digest)

    def _by_content(self, name: str, digest: str) -> bytes | None:
        """The bytes of a content-addressed object, or None if none matches `digest`; a
        cached copy that does not match (cut short by a crash, or pruned meanwhile) is
        fetched again."""
        for _ in range(2):
            try:
                data = self.objects.cached(name).read_bytes()
            except FileNotFoundError:
                data = b""
            if content_id(data) == digest:
                return data
            self.objects.forget_cached(name)
        return None

    # --- objects nothing names any more -----------------------------------------------------
    def forget_objects(self, entries: list[str], what: str, queued: bool = False) -> bool:
        """Remove objects nothing names any more (entries: names, or GC_PREFIX + a
        prefix): queued in NS:gc first (unless the write that stopped naming them already
        did), removed now if the object store answers, then cleared from the queue; else
        they stay queued for the sweeper. `what` starts the warning ("head 'h' was
        deleted; its objects"). Never raises: the change it follows has happened. True if
        they are gone now."""
        if not entries:
            return True
        try:
            if not queued:
                self.call(self.redis.hset, self.key("gc"),
                          mapping={entry: time.time() for entry in entries})
                queued = True
        except StoreUnavailableError:
            pass  # Redis away: if the removal below fails too, the orphan scan finds them
        try:
            self._remove_objects(entries)
        except StoreUnavailableError as exc:
            later = ("are queued for the sweeper, which removes them once the object store "
                     "answers") if queued else ("are left for the sweeper's orphan scan (Redis "
                                                "could not be reached to queue them)")
            log.warning("%s could not be removed now (%s) and %s", what,
                        getattr(exc, "reason", exc), later)
            return False
        with contextlib.suppress(StoreUnavailableError):  # else removed again: harmless
            self.call(self.redis.hdel, self.key("gc"), *entries)
        return True

    def remove_queued(self, entries: list[str]) -> None:
        """Remove these NS:gc entries' objects, then the entries (the sweeper's step).
        Raises StoreUnavailableError, the entries kept, if the object store fails."""
        self._remove_objects(entries)
        self.call(self.redis.hdel, self.key("gc"), *entries)

    def _remove_objects(self, entries: list[str]) -> None:
        self.objects.delete([e for e in entries if not e.startswith(GC_PREFIX)])
        for entry in entries:
            if entry.startswith(GC_PREFIX):
                self.objects.delete_prefix(entry[len(GC_PREFIX):])
