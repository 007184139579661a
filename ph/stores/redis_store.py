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
    NS:job:<id>, NS:latest:<uuid>, NS:stop:<id>, NS:beat:<id>, NS:claim:<id>:<attempt>
                        background jobs (ph.stores.redis_jobs)
    channel NS:changes  the uuid of every head that changed ("" for the head list)
Objects: heads/<uuid>/<inc>/weights-<rev>-<token>.pt, heads/<uuid>/<inc>/examples/...,
heads/<uuid>/<inc>/embeddings/<identity>/<digest>.emb (the examples' embeddings, named by
listing: base.Embeddings), code/<digest>.py, data/<digest>.jsonl (training data sets, by content: a record's
`trained_on`). `inc` (incarnation) is new each time a uuid is created, so a replaced
or deleted head's objects can never be mistaken for the new one's. Objects nothing
names any more are removed at once if the object store answers, else by the sweeper
(ph.stores.sweeper) once it does.

Locks, training leases and fencing (every Lua script, with its KEYS and ARGV): ph.stores.leases.

Seeing changes without a cost per predict: every write publishes the uuid on
NS:changes, and each process's change listener drops the signature it remembers of that
head (ph.stores.redis_changes).

The store by concern: head records, followers and the head list (redis_records), user
code, data sets and the removal of objects (redis_blobs), jobs (redis_jobs), the change
listener (redis_changes), keys and Redis errors (redis_access); here the connections,
locks, examples and the store's life.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

from .. import settings
from .base import JobRetention, StoreBase, StoredExamples, check_identity, check_uuid, content_id
from .example_objects import ObjectExampleLog
from .leases import EXAMPLES_SWITCH, JOB_WRITE, SWITCH, Leases
from .objects import ObjectStore
from .redis_access import redis_errors
from .redis_changes import ECHO_STALE_S, ChangeListener
from .redis_jobs import RedisJobs
from .redis_records import RedisRecords
from .sweeper import Sweeper, embeddings_prefix

__all__ = ["ECHO_STALE_S", "LOCK_LEASE_S", "LOCK_WAIT_S", "RedisStore"]
LOCK_LEASE_S = 20  # a dead holder's head lock frees itself after this
LOCK_WAIT_S = 30


class RedisStore(RedisRecords, RedisJobs, StoreBase):
    """Head records in Redis, their objects in S3. The interface and its contracts:
    base.Store; its parts: see the module docstring. ObjectExampleLog and the sweeper use
    a surface of their own, shared within ph.stores: call, redis, key, objects, leases,
    switch_examples, forget_objects, remove_queued."""

    distributed = True  # for tests that look at Redis and S3; code above the store never asks

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
        self.redis, listener_redis = (
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
        self._sweeper: Any = None  # see start_sweeper
        self.changes = ChangeListener(listener_redis, self.key("changes"))

    # The change listener's state under the store's names (the tests look at them).
    @property
    def _sigs(self) -> dict[str, tuple]:
        return self.changes.sigs

    @_sigs.setter
    def _sigs(self, sigs: dict[str, tuple]) -> None:
        self.changes.sigs = sigs

    @property
    def _subscribed(self) -> threading.Event:
        return self.changes.subscribed

    def _trusted(self) -> bool:
        return self.changes.trusted()

    def examples(self, uuid: str) -> StoredExamples:
        record = self._read_raw(uuid)
        return ObjectExampleLog(self, uuid, record["inc"])

    def embedding_packs(self, uuid: str, identity: str) -> dict[str, bytes]:
        prefix = embeddings_prefix(uuid, self._read_raw(uuid)["inc"], check_identity(identity))
        packs = {}
        for name in self.objects.list(prefix):
            with contextlib.suppress(FileNotFoundError):  # merged away meanwhile
                packs[name[len(prefix):]] = self.objects.get(name)
        return packs

    def save_embedding_pack(self, uuid: str, identity: str, data: bytes,
                            replaces: Iterable[str] = ()) -> None:
        prefix = embeddings_prefix(uuid, self._read_raw(uuid)["inc"], check_identity(identity))
        self.objects.put(f"{prefix}{content_id(data)}.emb", data)
        self.forget_objects([prefix + name for name in replaces],
                            f"head '{uuid}': embedding packs merged into one")

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

    @redis_errors
    def is_training(self, uuid: str) -> bool:
        return bool(self.redis.exists(self.key("train", check_uuid(uuid))))

    def check_ready(self) -> None:
        """Redis answers a PING and the bucket is reachable."""
        self.call(self.redis.ping)
        self.objects.check()

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
        self.changes.close()
        for client in (self.redis, self.objects):
            with contextlib.suppress(Exception):
                client.close()
