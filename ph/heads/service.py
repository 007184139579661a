"""HeadRegistry: uuid -> head, for one process, over a store shared with others
(`ph.stores`: the local heads folder, or Redis + an object store).

Every call checks the head's signature in the store (a stat for the folder, a local
lookup kept current by Redis notifications for RedisStore), so a head created, trained,
reloaded or deleted by another process is seen on the next call. Loaded heads live in
a memory-bounded cache.

One rule protects training, here and nowhere else: a head is training while a run holds
its training lock or while its latest background job is queued or running (from the
moment train_head returns the job id). Deleting, replacing or reloading such a head, or
training it again, is refused (ConflictError, 409) naming the job; the check and the
change happen under the head's lock, so no job can be accepted in between.
"""
from __future__ import annotations

import copy
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..modeling.stacked import HeadBank, answer_many
from .cache import HeadCache, LoadedHead
from .children import (FollowMap, check_parent, follows_parent, merge_trainer_only, read_parent,
                       refuse_if_followed)
from ..config.components import UserCode
from ..config.schema import config_diff, deep_merge, dig, load_config
from ..training.data import DataContext, read_records
from ..modeling.encoders import model_path
from ..modeling.engine import build_engine, build_processors, fit_state_dict, make_model, read_weights
from ..errors import (BadInputError, ConfigError, ConflictError, NotFoundError, PHError,
                     as_ph_error)
from ..stores.example_files import ExampleLimits
from .jobs import is_active
from .examples import HeadFacts, check_examples
from ..training.plan import choose_data, forgetting_warning, plan_examples
from .policy import PathPolicy, check_stored_path, merge_limits
from ..stores import check_uuid, new_uuid, open_store
from ..training.trainer import run_training
from .validate import validate_config

CODE_SPECS = (("Model",), ("Inference", "preprocess"), ("Inference", "postprocess"),
              ("Trainer", "dataloader"))
LIST_PAGE, LIST_PAGE_MAX = 1000, 10_000  # list_heads: default and largest page
MAX_HOPS = 4  # an untrained child resolves in one hop; more means a record edited by hand
STORED_PATHS = (("Trainer", "dataloader", "args", "train_json"), ("Trainer", "trainer", "save_dir"),
                ("Trainer", "trainer", "resume"))  # paths a training takes from the head's config
MODEL_FOLDER = "Inference.preprocess.args.encoder_args.model"
DATA_SETS_KEPT = 8  # training data sets a head's record remembers (replayed by incremental runs)
log = logging.getLogger("ph.registry")


