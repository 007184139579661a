"""HeadLoader: the heads of one process in memory, built from the store on first use.

It owns what serving a head needs and nothing else: the memory-bounded cache of built
heads, the banks that hold heads of one architecture together (one stacked pass for
many), a striped lock so a head is built once however many threads ask, and the map of
untrained children that answer with their parent's head. Every call checks the head's
signature in the store, so a head changed by another process is rebuilt on its next call.
"""
from __future__ import annotations

import copy
import threading
from typing import Any

from ..errors import NotFoundError, PHError
from ..modeling.engine import build_engine, build_processors
from ..modeling.stacked import HeadBank
from ..stores import check_uuid
from .cache import HeadCache, LoadedHead
from .children import FollowMap, follows_parent
from .sources import ConfigSources

MAX_HOPS = 4  # an untrained child resolves in one hop; more means a record edited by hand
LOCK_STRIPES = 64


class HeadLoader:
    """uuid -> LoadedHead for one process, over `store`, within `memory_budget` bytes."""

    def __init__(self, store, sources: ConfigSources, memory_budget: int | None = None):
        self.store = store
        self.sources = sources
        self.cache = HeadCache(memory_budget, on_evict=self._release_slot)
        self.banks: dict[tuple, HeadBank] = {}
        self.follows = FollowMap()  # untrained children seen here -> their parents
        self._banks_lock = threading.Lock()
        self._build_locks = [threading.RLock() for _ in range(LOCK_STRIPES)]  # striped by uuid

    def loaded(self, uuid: str, hops: int = 0) -> LoadedHead:
        """The head in memory, (re)built if its record in the store changed. For an
        untrained child: its parent's loaded head (the child holds no weights of its own)."""
        signature = self.store.signature(check_uuid(uuid))
        parent = self.follows.get(uuid, signature)
        if parent is not None:
            return self._followed(uuid, parent, hops)
        head = self.cache.get(uuid, signature)
        if head is not None:
            return head
        with self._build_lock(uuid):
            head = self.cache.peek(uuid)
            if head is not None and head.signature == signature:
                return head  # another thread built it while we waited
            signature = self.store.signature(uuid)
            record, state = self.store.read_current(uuid)
            parent = follows_parent(record)
            if parent is None:
                head = self.build_head(record, state, signature)
                self.cache.put(head)
                return head
            self.follows.put(uuid, signature, parent)
        return self._followed(uuid, parent, hops)  # outside this lock: stripes never nest

    def _followed(self, uuid: str, parent: str, hops: int) -> LoadedHead:
        if hops >= MAX_HOPS:
            raise PHError(f"head '{uuid}': its chain of parents is longer than {MAX_HOPS}; its "
                          "record was changed by hand. Create it again with replace=True")
        try:
            return self.loaded(parent, hops + 1)
        except NotFoundError:
            raise NotFoundError(f"head '{uuid}' follows its parent '{parent}', which no longer "
                                f"exists; create '{uuid}' again (create_head(uuid='{uuid}', "
                                "replace=True), with another parent or none)") from None

    def build_head(self, record: dict, state: dict | None, signature: tuple) -> LoadedHead:
        """A head built from its record and weights, in a bank slot where its model has one."""
        uuid = record["uuid"]
        self.sources.check_stored_model_folder(record)
        engine = build_engine(record["config"], self.sources.code_of(record), state,
                              record.get("labels"), record["seed"])
        head = LoadedHead(uuid, signature, record["revision"], record["config"], engine,
                          engine.param_bytes())
        bank = self._bank_for(engine, record["config"])
        if bank is not None:
            head.extra.update(bank=bank, slot=bank.attach(engine.model))
            head.nbytes = bank.slot_bytes()
            engine.guard = bank.reading
        return head

    def _bank_for(self, engine, config: dict) -> HeadBank | None:
        args = config["Model"].get("args") or {}
        key = HeadBank.key(engine.model, args, engine.device, engine.dtype)
        if key is None:
            return None
        with self._banks_lock:
            if key not in self.banks:
                self.banks[key] = HeadBank(engine.model, args, engine.device, engine.dtype,
                                           self.cache.budget_bytes)
            return self.banks[key]

    def _release_slot(self, head: LoadedHead) -> None:
        """A head left the cache: give its bank slot back."""
        if "slot" in head.extra:
            head.extra["bank"].release(head.extra["slot"], head.engine.model)

    def preprocessor(self, record: dict) -> Any:
        """The head's pre-processor: the loaded head's if it is current, else one built
        from the record (checking examples must not cost a model)."""
        loaded = self.cache.peek(record["uuid"])
        if loaded is not None and loaded.config == record["config"]:
            return loaded.engine.preprocessor
        self.sources.check_stored_model_folder(record)
        return build_processors(record["config"], self.sources.code_of(record))[0]

    def switch(self, uuid: str, record: dict, model) -> None:
        """Point the loaded head (if any) at the weights just written (call under the lock).

        A new LoadedHead replaces the cached one, so the old one's bank slot is given back
        exactly once (by the cache), never while this head is being evicted elsewhere."""
        with self._build_lock(uuid):
            head = self.cache.peek(uuid)
            if head is None:
                return
            if head.config != record["config"]:  # replaced elsewhere: build afresh next call
                self.cache.drop(uuid)
                return
            engine = copy.copy(head.engine)  # same processors and device, new weights
            engine.model = engine.place(model)
            engine.labels = record.get("labels")
            new = LoadedHead(uuid, self.store.signature(uuid), record["revision"], record["config"],
                             engine, head.nbytes)
            bank = head.extra.get("bank")
            if bank is not None:
                new.extra.update(bank=bank, slot=bank.attach(engine.model))
            self.cache.put(new)

    def stop_following(self, uuid: str, record: dict) -> None:
        """A child got weights of its own (or was removed): its parent no longer has it
        as a follower."""
        parent = follows_parent(record)
        if parent:
            self.store.remove_follower(parent, uuid)
        self.follows.pop(uuid)

    def forget(self, uuid: str) -> None:
        """Drop what this process holds of a head that was replaced or deleted."""
        self.follows.pop(uuid)
        self.cache.drop(uuid)

    def _build_lock(self, uuid: str) -> threading.RLock:
        return self._build_locks[hash(uuid) % len(self._build_locks)]
