"""A head's lifecycle: the head list (the defaults new heads start from), creating a
head or a child of one, starting it over (replace), deleting it, and what is known
about it without loading it.

A head is written whole, under its lock, in one switch in the store, so a crash never
leaves half a head. Creating a head that exists is idempotent when nothing differs and
a conflict (409) naming what differs otherwise; `replace` starts it over. Both refuse a
head that trains (see TrainingGuard) or that untrained children follow.
"""
from __future__ import annotations

import random
import time
from typing import Any

from ..config.components import UserCode
from ..config.schema import config_diff, deep_merge
from ..errors import BadInputError, ConfigError, ConflictError, NotFoundError, PHError
from ..modeling.engine import make_model, read_weights
from ..stores import check_uuid, new_uuid
from .addin_heads import (addin_info, addin_spec, check_addin, refuse_child_of_addin,
                          with_addin_training)
from .children import check_parent, follows_parent, read_parent, refuse_if_followed
from .examples import check_page
from .loader import HeadLoader
from .policy import merge_limits
from .runs import TrainingGuard
from .sources import ConfigSources

LIST_PAGE, LIST_PAGE_MAX = 1000, 10_000  # list_heads: default and largest page
CHILD_WHY = ("a child answers with its parent's model, so it has the parent's Model and "
             "Inference; only Trainer may differ. Create a head without parent for another model")


