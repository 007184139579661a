"""RedisStore: heads shared by many machines. Redis holds what must switch atomically
(head records and revisions, locks, training leases, jobs); an S3-compatible object
store holds the bulk (weights, user code, example chunks), each object immutable.

Keys (NS is the URL's namespace, default "ph"):
    NS:h:<uuid>         the head's record (JSON, config replaced by its content id)
    NS:cfg:<sha>        a config, by content (a million heads of one config share it)
    NS:heads            sorted set of every uuid (paged listing)
    NS:lock:<uuid>      a short mutex for a head's writers
    NS:train:<uuid>     the training lease: the token of the run that owns it
    NS:ex:<uuid>:<inc>  the head's example log (summary and chunk names)
    NS:fol:<parent>     the untrained children following a head
    NS:list             the head list (default config)
    NS:gc               objects to remove: field an object name, or "prefix:" + a prefix
                        (a deleted or replaced incarnation), value the time it was queued;
                        queued in the write that stops naming them, cleared once removed
    NS:gc:lease, NS:gc:scanned   the sweeper's single-flight lease, its last orphan scan
    NS:job:<id>, NS:latest:<uuid>, NS:stop:<id>, NS:beat:<id>   background jobs
    channel NS:changes  the uuid of every head that changed ("" for the head list)
Objects: heads/<uuid>/<inc>/weights-<rev>-<token>.pt, heads/<uuid>/<inc>/examples/...,
code/<digest>.py, data/<digest>.jsonl (training data sets, by content: a record's
`trained_on`). `inc` (incarnation) is new each time a uuid is created, so a replaced
or deleted head's objects can never be mistaken for the new one's. Objects nothing
names any more are removed at once if the object store answers, else by the sweeper
(ph.stores.sweeper) once it does.

Locks, training leases and fencing (every Lua script, with its KEYS and ARGV): ph.stores.leases.

Seeing changes without a cost per predict: every write publishes the uuid on
NS:changes; each process keeps the signatures it has read in memory and drops one when
its uuid is published. While the subscription is down, nothing is trusted from memory
(every call reads Redis), and on reconnecting everything is dropped once.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Iterator

import torch

from .. import settings
from ..errors import (ConflictError, HeadNotFoundError, NotFoundError, StoreUnavailableError,
                      WeightsError)
from .base import (ACTIVE, JobRetention, StoreBase, StoredExamples, check_uuid, content_id,
                   dataset_bytes, dataset_rows)
from .example_objects import ObjectExampleLog
from .fileio import load_state
from .job_queue import enqueue
from .leases import EXAMPLES_SWITCH, JOB_WRITE, SWITCH, Leases
from .objects import ObjectStore
from .sweeper import GC_PREFIX, Sweeper

log = logging.getLogger("ph.stores")
LOCK_LEASE_S = 20  # a dead holder's head lock frees itself after this
LOCK_WAIT_S = 30
# The change listener's liveness: it publishes an echo every ECHO_EVERY_S; memory is
# trusted only while an echo came back in the last ECHO_STALE_S (a silent network loss
# then costs at most that long of stale answers).
ECHO_EVERY_S, ECHO_TIMEOUT_S, ECHO_STALE_S = 1.0, 2.0, 3.0



def _redis_errors(method):
    """Redis being unreachable becomes a StoreUnavailableError (503) naming it."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return self.call(method, self, *args, **kwargs)
    return wrapper


def _unavailable_errors() -> tuple:
    """What Redis says while it cannot take a call now: unreachable, a replica after a
    failover, out of memory."""
    import redis
    return (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
            redis.OutOfMemoryError)