class HeadRegistry:
    """Creates, serves and trains the heads in one heads folder."""

    def __init__(self, heads_dir: str | os.PathLike = "heads", policy: PathPolicy | None = None,
                 memory_budget: int | None = None, limits: ExampleLimits | None = None,
                 store: str | None = None):
        self.store = open_store(store, heads_dir)
        self.policy = policy or PathPolicy()
        self.limits = limits or ExampleLimits.from_env()
        self.cache = HeadCache(memory_budget, on_evict=self._unload)
        self.banks: dict[tuple, HeadBank] = {}
        self._banks_lock = threading.Lock()
        self._load_locks = [threading.RLock() for _ in range(64)]  # striped by uuid
        self._follows = FollowMap()  # untrained children seen here -> their parents

    # --- head list -------------------------------------------------------------------------
    def create_head_list(self, config: Any = None, python: str | None = None) -> None:
        """Set the default config (and user Python source) for heads created later."""
        overrides = self._load(config, "config")
        digest = None
        if python is not None:
            self.policy.check_code("python")
            if not isinstance(python, str) or not python.strip():
                raise ConfigError("python: must be the source text of your Python file")
            digest = self.store.save_code(python)
        code, _ = self._collect_code(overrides, digest)
        self._check_model_folder(overrides)
        validate_config(overrides, code, source="the head list")
        self.store.write_head_list({"config": overrides, "python": digest, "updated": time.time(),
                                    "path_limits": self.policy.limits()})

    def _head_list(self) -> tuple[dict, str | None, list]:
        """(config, python digest, path limits: see ph.paths) of the head list."""
        record = self.store.read_head_list() or {"config": {}}
        return record["config"], record.get("python"), record.get("path_limits", [])

    # --- heads -----------------------------------------------------------------------------
    def create_head(self, uuid: str | None = None, config: Any = None, replace: bool = False,
                    parent: str | None = None) -> str:
        """Create a head from the head list's config with `config` merged in; returns its uuid.

        Creating an existing uuid with the same config returns it unchanged (trained
        weights kept); with another config it is a conflict. `replace` starts the head over
        (new weights) whatever its config. With `parent`, the head is a child of that head
        (see `ph.children`): it takes the parent's config (`config` may change Trainer only)
        and answers with the parent's weights until it first trains.
        """
        uuid = new_uuid() if uuid is None else check_uuid(uuid)
        if parent is not None:
            return self._create_child(uuid, parent, config, replace)
        base, python, list_limits = self._head_list()
        limits = merge_limits(list_limits, self.policy.limits())  # who wrote this config
        merged = deep_merge(base, self._load(config, "config"))
        code, code_ids = self._collect_code(merged, python, limits)
        self._check_model_folder(merged, limits)
        full = validate_config(merged, code, source=f"head '{uuid}'")
        state = labels = None
        if full["Inference"]["weights"]:
            path = self._resolve_stored(full["Inference"]["weights"], "Inference.weights", limits)
            state, extras = read_weights(path)
            labels = extras.get("labels")
            make_model(full, code, state)  # raises a WeightsError if they do not fit
        record = {"uuid": uuid, "config": full, "code": code_ids, "labels": labels, "revision": 0,
                  "weights": None, "seed": random.randrange(2**31), "created": time.time(),
                  "runs": [], "path_limits": limits}
        with self.store.lock(uuid):
            if self.store.exists(uuid):
                existing = self.store.read(uuid)
                same = (existing["config"] == full and existing.get("code", {}) == code_ids
                        and not existing.get("parent"))
                if same and not replace:
                    return uuid
                if not replace:
                    changes = config_diff(existing["config"], full) or ["its user Python code"]
                    if existing.get("parent"):
                        changes.insert(0, f"it is a child of '{existing['parent']}'")
                    raise ConflictError(
                        f"head '{uuid}' already exists with a different config ({'; '.join(changes[:5])}). "
                        f"Use another uuid, call delete_head(uuid='{uuid}') first, or pass "
                        "replace=True to create_head to start it over (its weights are lost)")
                self._replace(uuid, existing, record, state)
                return uuid
            self.store.create(uuid, record, state)
        return uuid

    def _create_child(self, uuid: str, parent: Any, config: Any, replace: bool) -> str:
        """A head that follows `parent` until it trains (see `ph.children`)."""
        parent = check_parent(uuid, parent)
        overrides = self._load(config, "config")
        with self.store.locks(uuid, parent):  # the parent cannot be deleted or replaced meanwhile
            base = read_parent(self.store, parent)
            self._check_stored_model_folder(base)  # before validation loads it
            full = base["config"]
            if overrides:
                merged = merge_trainer_only(
                    full, overrides, f"create_head with parent='{parent}'",
                    "a child answers with its parent's model, so it has the parent's Model and "
                    "Inference; only Trainer may differ. Create a head without parent for "
                    "another model")
                dataloader = merged["Trainer"]["dataloader"]
                if dataloader != full["Trainer"]["dataloader"] and _uses_code(dataloader):
                    self.policy.check_code("Trainer.dataloader")
                full = validate_config(merged, self._code(base),
                                       source=f"head '{uuid}' (child of '{parent}')")
            record = {"uuid": uuid, "parent": parent, "config": full, "code": base.get("code", {}),
                      "labels": None, "revision": 0, "weights": None, "seed": base["seed"],
                      "created": time.time(), "runs": [],
                      "path_limits": merge_limits(base.get("path_limits"), self.policy.limits())}
            if self.store.exists(uuid):
                existing = self.store.read(uuid)
                if existing.get("parent") == parent and existing["config"] == full and not replace:
                    return uuid
                if not replace:
                    was = existing.get("parent")
                    changes = [] if was == parent else [
                        f"it is a child of '{was}'" if was else "it has no parent"]
                    changes += config_diff(existing["config"], full)
                    raise ConflictError(
                        f"head '{uuid}' already exists ({'; '.join(changes[:5])}). Use another "
                        f"uuid, call delete_head(uuid='{uuid}') first, or pass replace=True to "
                        "create_head to start it over as a child (its weights are lost)")
                self._replace(uuid, existing, record)
                return uuid
            self.store.add_follower(parent, uuid)  # before the record: a crash leaves a stale
            self.store.create(uuid, record)       # link, which delete_head clears, never a lost one
        return uuid

    def _replace(self, uuid: str, existing: dict, record: dict, state: dict | None = None) -> None:
        """Start the head over as `record` in one switch in the store, so a crash never
        loses it (call under its lock); refused while it trains or untrained children follow it."""
        self.check_idle(uuid, "create_head(replace=True)")
        refuse_if_followed(self.store, uuid, "replaced")
        new_parent, old_parent = follows_parent(record), follows_parent(existing)
        if new_parent:
            self.store.add_follower(new_parent, uuid)  # before the record, as for a new child
        self.store.create(uuid, record, state, replace=True)
        if old_parent and old_parent != new_parent:
            self.store.remove_follower(old_parent, uuid)
        self._follows.pop(uuid)
        self.cache.drop(uuid)

    def predict(self, uuid: str, data: Any) -> Any:
        """The head's answer for one input or a batch."""
        return self.loaded(uuid).engine.predict(data)

    def predict_many(self, requests: list[tuple[str, Any]]) -> list[Any]:
        """Answers for many (uuid, data) requests; heads of one architecture answer together
        in one stacked pass. A request that fails gets its PHError in its place; the others
        still answer."""
        items = []
        for uuid, data in requests:
            try:
                items.append((self.loaded(uuid), data))
            except Exception as exc:  # noqa: BLE001  (one request's failure is its own)
                items.append((as_ph_error(exc, f"head '{uuid}'"), data))
        return answer_many(items)

    def load_weights(self, uuid: str, path: str) -> dict:
        """Switch a head to the weights in a state-dict or checkpoint file."""
        if not isinstance(path, str) or not path:
            raise ConfigError("weights_file: give the path of a weights file (.pt)")
        head = self.loaded(uuid)
        state, extras = read_weights(self.policy.resolve(path, "weights_file"))
        state = fit_state_dict(head.engine.model, state)  # checked before anything changes
        model = head.engine.with_weights(state)
        labels = extras.get("labels") or head.engine.labels
        with self.store.lock(uuid):
            current = self.store.read(uuid)
            # head is the parent's for an untrained child: same Model and Inference
            if any(current["config"][k] != head.config[k] for k in ("Model", "Inference")):
                raise ConflictError(f"head '{uuid}' was replaced while its weights were being "
                                    "checked; try load_weights again")
            self.check_idle(uuid, "load_weights")
            record = self.store.write_weights(uuid, current, state, labels)
            self._stop_following(uuid, current)
            self._switch(uuid, record, model)
        return {"uuid": uuid, "revision": record["revision"], "labels": labels}

    def train(self, uuid: str, config: Any = None, auto_update: bool = True,
              stop: threading.Event | None = None,
              on_epoch: Callable[[dict], None] | None = None, incremental: bool = False) -> dict:
        """Train a head on its Trainer config (with `config` merged in); returns a summary.

        With `auto_update` the head switches to the best weights at the end, atomically.
        `incremental` trains from the current weights on the examples added since the
        last run plus a replay sample of older ones.
        """
        record = self.store.read(check_uuid(uuid))
        full = self.training_config(record, config, incremental)
        return self.train_resolved(uuid, full, auto_update, stop, on_epoch, incremental)

    def training_config(self, record: dict, config: Any = None, incremental: bool = False) -> dict:
        """The head's config with the Trainer section of `config` merged in, validated.

        Which data: a train_json named in this call's `config` is used together with the
        stored examples. Without one, a head that has stored examples trains on them only
        (train_json becomes null), and a head without any uses its config's train_json as
        before. An incremental run uses stored examples only. Paths taken from the stored
        config (not named in `config`) must also lie within the record's path limits
        (see ph.paths).
        """
        overrides = self._load(config, "config") if config is not None else {}
        self._check_stored_model_folder(record)  # before validation loads it
        full = self._merged_training_config(record, overrides) if config is not None \
            else record["config"]
        named = "train_json" in (dig(overrides, ("Trainer", "dataloader", "args")) or {})
        full = choose_data(full, named, incremental,
                           lambda: self.store.examples(record["uuid"]).summary().count)
        if record.get("path_limits"):  # paths this call does not name come from the record
            for key in STORED_PATHS:
                if dig(full, key) and dig(overrides, key) is None:
                    self._resolve_stored(dig(full, key), ".".join(key), record["path_limits"])
        return full

    def _merged_training_config(self, record: dict, overrides: dict) -> dict:
        head_config = record["config"]
        merged = merge_trainer_only(head_config, overrides, "train_head",
                                    "it belongs to the head. Create the head again "
                                    "(create_head(..., replace=True)) or use another uuid")
        dataloader = merged["Trainer"]["dataloader"]
        if dataloader != head_config["Trainer"]["dataloader"] and _uses_code(dataloader):
            self.policy.check_code("Trainer.dataloader")
        return validate_config({**head_config, "Trainer": merged["Trainer"]},
                               self._code(record), source=f"training of head '{record['uuid']}'")

    def train_resolved(self, uuid: str, config: dict, auto_update: bool = True,
                       stop: threading.Event | None = None,
                       on_epoch: Callable[[dict], None] | None = None,
                       incremental: bool = False, job_id: str | None = None) -> dict:
        """Train with an already validated config (background jobs start here, with their
        `job_id`: the head is already theirs, so they wait for a probe to let go of its lock)."""
        if job_id is None:  # a direct run: refused while another run or an accepted job lives
            with self.store.lock(uuid):
                self.check_idle(uuid, "a second train_head")
        with self.store.training(uuid, wait_s=10 if job_id else 0.2):
            if job_id is None:  # and a job accepted since the check above
                with self.store.lock(uuid):
                    self.check_idle(uuid, "a second train_head", lock_held=True)
            record, state = self.store.read_current(uuid)
            start = record
            parent = follows_parent(record)
            if parent:  # a child's first training starts from its parent as it is now
                start, state = self._read_parent(uuid, parent)
            plan = plan_examples(list(self.store.examples(uuid).iter()),
                                 record.get("examples_seen", 0), incremental, config["Trainer"],
                                 config["Trainer"]["seed"],
                                 self._replay_sources(record, start) if incremental else None)
            if plan.nothing_new:
                return {"uuid": uuid, "updated": False, "examples": plan.info,
                        "note": "no examples were added since the last run: nothing to learn"}
            warning = forgetting_warning(plan, state is not None)
            if warning:
                log.warning("head '%s': %s", uuid, warning)
            code = self._code(record)
            model = make_model(config, code, state, start["seed"])
            context = DataContext(code, build_processors(config, code)[0], start.get("labels"),
                                  config["Model"].get("args", {}).get("n_classes"),
                                  config["Trainer"]["seed"], self.policy.resolve,
                                  (plan.inputs, plan.labels), plan.replay)
            summary, best, labels = run_training(config, model, context, uuid, self.policy.resolve,
                                                 stop, on_epoch)
            summary.update(uuid=uuid, updated=False, examples=plan.info)
            if warning:
                summary["warning"] = warning
            if best is None:
                summary["note"] = ("no epoch improved on the resumed checkpoint's best value, so "
                                   "the head keeps its weights")
            elif auto_update:
                trained_on = self._trained_on(start, config)  # stored before the record names it
                with self.store.lock(uuid):
                    current = self.store.read(uuid)
                    if current["config"] != record["config"] or current["created"] != record["created"]:
                        raise ConflictError(f"head '{uuid}' was replaced while it trained; the "
                                            f"new weights stay in {summary['weights']}")
                    run = {k: summary[k] for k in ("best_epoch", "best_value", "epochs_run",
                                                   "monitor", "weights")}
                    run["finished"] = time.time()
                    if plan.inputs:  # the examples this run covered (incremental runs start after)
                        current["examples_seen"] = max(current.get("examples_seen", 0),
                                                       plan.seen_up_to)
                    if trained_on:
                        current["trained_on"] = trained_on
                    new = self.store.write_weights(uuid, current, best, labels, run)
                    self._stop_following(uuid, current)
                    self._switch(uuid, new, make_model(config, code, best))
                summary.update(updated=True, revision=new["revision"], labels=labels)
        return summary

    def _replay_sources(self, record: dict, start: dict) -> list[dict]:
        """What the weights a run starts from were trained on, besides the head's own
        stored examples: the data sets recorded by earlier runs (for a child's first run,
        its parent's), and a child's parent's stored examples that the parent trained on.
        An incremental run replays from these so it keeps what the head knew."""
        rows: list[dict] = []
        for digest in start.get("trained_on", []):
            try:
                rows += self.store.load_dataset(digest)
            except FileNotFoundError:
                log.warning("head '%s': training data set %s is missing from the store; it is "
                            "not replayed", record["uuid"], digest)
        parent = record.get("parent")
        if parent:
            try:
                source = start if start["uuid"] == parent else self.store.read(parent)
                seen = source.get("examples_seen", 0)
                rows += [r for r in self.store.examples(parent).iter() if r["id"] <= seen]
            except NotFoundError:
                pass  # a trained child outlives its parent: the data sets still hold its start
        return rows

    def _trained_on(self, start: dict, config: dict) -> list[str]:
        """The data sets the new weights carry knowledge of: those of the weights the run
        started from, plus this run's train_json file, stored once by content (a parent
        and its children name the same copy)."""
        digests = list(start.get("trained_on", []))
        loader = config["Trainer"]["dataloader"]
        train_json = (loader.get("args") or {}).get("train_json")
        if loader["type"] == "SnipsDataLoader" and train_json:
            key = "Trainer.dataloader.args.train_json"
            records = read_records(self.policy.resolve(train_json, key), train_json)
            digest = self.store.save_dataset([{k: v, "label": label} for k, v, label in records])
            digests = [d for d in digests if d != digest] + [digest]
        return digests[-DATA_SETS_KEPT:]

    def get_config(self, uuid: str) -> dict:
        return self.store.read(check_uuid(uuid))["config"]

    def check_head(self, uuid: str) -> dict:
        """What is known about a head without loading it; `{"uuid", "exists": False}` for
        a head that does not exist, so a walker can branch on it.

        For a child: `parent`; `follows_parent` is the parent's uuid while the child has not
        trained (it answers with the parent's weights and labels, at `parent_revision`).
        `followers` counts the untrained children that answer with this head's weights."""
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
        loaded, job = self.cache.peek(parent or uuid), self.training_job(uuid)
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
        return info

    # --- stored examples -------------------------------------------------------------------
    def add_examples(self, uuid: str, examples: Any) -> int:
        """Store examples with the head (checked whole first); returns its example count.

        Durable when this returns: the examples are fsynced under the head's lock.
        """
        record = self.store.read(check_uuid(uuid))
        for _ in range(3):  # the head replaced while the examples were checked: check again
            loader = record["config"]["Trainer"]["dataloader"]["type"]
            if loader != "SnipsDataLoader":
                raise ConfigError(f"head '{uuid}' trains with Trainer.dataloader {loader}, which "
                                  "reads its own Dataset; stored examples need SnipsDataLoader")
            preprocessor = self._preprocessor(record)
            with self.store.lock(uuid):
                current = self.store.read(uuid)
                if current["created"] == record["created"]:
                    log = self.store.examples(uuid)
                    facts = HeadFacts.of(uuid, current["config"], current.get("labels"),
                                         preprocessor)
                    rows = check_examples(examples, facts, log.summary(), self.limits)
                    return log.append(rows).count
            record = current
        raise ConflictError(f"head '{uuid}' was replaced again and again while the examples were "
                            "checked; call add_examples again")

    def list_examples(self, uuid: str, offset: int = 0, limit: int = 100) -> list[dict]:
        """Stored examples from position `offset` (at most `limit`), oldest first."""
        self.store.signature(check_uuid(uuid))  # raises if the head does not exist
        _check_page(offset, limit, self.limits.per_call, "examples")
        return self.store.examples(uuid).read(offset, limit)

    def delete_examples(self, uuid: str, ids: list | None = None) -> dict:
        """Delete the examples with these ids, or all of them (ids None); they are gone
        from disk when this returns. Weights already trained on them keep what they
        learnt until the head is trained again. Refused while the head is training: the
        run may be reading them, and would publish what it learnt from them."""
        self.store.signature(check_uuid(uuid))
        if ids is not None:
            if not isinstance(ids, (list, tuple)) or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise BadInputError(f"ids: must be a list of example ids (whole numbers, as "
                                    f"list_examples shows them) or null for all, got {ids!r:.80}")
            ids = set(ids)
        with self.store.lock(uuid):
            self.check_idle(uuid, "delete_examples")
            log = self.store.examples(uuid)
            deleted = log.delete(ids)
            return {"uuid": uuid, "deleted": deleted, "examples": log.summary().count}

    def _preprocessor(self, record: dict) -> Any:
        loaded = self.cache.peek(record["uuid"])
        if loaded is not None and loaded.config == record["config"]:
            return loaded.engine.preprocessor
        self._check_stored_model_folder(record)
        return build_processors(record["config"], self._code(record))[0]

    def list_heads(self, offset: int = 0, limit: int = LIST_PAGE) -> list[str]:
        """Uuids in sorted order from position `offset`, at most `limit` (a store may
        hold millions: page through them)."""
        _check_page(offset, limit, LIST_PAGE_MAX, "uuids")
        return self.store.list(offset, limit)

    def delete_head(self, uuid: str) -> bool:
        with self.store.lock(check_uuid(uuid)):
            self.check_idle(uuid, "delete_head")
            self._remove(uuid, self.store.read(uuid), "deleted")
        return True

    def _remove(self, uuid: str, record: dict, doing: str) -> None:
        """Delete a head's files and what this process holds of it (call under its lock);
        refused while untrained children follow it."""
        refuse_if_followed(self.store, uuid, doing)
        self.store.delete(uuid)
        self._stop_following(uuid, record)
        self.cache.drop(uuid)

    # --- one training per head (see the module docstring) ---------------------------------
    def training_job(self, uuid: str) -> str | None:
        """The head's background job while it is queued or running, else None."""
        job_id = self.store.latest_job(uuid)
        return job_id if job_id and is_active(self.store, job_id) else None

    def check_idle(self, uuid: str, action: str, lock_held: bool = False) -> None:
        """Refuse `action` (ConflictError) while the head is training. Call it with the
        head's store lock held, and make the change under that same lock.

        Args:
            lock_held: the caller holds the head's training lock itself (a direct run).
        """
        job_id = self.training_job(uuid)
        if job_id:
            raise ConflictError(
                f"head '{uuid}' is already training (job {job_id}), so {action} is refused until "
                f"that job ends. Try again once train_status(job_id='{job_id}') no longer says "
                f"queued or running; to end it sooner, stop it with stop_training(job_id='{job_id}')")
        if not lock_held and self.store.is_training(uuid):
            raise ConflictError(f"head '{uuid}' is already training (a train_head call that has not "
                                f"returned yet), so {action} is refused; try again when it ends")

    def accept_job(self, record: dict, job: dict) -> None:
        """Record a background job for the head `record` describes and make it the head's
        training, from now on: refused if the head is training, was deleted or replaced."""
        uuid = record["uuid"]
        with self.store.lock(uuid):
            self.check_idle(uuid, "a second train_head")
            if self.store.read(uuid).get("created") != record.get("created"):  # 404 if it was deleted
                raise ConflictError(f"head '{uuid}' was replaced while its training was being set "
                                    "up; call train_head again")
            self.store.write_job(job)
            self.store.set_latest_job(uuid, job["id"])

    def close(self) -> None:
        """Let go of the store's connections and threads (a distributed store's listener)."""
        self.store.close()

    def stats(self) -> dict:
        return {"heads_dir": str(self.store.root), **self.cache.stats()}

    # --- loading ---------------------------------------------------------------------------
    def loaded(self, uuid: str, _hops: int = 0) -> LoadedHead:
        """The head in memory, (re)loaded if its record on disk changed. For an untrained
        child: its parent's loaded head (the child holds no weights of its own)."""
        signature = self.store.signature(check_uuid(uuid))
        parent = self._follows.get(uuid, signature)
        if parent is not None:
            return self._followed(uuid, parent, _hops)
        head = self.cache.get(uuid, signature)
        if head is not None:
            return head
        with self._load_lock(uuid):
            head = self.cache.peek(uuid)
            if head is not None and head.signature == signature:
                return head  # another thread loaded it while we waited
            signature = self.store.signature(uuid)
            record, state = self.store.read_current(uuid)
            parent = follows_parent(record)
            if parent is None:
                head = self._load_head(record, state, signature)
                self.cache.put(head)
                return head
            self._follows.put(uuid, signature, parent)
        return self._followed(uuid, parent, _hops)  # outside this lock: stripes never nest

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

    def _read_parent(self, uuid: str, parent: str) -> tuple[dict, dict | None]:
        try:
            return self.store.read_current(parent)
        except NotFoundError:
            raise NotFoundError(f"head '{uuid}' follows its parent '{parent}', which no longer "
                                "exists, so it has no weights to start training from") from None

    def _stop_following(self, uuid: str, record: dict) -> None:
        """A child got weights of its own (or was removed): its parent no longer has it
        as a follower."""
        parent = follows_parent(record)
        if parent:
            self.store.remove_follower(parent, uuid)
        self._follows.pop(uuid)

    def _load_head(self, record: dict, state: dict | None, signature: tuple) -> LoadedHead:
        uuid = record["uuid"]
        self._check_stored_model_folder(record)
        engine = build_engine(record["config"], self._code(record), state, record.get("labels"),
                              record["seed"])
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

    def _unload(self, head: LoadedHead) -> None:
        """A head left the cache: give its bank slot back."""
        if "slot" in head.extra:
            head.extra["bank"].release(head.extra["slot"], head.engine.model)

    def _switch(self, uuid: str, record: dict, model) -> None:
        """Point the loaded head (if any) at the weights just written (call under the lock).

        A new LoadedHead replaces the cached one, so the old one's bank slot is given back
        exactly once (by the cache), never while this head is being evicted elsewhere."""
        with self._load_lock(uuid):
            head = self.cache.peek(uuid)
            if head is None:
                return
            if head.config != record["config"]:  # replaced elsewhere: load afresh next call
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

    def _load_lock(self, uuid: str) -> threading.RLock:
        return self._load_locks[hash(uuid) % len(self._load_locks)]

    # --- helpers ---------------------------------------------------------------------------
    def _load(self, config: Any, key: str) -> dict:
        """A config from a dict or a file path (checked against the path policy)."""
        if isinstance(config, (str, os.PathLike)):
            return load_config(self.policy.resolve(config, key), name=str(config))
        if config is not None and not isinstance(config, Mapping):
            raise ConfigError(f"{key}: must be a config dict or the path of a YAML file, "
                              f"got {type(config).__name__}")
        return load_config(config)

    def _collect_code(self, config: Mapping, python_digest: str | None,
                      limits: list | None = None) -> tuple[UserCode, dict]:
        """User sources the config refers to, read once (policy checked) and stored by content."""
        refs = {}
        for path in CODE_SPECS:
            spec = dig(config, path)
            if _uses_code(spec):
                refs.setdefault((spec.get("args") or {}).get("python_file") or "", ".".join(path))
        if not refs:
            return UserCode(), {}
        self.policy.check_code(f"{next(iter(refs.values()))}.type")
        ids = {}
        for python_file, where in refs.items():
            if python_digest:
                ids[python_file] = python_digest
            elif python_file:
                file = self._resolve_stored(python_file, f"{where}.args.python_file", limits)
                if not file.is_file():
                    raise ConfigError(f"{where}.args.python_file: '{python_file}' not found "
                                      f"(looked at {file})")
                ids[python_file] = self.store.save_code(file.read_text(encoding="utf-8"))
        return UserCode({k: self.store.load_code(v) for k, v in ids.items()}), ids

    def _check_model_folder(self, config: Mapping, limits: list | None = None,
                            policy: PathPolicy | None = None) -> None:
        """An encoder model folder is a path like any other: the policy decides, before
        validation loads it."""
        folder = model_path(dig(config, ("Inference", "preprocess", "args")))
        if folder is not None:
            self._resolve_stored(folder, MODEL_FOLDER, limits, policy)

    def _check_stored_model_folder(self, record: dict) -> None:
        """Before a head's encoder loads its model folder, a relative path names a folder in
        this process's working folder: it too must lie inside the record's limits."""
        if record.get("path_limits"):
            self._check_model_folder(record["config"], record["path_limits"], PathPolicy())

    def _resolve_stored(self, path: str, key: str, limits: list | None,
                        policy: PathPolicy | None = None) -> Path:
        """A path from a config: allowed by `policy` (this caller's by default) and inside
        the folders of every restricted caller that stored the config (see ph.paths)."""
        full = (policy or self.policy).resolve(path, key)
        check_stored_path(full, limits, key)
        return full

    def _code(self, record: dict) -> UserCode:
        return UserCode({k: self.store.load_code(v) for k, v in record.get("code", {}).items()})


def _check_page(offset: Any, limit: Any, most: int, what: str) -> None:
    for name, value in (("offset", offset), ("limit", limit)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadInputError(f"{name}: must be a whole number >= 0, got {value!r}")
    if limit > most:
        raise BadInputError(f"limit: at most {most} {what} per call, got {limit}; page with offset")


def _uses_code(spec: Any) -> bool:
    return isinstance(spec, Mapping) and (str(spec.get("type", "")).startswith("Custom")
                                          or "python_file" in (spec.get("args") or {}))


def default_heads_dir() -> Path:
    return Path(os.environ.get("PH_HEADS_DIR", "heads"))
