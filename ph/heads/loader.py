"""HeadLoader: the heads of one process in memory, built from the store on first use.

It owns what serving a head needs and nothing else: the memory-bounded cache of built
heads, the banks that hold heads of one architecture together (one stacked pass for
many), a striped lock so a head is built once however many threads ask, and the map of
untrained children that answer with their parent's head. Every call checks the head's
signature in the store, so a head changed by another process is rebuilt on its next call.
"""
from __future__ import annotations

import copy
import json
import threading
from typing import Any

from ..errors import NotFoundError, PHError
from ..modeling.addin_bank import AddinBank, AddinEngine
from ..modeling.addins import FrozenBase
from ..modeling.encoders import encoder_bytes
from ..modeling.engine import DTYPES, build_engine, build_processors, make_model, resolve_device
from ..modeling.stacked import HeadBank
from ..stores import check_uuid
from .addin_heads import addin_spec
from .cache import HeadCache, LoadedHead
from .children import FollowMap, follows_parent
from .sources import ConfigSources

MAX_HOPS = 4  # an untrained child resolves in one hop; more means a record edited by hand
LOCK_STRIPES = 64
ADDIN_OVERHEAD = 4096  # bytes of Python objects per loaded add-in head, besides its tensors


class HeadLoader:
    """uuid -> LoadedHead for one process, over `store`, within `memory_budget` bytes."""

    def __init__(self, store, sources: ConfigSources, memory_budget: int | None = None):
        self.store = store
        self.sources = sources
        self.cache = HeadCache(memory_budget, on_evict=self._release_slot,
                               shared_bytes=encoder_bytes)
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
        if record.get("addin"):
            return self._build_addin(record, state, signature)
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

    def _build_addin(self, record: dict, state: dict, signature: tuple) -> LoadedHead:
        """An add-in head: a slot in the bank of its parent revision's add-ins (the parent
        built once per process per revision, then about a millisecond per user)."""
        config, code = record["config"], self.sources.code_of(record)
        spec = addin_spec(config, record["addin"], code)
        key = ("addin", record["base"], spec.layout(),
               json.dumps([config["Model"], config["Inference"]], sort_keys=True, default=str))
        with self._banks_lock:
            bank = self.banks.get(key)
            if bank is None:
                base = self._frozen_base(record["base"], config, code)
                bank = self.banks[key] = AddinBank(base, spec, base.device, base.dtype)
                bank.processors = build_processors(config, code)
        slot = bank.attach(state)
        engine = AddinEngine(bank, slot, *bank.processors, record.get("labels"))
        head = LoadedHead(record["uuid"], signature, record["revision"], config, engine,
                          bank.slot_bytes() + ADDIN_OVERHEAD)
        head.extra.update(bank=bank, slot=slot)
        return head

    def _frozen_base(self, digest: str, config: dict, code) -> FrozenBase:
        """The parent revision `digest`, frozen on the config's device (call under the
        banks lock); banks of other add-in layouts on it share it."""
        for bank in self.banks.values():
            if isinstance(bank, AddinBank) and bank.base.digest == digest \
                    and bank.base.config == [config["Model"], config["Inference"]]:
                return bank.base
        inference = config["Inference"]
        model = make_model(config, code, self.store.load_snapshot(digest))
        model = model.to(resolve_device(inference["device"]), DTYPES[inference["dtype"]])
        base = FrozenBase(model, config["Model"].get("args") or {})
        base.digest, base.config = digest, [config["Model"], config["Inference"]]
        base.device, base.dtype = next(model.parameters()).device, DTYPES[inference["dtype"]]
        return base

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
            if head.config != record["config"] or model is None:  # None: an add-in, rebuilt  # replaced elsewhere: build afresh next call
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

    def stop_following(self, uuid: str, record: dict, deleted: bool = False) -> None:
        """A child got weights of its own (or was `deleted`): its parent no longer has it
        as a follower. An add-in stays one while it exists (it is pinned to the parent)."""
        if record.get("addin"):
            parent = record.get("parent") if deleted else None
        else:
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