class RedisStore(StoreBase):
    """Head records in Redis, their objects in S3. The interface and its contracts:
    base.Store. ObjectExampleLog and the sweeper use a surface of their own, shared
    within ph.stores: call, redis, key, objects, leases, switch_examples, forget_objects,
    remove_queued."""

    distributed = True  # for tests that look at Redis and S3; code above the store never asks
    can_resend_jobs = True  # a queue: any worker can take a job sent again

    def __init__(self, redis_url: str, objects: str, endpoint: str | None, namespace: str,
                 cache_dir: Path):
        import redis

        self.url = redis_url
        self.ns = namespace
        self.root = Path(cache_dir).resolve()
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        # Ride out a blip (two quick retries; every write is safe to send twice), then say
        # clearly that Redis is away. The change listener has a client of its own.
        self.redis, self._listener_redis = (
            redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2,
                                 health_check_interval=15,
                                 retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
            for _ in range(2))
        self.objects = ObjectStore(objects, endpoint, self.root / "_objects")
        self.lease_s = settings.value("PH_TRAIN_LEASE_S")
        # Finished job records expire (Redis TTL) after the retention's age; there are no
        # files to count, so the age is the bound.
        self.job_ttl_s = JobRetention.from_env().max_age_s
        self._switch = self.redis.register_script(SWITCH)
        self.switch_examples = self.redis.register_script(EXAMPLES_SWITCH)
        self._write_job = self.redis.register_script(JOB_WRITE)
        self.leases = Leases(self.redis, self.call)  # head locks, training leases, the sweeper's
        self._configs: dict[str, str] = {}  # content id -> config JSON (immutable)
        self._sigs: dict[str, tuple] = {}  # uuid -> signature, valid while subscribed
        self._changes = 0  # bumped on every notification: a read that raced one is not kept
        self._sig_lock = threading.Lock()
        self._subscribed = threading.Event()
        self._echoed = 0.0  # when this listener last heard its own echo
        self._closed = threading.Event()
        self._sweeper: Any = None  # see start_sweeper
        self._listener = threading.Thread(target=self._listen, daemon=True,
                                          name="ph-store-changes")
        self._listener.start()

    def key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def unavailable(self, exc: Exception) -> StoreUnavailableError:
        where = self.url.split("@")[-1]
        return StoreUnavailableError(f"Redis ({where}) cannot be reached ({type(exc).__name__}: "
                                     f"{exc}); nothing was changed: try again when it is back")

    # --- heads ---------------------------------------------------------------------------
    def exists(self, uuid: str) -> bool:
        try:
            self.signature(uuid)
            return True
        except NotFoundError:
            return False

    def signature(self, uuid: str) -> tuple:
        """Changes whenever the head's record is rewritten; from memory while the change
        notifications are flowing (no round trip), else from Redis."""
        if self._trusted():
            sig = self._sigs.get(uuid)
            if sig is not None:
                return sig
        return self._signature_of(self._read_raw(uuid))

    def _trusted(self) -> bool:
        """Signatures in memory are current: subscribed, and Redis echoed recently."""
        return self._subscribed.is_set() and time.monotonic() - self._echoed < ECHO_STALE_S

    def _signature_of(self, record: dict) -> tuple:
        """Incarnation, version and write id: the write id differs even where a failover
        lost a write and the version number is given out again."""
        return (record["inc"], record["v"], record.get("w"))

    @_redis_errors
    def _read_raw(self, uuid: str) -> dict:
        changes = self._changes
        raw = self.redis.get(self.key("h", check_uuid(uuid)))
        if raw is None:
            self._sigs.pop(uuid, None)
            raise HeadNotFoundError(f"no head with uuid '{uuid}'; create it with "
                                    "create_head(uuid=...) or list them with list_heads()")
        record = json.loads(raw)
        with self._sig_lock:  # not if a notification arrived since the read began
            if changes == self._changes and self._trusted():
                self._sigs[uuid] = self._signature_of(record)
        return record

    def read(self, uuid: str) -> dict:
        record = self._read_raw(uuid)
        record["config"] = json.loads(self._config(record.pop("config_id")))
        return record

    @_redis_errors
    def _config(self, config_id: str) -> str:
        text = self._configs.get(config_id)
        if text is None:
            raw = self.redis.get(self.key("cfg", config_id))
            if raw is None:
                raise WeightsError(f"config {config_id} of a head is missing from Redis; "
                                   "create the head again")
            text = self._configs[config_id] = raw.decode("utf-8")
        return text

    @_redis_errors
    def _store_config(self, config: dict) -> str:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"))
        config_id = content_id(text.encode("utf-8"))
        if config_id not in self._configs:
            self.redis.set(self.key("cfg", config_id), text)
            self._configs[config_id] = text
        return config_id

    def _stored(self, record: dict) -> dict:
        """The record as kept in Redis: config by content id."""
        stored = {k: v for k, v in record.items() if k != "config"}
        stored["config_id"] = self._store_config(record["config"])
        return stored

    @_redis_errors
    def create(self, uuid: str, record: dict, state: dict | None = None,
               replace: bool = False) -> None:
        """Publish a new head (its weights uploaded first) in one Redis write; fails if
        the uuid exists, unless `replace`, which swaps the old head for the new one in
        that same write (there is no moment without a head) and then removes the old
        one's objects."""
        check_uuid(uuid)
        inc = uuidlib.uuid4().hex[:12]
        record = {**record, "inc": inc, "v": 1, "w": uuidlib.uuid4().hex[:12]}
        if state is not None:
            name = f"heads/{uuid}/{inc}/weights-1-{uuidlib.uuid4().hex[:8]}.pt"
            self.objects.put(name, _tensor_bytes(state))
            record.update(revision=1, weights=name)
        text = json.dumps(self._stored(record))
        old = self.redis.get(self.key("h", uuid)) if replace else None
        with self.redis.pipeline() as pipe:  # one transaction (MULTI/EXEC)
            pipe.set(self.key("h", uuid), text, nx=not replace)
            pipe.zadd(self.key("heads"), {uuid: 0})
            pipe.publish(self.key("changes"), uuid)
            gone = self._drop_incarnation(pipe, uuid, json.loads(old)["inc"]) if old else []
            created = pipe.execute()[0]
        if not created and self._read_raw(uuid).get("inc") == inc:
            created = True  # our own create, sent again by a client retry
        if not created:
            if record.get("weights"):
                self.forget_objects([record["weights"]],
                                    f"head '{uuid}' already exists; the weights uploaded for it")
            raise ConflictError(f"head '{uuid}' already exists")
        self._sigs.pop(uuid, None)
        if gone:
            self.forget_objects(gone, f"head '{uuid}' was replaced; the old head's objects",
                                queued=True)

    def write(self, uuid: str, record: dict) -> dict:
        """Rewrite a head's record if it has not changed since `record` was read (and,
        inside a training run, only while the run holds its lease): leases.SWITCH."""
        return self._rewrite(uuid, record, [])

    @_redis_errors
    def _rewrite(self, uuid: str, record: dict, dropped: list[str]) -> dict:
        """`write`, with `dropped`: objects the new record no longer names, queued for
        removal in that same write (the caller then removes them,
        `forget_objects(queued=True)`)."""
        new = {**record, "v": record["v"] + 1, "w": uuidlib.uuid4().hex[:12]}
        self._publish(uuid, f"{record['inc']}:{record['v']}", new, dropped)
        return new

    def _save_weights(self, uuid: str, record: dict, revision: int, state: dict) -> str:
        """Uploaded under a name of their own (immutable: a cached copy never goes stale)."""
        name = f"heads/{uuid}/{record['inc']}/weights-{revision}-{uuidlib.uuid4().hex[:8]}.pt"
        self.objects.put(name, _tensor_bytes(state))
        return name

    def _switch_weights(self, uuid: str, old: dict, new: dict) -> dict:
        """One fenced write (leases.SWITCH) that also queues the old weights for removal."""
        dropped = [old["weights"]] if old.get("weights") else []
        try:
            new = self._rewrite(uuid, new, dropped)
        except (ConflictError, HeadNotFoundError):  # refused for sure: nothing names it
            self.forget_objects([new["weights"]],
                                f"head '{uuid}': the refused upload of new weights")
            raise
        self.forget_objects(dropped, f"head '{uuid}' has new weights; the old weights",
                            queued=True)
        return new

    def _publish(self, uuid: str, expected: str, new: dict, dropped: list[str]) -> None:
        """Switch the record to `new` if it is still at `expected` ("inc:v"), queueing
        the `dropped` objects for removal in that same write (leases.SWITCH)."""
        token = self.leases.token_in_thread(uuid)
        result = self._switch(keys=[self.key("h", uuid), self.key("train", uuid),
                                    self.key("changes"), self.key("gc")],
                              args=[expected, json.dumps(self._stored(new)), token, uuid,
                                    new["w"], time.time(), *dropped])
        self._sigs.pop(uuid, None)
        if result == -1:
            raise HeadNotFoundError(f"head '{uuid}' was deleted meanwhile")
        if result == -2:
            raise ConflictError(f"head '{uuid}' was changed by another call meanwhile; nothing "
                                "was written: try again")
        if result == -3:
            raise ConflictError(f"head '{uuid}': this training run lost its lease (it was too "
                                "slow to renew it, or Redis lost it), so its weights were not "
                                "published; the head keeps its current weights. Train again")

    def read_current(self, uuid: str) -> tuple[dict, dict | None]:
        """(record, its weights), read together even while a writer switches them."""
        for _ in range(5):
            record = self.read(uuid)
            try:
                return record, self.read_weights(uuid, record)
            except FileNotFoundError:
                continue  # switched to newer weights between the two reads: read again
        raise WeightsError(f"head '{uuid}': its weights object {record.get('weights')} is missing "
                           f"from the object store; load weights again with load_weights")

    def read_weights(self, uuid: str, record: dict) -> dict | None:
        if not record.get("weights"):
            return None
        try:
            return load_state(self.objects.cached(record["weights"]))
        except StoreUnavailableError:
            raise
        except Exception:  # noqa: BLE001  (a cached copy a crash cut short: fetch it again)
            self.objects.forget_cached(record["weights"])
            return load_state(self.objects.cached(record["weights"]))

    @_redis_errors
    def delete(self, uuid: str) -> None:
        """Remove a head in one Redis write, which also queues its objects for removal;
        they go at once if the object store answers, else when the sweeper next runs."""
        raw = self.redis.get(self.key("h", check_uuid(uuid)))
        if raw is None:
            raise HeadNotFoundError(f"no head with uuid '{uuid}' to delete")
        with self.redis.pipeline() as pipe:  # one transaction (MULTI/EXEC)
            pipe.delete(self.key("h", uuid))
            pipe.zrem(self.key("heads"), uuid)
            pipe.delete(self.key("latest", uuid))  # its last job's record expires by itself
            pipe.publish(self.key("changes"), uuid)
            gone = self._drop_incarnation(pipe, uuid, json.loads(raw)["inc"])
            pipe.execute()
        self._sigs.pop(uuid, None)
        self.forget_objects(gone, f"head '{uuid}' was deleted; its objects", queued=True)

    def _drop_incarnation(self, pipe: Any, uuid: str, inc: str) -> list[str]:
        """Add to `pipe` (the transaction that deletes or replaces the record) the end of
        incarnation `inc`: its example log's key goes, and every object under its prefix
        is queued for removal. Returns the NS:gc entry."""
        entry = f"{GC_PREFIX}heads/{uuid}/{inc}/"
        pipe.delete(self.key("ex", uuid, inc))
        pipe.hset(self.key("gc"), entry, time.time())
        return [entry]

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

    @_redis_errors
    def list(self, offset: int = 0, limit: int | None = None) -> list[str]:
        """Uuids in sorted order, from `offset` (at most `limit`)."""
        stop = -1 if limit is None else offset + limit - 1
        if limit == 0:
            return []
        return [u.decode() for u in self.redis.zrange(self.key("heads"), offset, stop)]

    @_redis_errors
    def count(self) -> int:
        return self.redis.zcard(self.key("heads"))

    def examples(self, uuid: str) -> StoredExamples:
        record = self._read_raw(uuid)
        return ObjectExampleLog(self, uuid, record["inc"])

    # --- locks and training leases --------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, uuid: str) -> Iterator[None]:
        """Serialize writers of one head across machines: a lease this process renews
        while it holds it, so a long upload keeps it and a dead holder's frees itself
        within LOCK_LEASE_S."""
        with self.leases.held(self.key("lock", check_uuid(uuid)), LOCK_LEASE_S, LOCK_WAIT_S,
                              f"head '{uuid}' is busy (another call has held its lock for "
                              f"{LOCK_WAIT_S} s); try again"):
            yield

    @contextlib.contextmanager
    def training(self, uuid: str, wait_s: float = 0.2) -> Iterator[None]:
        """Held while a head trains, on any machine: a lease renewed by this process. If
        it is lost (this process stalled, or Redis lost it) the run cannot publish: the
        thread's writes carry its token (leases.SWITCH)."""
        with self.leases.held_in_thread(uuid, self.key("train", check_uuid(uuid)), self.lease_s,
                                        wait_s, f"head '{uuid}' is already training; wait for "
                                        "that run to finish (train_status) and try again"):
            yield

    @_redis_errors
    def is_training(self, uuid: str) -> bool:
        return bool(self.redis.exists(self.key("train", check_uuid(uuid))))

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs), Redis being unreachable raised as StoreUnavailableError."""
        try:
            return fn(*args, **kwargs)
        except _unavailable_errors() as exc:
            raise self.unavailable(exc) from None

    # --- followers --------------------------------------------------------------------------
    @_redis_errors
    def add_follower(self, parent: str, child: str) -> None:
        self.redis.sadd(self.key("fol", check_uuid(parent)), check_uuid(child))

    @_redis_errors
    def remove_follower(self, parent: str, child: str) -> None:
        self.redis.srem(self.key("fol", check_uuid(parent)), check_uuid(child))

    @_redis_errors
    def follower_count(self, parent: str) -> int:
        return self.redis.scard(self.key("fol", check_uuid(parent)))

    @_redis_errors
    def followers(self, parent: str) -> list[str]:
        return sorted(m.decode() for m in self.redis.smembers(self.key("fol", check_uuid(parent))))

    # --- head list and user code -------------------------------------------------------------
    @_redis_errors
    def write_head_list(self, record: dict) -> None:
        self.redis.set(self.key("list"), json.dumps(record))
        self.redis.publish(self.key("changes"), "")

    @_redis_errors
    def read_head_list(self) -> dict | None:
        raw = self.redis.get(self.key("list"))
        return json.loads(raw) if raw is not None else None

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

    # --- jobs -------------------------------------------------------------------------------
    @_redis_errors
    def write_job(self, job: dict, expect_attempt: int | None = None) -> bool:
        """Write a job's record (see LocalStore.write_job). Finished job records expire
        after PH_JOB_RECORDS_MAX_AGE_S (default 7 days)."""
        job = {**job, "w": uuidlib.uuid4().hex[:12]}
        finished = job.get("state") not in ACTIVE
        return bool(self._write_job(
            keys=[self.key("job", check_uuid(job["id"]))],
            args=[json.dumps(job), str(self.job_ttl_s) if finished else "",
                  "" if expect_attempt is None else str(expect_attempt), job["w"]]))

    @_redis_errors
    def read_job(self, job_id: str) -> dict:
        raw = self.redis.get(self.key("job", check_uuid(job_id)))
        if raw is None:
            raise NotFoundError(f"no training job '{job_id}'; train_head(..., background=True) "
                                f"returns the job id (finished jobs are kept for {self.job_ttl_s / 3600:g} "
                                "hours, PH_JOB_RECORDS_MAX_AGE_S)")
        job = json.loads(raw)
        job.pop("w", None)  # the write id is the store's own
        return job

    @_redis_errors
    def latest_job(self, uuid: str) -> str | None:
        raw = self.redis.get(self.key("latest", check_uuid(uuid)))
        return raw.decode() if raw else None

    @_redis_errors
    def set_latest_job(self, uuid: str, job_id: str) -> None:
        self.redis.set(self.key("latest", check_uuid(uuid)), check_uuid(job_id))

    @_redis_errors
    def request_stop(self, job_id: str) -> None:
        self.redis.set(self.key("stop", check_uuid(job_id)), 1, ex=self.job_ttl_s)

    @_redis_errors
    def stop_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.key("stop", check_uuid(job_id))))

    @_redis_errors
    def clear_stop(self, job_id: str) -> None:
        self.redis.delete(self.key("stop", check_uuid(job_id)))

    @_redis_errors
    def beat(self, job_id: str) -> None:
        """The job's worker is alive (for the next lease period)."""
        self.redis.set(self.key("beat", check_uuid(job_id)), 1, px=int(self.lease_s * 1000))

    @_redis_errors
    def job_alive(self, job: dict) -> bool:
        """A queued job waits for a worker however long that takes; once a worker took it
        (or it is running) it is alive while that worker keeps beating."""
        beating = bool(self.redis.exists(self.key("beat", check_uuid(job["id"]))))
        if job["state"] == "queued":  # dead only if a worker took it and stopped beating
            taken = self.redis.exists(self.key("claim", job["id"], str(job.get("attempt", 1))))
            return beating or not taken
        return beating

    def dispatch_job(self, job: dict) -> dict:
        """Send the job to the training workers (`ph worker`) on its queue; {"queue": it}."""
        from kombu.exceptions import OperationalError  # the distributed extra: only here
        try:
            enqueue(self.url, job)
        except OperationalError as exc:
            raise StoreUnavailableError(f"could not queue the job: {self.unavailable(exc)}") \
                from None
        return {"queue": job["queue"]}

    def withdraw_queued(self, job_id: str, attempt: int) -> bool:
        """Claim the attempt here, so that no worker that gets the message runs it."""
        return self.claim_job(job_id, attempt)

    @_redis_errors
    def claim_job(self, job_id: str, attempt: int) -> bool:
        """True for the one worker that takes this attempt of the job (a message sent
        twice, by two servers that both saw the last worker die, runs once)."""
        key, token = self.key("claim", check_uuid(job_id), str(attempt)), uuidlib.uuid4().hex
        return bool(self.redis.set(key, token, nx=True, ex=self.job_ttl_s)) \
            or self.redis.get(key) == token.encode()  # our SET, sent again by a retry

    # --- change notifications ------------------------------------------------------------------
    def _listen(self) -> None:
        import redis
        while not self._closed.is_set():
            pubsub = self._listener_redis.pubsub()
            try:
                pubsub.subscribe(self.key("changes"))
                while (pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
                    if self._closed.is_set():  # from the confirmation on, no change is missed
                        return
                self._dropped_all()
                self._subscribed.set()
                self._follow(pubsub)
            except (redis.RedisError, OSError) as exc:
                log.info("change notifications interrupted (%s); reading Redis on every call "
                         "until they are back", exc)
            finally:
                self._subscribed.clear()
                self._dropped_all()
                with contextlib.suppress(Exception):
                    pubsub.close()
            self._closed.wait(0.5)

    def _follow(self, pubsub) -> None:
        """Drop the signature of every head whose uuid is published. Every ECHO_EVERY_S this
        listener publishes an echo of its own on the changes channel: an echo that does
        not come back in time means notifications are not arriving (a connection that
        died without closing, a subscription left on an old primary after a failover)."""
        import redis
        echo = f"!echo:{uuidlib.uuid4().hex}"  # '!' is never part of a uuid
        sent = time.monotonic()
        answered = sent - 1  # waiting for the first echo
        self._listener_redis.publish(self.key("changes"), echo)
        while not self._closed.is_set():
            message = pubsub.get_message(timeout=0.5)
            now = time.monotonic()
            if message is not None and message["type"] == "message":
                data = message["data"].decode()
                if data == echo:
                    answered = self._echoed = now
                elif not data.startswith("!"):  # other servers' echoes change nothing
                    with self._sig_lock:
                        self._changes += 1
                        self._sigs.pop(data, None)
            elif message is not None and message["type"] == "subscribe":
                # redis-py lost the connection, reconnected and subscribed again on its
                # own (its retry): whatever was published meanwhile was missed
                self._dropped_all()
            if answered < sent and now - sent > ECHO_TIMEOUT_S:
                raise redis.ConnectionError(f"no echo from Redis for {ECHO_TIMEOUT_S} s")
            if now - sent >= ECHO_EVERY_S and answered >= sent:
                sent = now
                self._listener_redis.publish(self.key("changes"), echo)

    def _dropped_all(self) -> None:
        with self._sig_lock:
            self._changes += 1
            self._sigs.clear()

    def start_background_tasks(self) -> None:
        """The sweeper (start_sweeper)."""
        self.start_sweeper()

    def start_sweeper(self, interval_s: int | None = None) -> None:
        """Remove queued and orphaned objects in a thread of this process until close()
        (`ph serve` and `ph worker` start it; a library user need not)."""
        if self._sweeper is None:
            self._sweeper = Sweeper(self, interval_s)
            self._sweeper.start()

    def close(self) -> None:
        """End the sweeper and the change listener and let go of the connections."""
        if self._sweeper is not None:
            self._sweeper.stop()
        self._closed.set()
        self._listener.join(timeout=3)
        for client in (self.redis, self._listener_redis, self.objects):
            with contextlib.suppress(Exception):
                client.close()


def _tensor_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
