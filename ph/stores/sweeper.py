"""The distributed store's sweeper: objects nothing in Redis names any more leave the
bucket, even when the object store was away at the moment they were let go of.

Two kinds, both removed by `sweep` (one pass; `Sweeper` runs it every
PH_SWEEP_INTERVAL_S seconds, default 30, in `ph serve` and `ph worker`):

- Queued removals (NS:gc): every write that stops naming objects (a head deleted or
  replaced, weights superseded, example chunks rewritten) queues them in that same Redis
  write and removes them at once; what the object store did not take then stays queued
  until a pass finds it answering.
- Orphans: objects no record names that were never queued: a crash between an upload
  and the Redis write that names it (that call was never acknowledged), or Redis away
  when they were let go of. One is removed once older than PH_ORPHAN_GRACE_S (default
  1 h), the longest an upload may wait for the write that names it. The scan lists the
  whole bucket, so it runs at most once per grace period across all processes (0: on
  every pass, for tests).

One pass runs at a time across all processes: a lease in Redis (NS:gc:lease).
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import settings
from ..errors import ConflictError, StoreUnavailableError
from .base import weights_named

if TYPE_CHECKING:
    from .redis_store import RedisStore

log = logging.getLogger("ph.stores")
LEASE_S = 60  # a pass holds the lease while it runs (renewed); a dead one's frees itself
PAGE = 1000  # heads, queue entries per Redis call
AREAS = ("heads/", "code/", "data/")  # where ph writes objects
BY_CONTENT = ("code/", "data/")  # written again under the same name at any time
GC_PREFIX = "prefix:"  # an NS:gc field for every object under a prefix (a whole incarnation)
EMBEDDINGS = "/embeddings/"  # heads/<uuid>/<inc>/embeddings/<identity>/<pack>.emb


def embeddings_prefix(uuid: str, inc: str, identity: str = "") -> str:
    """Where an incarnation's embedding packs are (those of one encoder, given `identity`)."""
    return f"heads/{uuid}/{inc}{EMBEDDINGS}" + (f"{identity}/" if identity else "")


def sweep_interval() -> int:
    """Seconds between two passes ($PH_SWEEP_INTERVAL_S, default 30)."""
    return settings.value("PH_SWEEP_INTERVAL_S")


def orphan_grace() -> int:
    """Seconds an object nothing names is kept ($PH_ORPHAN_GRACE_S, default 3600)."""
    return settings.value("PH_ORPHAN_GRACE_S")


def sweep(store: "RedisStore", wait_s: float = 0.0) -> dict:
    """One pass: queued removals, then (when due) orphans. Returns counts: `ran` (False
    if another process's pass held the lease for `wait_s`), `pending_done`,
    `pending_left` (still queued: the object store did not answer), `orphans_deleted`.

    Raises:
        StoreUnavailableError: Redis cannot be reached.
    """
    counts = {"ran": False, "pending_done": 0, "pending_left": 0, "orphans_deleted": 0}
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(store.leases.held(store.key("gc", "lease"), LEASE_S, wait_s,
                                                  "another process is sweeping"))
        except ConflictError:
            return counts
        counts["ran"] = True
        try:
            counts["pending_done"] = _remove_pending(store)
            grace = orphan_grace()
            if grace == 0 or _scan_due(store, grace):
                counts["orphans_deleted"] = _remove_orphans(store, grace)
        except StoreUnavailableError as exc:
            log.info("sweep stopped: %s", getattr(exc, "reason", exc))
        counts["pending_left"] = store.call(store.redis.hlen, store.key("gc"))
        if counts["pending_left"]:
            log.info("%d object removal(s) stay queued until the object store answers",
                     counts["pending_left"])
    return counts


def _remove_pending(store: "RedisStore") -> int:
    """Remove every queued entry's objects (and the entry); their count."""
    done, cursor = 0, 0
    while True:
        cursor, fields = store.call(store.redis.hscan, store.key("gc"), cursor, count=PAGE)
        if fields:
            store.remove_queued([field.decode() for field in fields])
            done += len(fields)
        if cursor == 0:
            return done


