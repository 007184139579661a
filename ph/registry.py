"""HeadRegistry: uuid -> head, for one process, over a HeadStore shared with others.

Every call checks the head's record on disk (one stat), so a head created, trained,
reloaded or deleted by another process is seen on the next call. Loaded heads live in
a memory-bounded cache.
"""
from __future__ import annotations

import copy
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from .batching import HeadBank, answer_many
from .cache import HeadCache, LoadedHead
from .components import UserCode
from .config import SECTION_KEYS, config_diff, deep_merge, load_config
from .data import DataContext
from .encoders import model_path
from .engine import build_engine, build_processors, fit_state_dict, make_model, read_weights
from .errors import ConfigError, ConflictError, as_ph_error, did_you_mean
from .paths import PathPolicy
from .store import HeadStore, check_uuid, new_uuid
from .training import run_training
from .validate import validate_config

CODE_SPECS = (("Model",), ("Inference", "preprocess"), ("Inference", "postprocess"),
              ("Trainer", "dataloader"))


class HeadRegistry:
    """Creates, serves and trains the heads in one heads folder."""

    def __init__(self, heads_dir: str | os.PathLike = "heads", policy: PathPolicy | None = None,
                 memory_budget: int | None = None):
        self.store = HeadStore(heads_dir)
        self.policy = policy or PathPolicy()
        self.cache = HeadCache(memory_budget, on_evict=self._unload)
        self.banks: dict[tuple, HeadBank] = {}
        self._banks_lock = threading.Lock()
        self._load_locks = [threading.RLock() for _ in range(64)]  # striped by uuid

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
        self.store.write_head_list({"config": overrides, "python": digest, "updated": time.time()})

    def _head_list(self) -> tuple[dict, str | None]:
        record = self.store.read_head_list()
        return (record["config"], record.get("python")) if record else ({}, None)

    # --- heads -----------------------------------------------------------------------------
    def create_head(self, uuid: str | None = None, config: Any = None, replace: bool = False) -> str:
        """Create a head from the head list's config with `config` merged in; returns its uuid.

        Creating an existing uuid with the same config returns it unchanged (trained
        weights kept); with another config it is a conflict. `replace` starts the head over
        (new weights) whatever its config.
        """
        uuid = new_uuid() if uuid is None else check_uuid(uuid)
        base, python = self._head_list()
        merged = deep_merge(base, self._load(config, "config"))
        code, code_ids = self._collect_code(merged, python)
        self._check_model_folder(merged)
        full = validate_config(merged, code, source=f"head '{uuid}'")
        state = labels = None
        if full["Inference"]["weights"]:
            path = self.policy.resolve(full["Inference"]["weights"], "Inference.weights")
            state, extras = read_weights(path)
            labels = extras.get("labels")
            make_model(full, code, state)  # raises a WeightsError if they do not fit
        record = {"uuid": uuid, "config": full, "code": code_ids, "labels": labels, "revision": 0,
                  "weights": None, "seed": random.randrange(2**31), "created": time.time(),
                  "runs": []}
        with self.store.lock(uuid):
            if self.store.exists(uuid):
                existing = self.store.read(uuid)
                same = existing["config"] == full and existing.get("code", {}) == code_ids
                if same and not replace:
                    return uuid
                if not replace:
                    changes = config_diff(existing["config"], full) or ["its user Python code"]
                    raise ConflictError(
                        f"head '{uuid}' already exists with a different config ({'; '.join(changes[:5])}). "
                        f"Use another uuid, call delete_head(uuid='{uuid}') first, or pass "
                        "replace=True to create_head to start it over (its weights are lost)")
                self.store.delete(uuid)
                self.cache.drop(uuid)
            self.store.create(uuid, record, state)
        return uuid

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
            if current["config"] != head.config:
                raise ConflictError(f"head '{uuid}' was replaced while its weights were being "
                                    "checked; try load_weights again")
            record = self.store.write_weights(uuid, current, state, labels)
            self._switch(uuid, record, model)
        return {"uuid": uuid, "revision": record["revision"], "labels": labels}

    def train(self, uuid: str, config: Any = None, auto_update: bool = True,
              stop: threading.Event | None = None,
              on_epoch: Callable[[dict], None] | None = None) -> dict:
        """Train a head on its Trainer config (with `config` merged in); returns a summary.

        With `auto_update` the head switches to the best weights at the end, atomically.
        """
        record = self.store.read(check_uuid(uuid))
        full = self.training_config(record, config)
        return self.train_resolved(uuid, full, auto_update, stop, on_epoch)

    def training_config(self, record: dict, config: Any = None) -> dict:
        """The head's config with the Trainer section of `config` merged in, validated."""
        head_config = record["config"]
        if config is None:
            return head_config
        overrides = self._load(config, "config")
        unknown = [k for k in overrides if k not in SECTION_KEYS]
        if unknown:
            raise ConfigError([f"{k}: unknown key{did_you_mean(k, SECTION_KEYS)}; a training "
                               "config has Trainer (and Model and Inference as the head has them)"
                               for k in unknown])
        merged = deep_merge(head_config, overrides)
        for section in ("Model", "Inference"):
            if merged[section] != head_config[section]:
                changes = "; ".join(config_diff(head_config[section], merged[section], section)[:5])
                raise ConfigError(f"train_head cannot change {section} ({changes}): it belongs to "
                                  "the head. Create the head again (create_head(..., replace=True)) "
                                  "or use another uuid")
        dataloader = merged["Trainer"]["dataloader"]
        if dataloader != head_config["Trainer"]["dataloader"] and _uses_code(dataloader):
            self.policy.check_code("Trainer.dataloader")
        return validate_config({**head_config, "Trainer": merged["Trainer"]},
                               self._code(record), source=f"training of head '{record['uuid']}'")

    def train_resolved(self, uuid: str, config: dict, auto_update: bool = True,
                       stop: threading.Event | None = None,
                       on_epoch: Callable[[dict], None] | None = None) -> dict:
        """Train with an already validated config (background jobs start here)."""
        with self.store.training(uuid):
            record, state = self.store.read_current(uuid)
            code = self._code(record)
            model = make_model(config, code, state, record["seed"])
            context = DataContext(code, build_processors(config, code)[0], record.get("labels"),
                                  config["Model"].get("args", {}).get("n_classes"),
                                  config["Trainer"]["seed"], self.policy.resolve)
            summary, best, labels = run_training(config, model, context, uuid, self.policy.resolve,
                                                 stop, on_epoch)
            summary.update(uuid=uuid, updated=False)
            if best is None:
                summary["note"] = ("no epoch improved on the resumed checkpoint's best value, so "
                                   "the head keeps its weights")
            elif auto_update:
                with self.store.lock(uuid):
                    current = self.store.read(uuid)
                    if current["config"] != record["config"] or current["created"] != record["created"]:
                        raise ConflictError(f"head '{uuid}' was replaced while it trained; the "
                                            f"new weights stay in {summary['weights']}")
                    run = {k: summary[k] for k in ("best_epoch", "best_value", "epochs_run",
                                                   "monitor", "weights")}
                    run["finished"] = time.time()
                    new = self.store.write_weights(uuid, current, best, labels, run)
                    self._switch(uuid, new, make_model(config, code, best))
                summary.update(updated=True, revision=new["revision"], labels=labels)
        return summary

    def get_config(self, uuid: str) -> dict:
        return self.store.read(check_uuid(uuid))["config"]

    def check_head(self, uuid: str) -> dict:
        """What is known about a head without loading it."""
        record = self.store.read(check_uuid(uuid))
        loaded = self.cache.peek(uuid)
        return {"uuid": uuid, "exists": True, "model": record["config"]["Model"]["type"],
                "revision": record["revision"], "trained": bool(record.get("weights")),
                "labels": record.get("labels"), "runs": len(record.get("runs", [])),
                "last_run": (record.get("runs") or [None])[-1],
                "loaded": loaded is not None and loaded.revision == record["revision"],
                "device": str(loaded.engine.device) if loaded else None,
                "training": self.store.is_training(uuid)}

    def list_heads(self) -> list[str]:
        return self.store.list()

    def delete_head(self, uuid: str) -> bool:
        if self.store.is_training(check_uuid(uuid)):
            raise ConflictError(f"head '{uuid}' is training; stop that run (stop_training) or "
                                "wait for it, then delete the head")
        with self.store.lock(uuid):
            self.store.delete(uuid)
        self.cache.drop(uuid)
        return True

    def stats(self) -> dict:
        return {"heads_dir": str(self.store.root), **self.cache.stats()}

    # --- loading ---------------------------------------------------------------------------
    def loaded(self, uuid: str) -> LoadedHead:
        """The head in memory, (re)loaded if its record on disk changed."""
        signature = self.store.signature(check_uuid(uuid))
        head = self.cache.get(uuid, signature)
        if head is not None:
            return head
        with self._load_lock(uuid):
            head = self.cache.peek(uuid)
            if head is not None and head.signature == signature:
                return head  # another thread loaded it while we waited
            signature = self.store.signature(uuid)
            record, state = self.store.read_current(uuid)
            head = self._load_head(record, state, signature)
            self.cache.put(head)
            return head

    def _load_head(self, record: dict, state: dict | None, signature: tuple) -> LoadedHead:
        uuid = record["uuid"]
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

    def _collect_code(self, config: Mapping, python_digest: str | None) -> tuple[UserCode, dict]:
        """User sources the config refers to, read once (policy checked) and stored by content."""
        refs = {}
        for path in CODE_SPECS:
            spec = _dig(config, path)
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
                file = self.policy.resolve(python_file, f"{where}.args.python_file")
                if not file.is_file():
                    raise ConfigError(f"{where}.args.python_file: '{python_file}' not found "
                                      f"(looked at {file})")
                ids[python_file] = self.store.save_code(file.read_text(encoding="utf-8"))
        return UserCode({k: self.store.load_code(v) for k, v in ids.items()}), ids

    def _check_model_folder(self, config: Mapping) -> None:
        """An encoder model folder is a path like any other: the policy decides, before
        validation loads it."""
        folder = model_path(_dig(config, ("Inference", "preprocess", "args")))
        if folder is not None:
            self.policy.resolve(folder, "Inference.preprocess.args.encoder_args.model")

    def _code(self, record: dict) -> UserCode:
        return UserCode({k: self.store.load_code(v) for k, v in record.get("code", {}).items()})


def _uses_code(spec: Any) -> bool:
    return isinstance(spec, Mapping) and (str(spec.get("type", "")).startswith("Custom")
                                          or "python_file" in (spec.get("args") or {}))


def _dig(mapping: Mapping, path: tuple) -> Any:
    for key in path:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def default_heads_dir() -> Path:
    return Path(os.environ.get("PH_HEADS_DIR", "heads"))