class Lifecycle:
    """Creates, replaces and deletes heads in `store`, under the policy of `sources`."""

    def __init__(self, store, sources: ConfigSources, loader: HeadLoader, guard: TrainingGuard):
        self.store = store
        self.sources = sources
        self.policy = sources.policy  # the caller's: what its configs may name and run
        self.loader = loader
        self.guard = guard

    def create_head_list(self, config: Any = None, python: str | None = None) -> None:
        """Check and store the head list: the config (and user Python) new heads start from."""
        overrides = self.sources.read_config(config, "config")
        digest = None
        if python is not None:
            self.policy.check_code("python")
            if not isinstance(python, str) or not python.strip():
                raise ConfigError("python: must be the source text of your Python file")
            digest = self.store.save_code(python)
        self.sources.checked(overrides, digest, None, "the head list")
        self.store.write_head_list({"config": overrides, "python": digest, "updated": time.time(),
                                    "path_limits": self.policy.limits()})

    def _head_list(self) -> tuple[dict, str | None, list]:
        """(config, python digest, path limits: see ph.paths) of the head list."""
        record = self.store.read_head_list() or {"config": {}}
        return record["config"], record.get("python"), record.get("path_limits", [])

    def create_head(self, uuid: str | None = None, config: Any = None, replace: bool = False,
                    parent: str | None = None, addin: Any = None) -> str:
        """A head from the head list's config with `config` merged in, or a child of
        `parent` (an add-in on it with `addin`); returns its uuid."""
        uuid = new_uuid() if uuid is None else check_uuid(uuid)
        if parent is not None:
            return self._create_child(uuid, parent, config, replace, addin)
        if addin is not None:
            raise BadInputError("addin: an add-in sits on a shared head; name it with parent=...")
        base, python, list_limits = self._head_list()
        limits = merge_limits(list_limits, self.policy.limits())  # who wrote this config
        merged = deep_merge(base, self.sources.read_config(config, "config"))
        full, code, code_ids = self.sources.checked(merged, python, limits, f"head '{uuid}'")
        state, labels = self._starting_weights(full, code, limits)
        record = _new_record(uuid, full, code_ids, random.randrange(2**31), limits, labels)
        with self.store.lock(uuid):
            return self._put(record, state, replace)

    def _starting_weights(self, full: dict, code: UserCode,
                          limits: list) -> tuple[dict | None, list | None]:
        """(state dict, labels) of the weights the config starts from, checked to fit."""
        if not full["Inference"]["weights"]:
            return None, None
        path = self.sources.resolve_stored(full["Inference"]["weights"], "Inference.weights",
                                           limits)
        state, extras = read_weights(path)
        make_model(full, code, state)  # raises a WeightsError if they do not fit
        return state, extras.get("labels")

    def _create_child(self, uuid: str, parent: Any, config: Any, replace: bool,
                      addin: Any = None) -> str:
        """A head that follows `parent` until it trains (see `ph.children`), and with
        `addin` then trains only an add-in on it (see `ph.heads.addin_heads`)."""
        parent = check_parent(uuid, parent)
        overrides = self.sources.read_config(config, "config")
        with self.store.locks(uuid, parent):  # the parent cannot be deleted or replaced meanwhile
            base = read_parent(self.store, parent)
            self.sources.check_stored_model_folder(base)  # before validation loads it
            if addin is None:
                refuse_child_of_addin(base)
            else:
                addin = check_addin(addin, base, self.sources.code_of(base))
                overrides = with_addin_training(overrides)
            full = base["config"]
            if overrides:
                full = self.sources.with_trainer(base, overrides,
                                                 f"create_head with parent='{parent}'", CHILD_WHY,
                                                 f"head '{uuid}' (child of '{parent}')")
            limits = merge_limits(base.get("path_limits"), self.policy.limits())
            record = _new_record(uuid, full, base.get("code", {}), base["seed"], limits,
                                 parent=parent)
            if addin is not None:
                record["addin"] = addin
            return self._put(record, None, replace)

    def _put(self, record: dict, state: dict | None, replace: bool) -> str:
        """Write a new head, keep an identical one, or with `replace` start it over; a head
        that differs is a conflict naming what differs (call under its lock)."""
        uuid, parent = record["uuid"], record.get("parent")
        if not self.store.exists(uuid):
            if parent:  # the link before the record: a crash leaves a stale link, which
                self.store.add_follower(parent, uuid)  # delete_head clears, never a lost one
            self.store.create(uuid, record, state)
            return uuid
        existing = self.store.read(uuid)
        changes = _differences(existing, record)
        if replace:
            self._replace(uuid, existing, record, state)
        elif changes:
            was = existing.get("parent")
            raise ConflictError(
                f"head '{uuid}' already exists{' with a different config' if was == parent else ''}"
                f" ({'; '.join(changes[:5])}). Use another uuid, call delete_head(uuid='{uuid}') "
                "first, or pass replace=True to create_head to start it over"
                f"{' as a child' if parent else ''} (its weights are lost)")
        return uuid

    def _replace(self, uuid: str, existing: dict, record: dict, state: dict | None) -> None:
        """Start the head over as `record` in one switch in the store, so a crash never
        loses it (call under its lock); refused while it trains or untrained children follow it."""
        self.guard.check_idle(uuid, "create_head(replace=True)")
        refuse_if_followed(self.store, uuid, "replaced")
        new_parent, old_parent = follows_parent(record), follows_parent(existing)
        if new_parent:
            self.store.add_follower(new_parent, uuid)  # before the record, as for a new child
        self.store.create(uuid, record, state, replace=True)
        if old_parent and old_parent != new_parent:
            self.store.remove_follower(old_parent, uuid)
        self.loader.forget(uuid)

    def delete_head(self, uuid: str) -> bool:
        """Delete a head and what this process holds of it; refused while it trains or
        untrained children follow it."""
        with self.store.lock(check_uuid(uuid)):
            self.guard.check_idle(uuid, "delete_head")
            record = self.store.read(uuid)
            refuse_if_followed(self.store, uuid, "deleted")
            self.store.delete(uuid)
            self.loader.stop_following(uuid, record, deleted=True)
            self.loader.forget(uuid)
        return True

    def list_heads(self, offset: int = 0, limit: int = LIST_PAGE, prefix: str = "") -> list[str]:
        check_page(offset, limit, LIST_PAGE_MAX, "uuids")
        return self.store.list(offset, limit, prefix)

    def get_config(self, uuid: str) -> dict:
        return self.store.read(check_uuid(uuid))["config"]

    def check_head(self, uuid: str) -> dict:
        """What is known about a head without loading it (see HeadRegistry.check_head)."""
        try:
            record = self.store.read(check_uuid(uuid))
        except NotFoundError:
            return {"uuid": uuid, "exists": False}
        parent = follows_parent(record)
        source = record  # whose weights answer
        if parent:
            try:
                source = self.store.read(parent)
            except NotFoundError:
                source = {"revision": None}
        loaded, job = self.loader.cache.peek(parent or uuid), self.guard.training_job(uuid)
        info = {"uuid": uuid, "exists": True, "model": record["config"]["Model"]["type"],
                "examples": self.store.examples(uuid).summary().count,
                "examples_seen": record.get("examples_seen", 0),
                "revision": record["revision"], "trained": bool(record.get("weights")),
                "labels": source.get("labels"), "runs": len(record.get("runs", [])),
                "last_run": (record.get("runs") or [None])[-1],
                "loaded": loaded is not None and loaded.revision == source["revision"],
                "device": str(loaded.engine.device) if loaded else None,
                "created": record.get("created"),
                "training": job is not None or self.store.is_training(uuid), "training_job": job,
                "parent": record.get("parent"), "follows_parent": parent,
                "followers": self.store.follower_count(uuid)}
        if parent:
            info["parent_revision"] = source["revision"]
        if record.get("addin"):
            info["addin"] = self._addin_info(record)
        return info

    def _addin_info(self, record: dict) -> dict:
        try:
            parent = self.store.read(record["parent"])
        except NotFoundError:
            parent = None
        try:
            spec = addin_spec(record["config"], record["addin"], self.sources.code_of(record))
        except PHError:
            spec = None
        return addin_info(record, parent, spec)


def _new_record(uuid: str, config: dict, code_ids: dict, seed: int, limits: list,
                labels: list | None = None, parent: str | None = None) -> dict:
    """The record of a head not trained yet (a child's names the parent it follows)."""
    record = {"uuid": uuid, "config": config, "code": code_ids, "labels": labels, "revision": 0,
              "weights": None, "seed": seed, "created": time.time(), "runs": [],
              "path_limits": limits}
    if parent is not None:
        record["parent"] = parent
    return record


def _differences(existing: dict, record: dict) -> list[str]:
    """What differs between a stored head and one created again with the same uuid: its
    parent, its config, and for a head without parent its user code (a child's code is
    its parent's)."""
    was, parent = existing.get("parent"), record.get("parent")
    changes = [] if was == parent else [f"it is a child of '{was}'" if was else "it has no parent"]
    if existing.get("addin") != record.get("addin"):
        changes.append(f"its add-in ({existing.get('addin')} -> {record.get('addin')})")
    changes += config_diff(existing["config"], record["config"])
    if not parent and not changes and existing.get("code", {}) != record["code"]:
        changes.append("its user Python code")
    return changes