def _scan_due(store: "RedisStore", grace: int) -> bool:
    last = store.call(store.redis.get, store.key("gc", "scanned"))
    return last is None or time.time() - float(last) >= grace


def _remove_orphans(store: "RedisStore", grace: int) -> int:
    """Remove listed objects older than `grace` that nothing names nor queues; their
    count. The bucket is listed before the records are read, so an object written
    during the scan is never judged."""
    started = time.time()
    cutoff = started - grace
    old = [name for area in AREAS for name, modified in store.objects.list_modified(area)
           if modified <= cutoff]
    named = referenced_objects(store)
    queued = {field.decode() for field in store.call(store.redis.hkeys, store.key("gc"))}
    prefixes = tuple(entry[len(GC_PREFIX):] for entry in queued if entry.startswith(GC_PREFIX))
    live = {name.rpartition("/")[0] for name in named if name.startswith("heads/")}
    orphans = [name for name in old if name not in named and name not in queued
               and not name.startswith(prefixes) and not _live_pack(name, live)]
    removed = [name for name in orphans if not name.startswith(BY_CONTENT)]
    store.objects.delete(removed)
    for name in orphans:
        if name.startswith(BY_CONTENT):  # written again since it was listed: named soon
            modified = store.objects.modified(name)
            if modified is not None and modified <= cutoff:
                store.objects.delete([name])
                removed.append(name)
    store.call(store.redis.set, store.key("gc", "scanned"), started)
    if removed:
        log.info("removed %d object(s) that no head names (older than %d s), e.g. %s",
                 len(removed), grace, removed[0])
    return len(removed)


def referenced_objects(store: "RedisStore") -> set[str]:
    """Every object a head record (weights, user code, data sets), a head's example log
    or the head list names now."""
    names: set[str] = set()
    head_list = store.read_head_list() or {}
    if head_list.get("python"):
        names.add(f"code/{head_list['python']}.py")
    after = b"-"
    while True:  # by value, not position: a head deleted meanwhile shifts no other out
        uuids = store.call(store.redis.zrangebylex, store.key("heads"), after, b"+",
                           start=0, num=PAGE)
        if not uuids:
            return names
        after = b"(" + uuids[-1]
        raws = store.call(store.redis.mget, [store.key("h", uuid.decode()) for uuid in uuids])
        pairs = [(uuid.decode(), raw) for uuid, raw in zip(uuids, raws) if raw is not None]
        records = [(uuid, json.loads(raw)) for uuid, raw in pairs]
        for _, record in records:
            names |= _named_by(record)
        logs = store.call(store.redis.mget, [store.key("ex", uuid, record["inc"])
                                             for uuid, record in records]) if records else []
        for raw in logs:
            if raw is not None:
                names.update(json.loads(raw)["chunks"])


def _live_pack(name: str, live: set[str]) -> bool:
    """An embedding pack (named by listing its folder: base.Embeddings) of an incarnation
    that still names objects: its weights (heads/<uuid>/<inc>) or example chunks
    (.../examples), the folders in `live`. A pack of one that names none is judged an
    orphan: derived data, encoded again if it is needed."""
    incarnation, found, _ = name.partition(EMBEDDINGS)
    return bool(found) and (incarnation in live or incarnation + "/examples" in live)


def _named_by(record: dict[str, Any]) -> set[str]:
    names = {f"code/{digest}.py" for digest in (record.get("code") or {}).values()}
    for revision in [record, *record.get("history", [])]:  # a roll-back restores trained_on
        names |= {f"data/{digest}.jsonl" for digest in revision.get("trained_on") or []}
    return names | weights_named(record)


class Sweeper:
    """`sweep` every `interval_s` (default $PH_SWEEP_INTERVAL_S) in a daemon thread,
    the first pass at once, until `stop`."""

    def __init__(self, store: "RedisStore", interval_s: float | None = None):
        self.store = store
        self.interval_s = interval_s or sweep_interval()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="ph-sweeper")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop after the pass running now (if any)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sweep(self.store)
            except Exception as exc:  # noqa: BLE001  (Redis away: the next pass tries again)
                log.warning("sweep failed, trying again in %g s: %s", self.interval_s, exc)
            self._stop.wait(self.interval_s)
