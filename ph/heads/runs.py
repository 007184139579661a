"""Training coordination at the heads level (the training loop itself is ph.training):
a run's config, one training per head, and how a head gets new weights.

One rule protects training, here and nowhere else (TrainingGuard): a head is training
while a run holds its training lock or while its latest background job is queued or
running (from the moment train_head returns the job id). Deleting, replacing or
reloading such a head, or training it again, is refused (ConflictError, 409) naming the
job; the check and the change happen under the head's lock, so no job can be accepted
in between.

A head gets new weights in two ways (TrainingRuns): a run publishes its best weights, or
load_weights switches to a file's. Both write them under the head's lock, only if the
head was not replaced meanwhile, and point the loaded head at them at once.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..config.components import UserCode
from ..config.schema import dig
from ..errors import BadInputError, ConfigError, ConflictError, NotFoundError
from ..modeling.addins import AddinModel, FrozenBase, initial_addin
from ..modeling.engine import build_processors, fit_state_dict, make_model, read_weights
from ..training.data import DataContext, read_records
from ..training.plan import ExamplePlan, choose_data, forgetting_warning, plan_examples
from ..training.trainer import run_training
from .addin_heads import AddinBase, AddinBases, addin_spec
from .children import follows_parent
from .jobs import is_active
from .loader import HeadLoader
from .policy import PathPolicy
from .sources import ConfigSources
from .stored_embeddings import run_embeddings

STORED_PATHS = (("Trainer", "dataloader", "args", "train_json"), ("Trainer", "trainer", "save_dir"),
                ("Trainer", "trainer", "resume"))  # paths a training takes from the head's config
DATA_SETS_KEPT = 8  # training data sets a head's record remembers (replayed by incremental runs)
log = logging.getLogger("ph.registry")


class TrainingGuard:
    """One training per head: whether a head is training, and a job made its training."""

    def __init__(self, store):
        self.store = store

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

    @contextlib.contextmanager
    def training(self, uuid: str, job_id: str | None) -> Iterator[None]:
        """Hold the head's training lock for a run. A direct run (no `job_id`) is refused
        while another run or an accepted job lives, checked before waiting and again once
        the lock is held (a job may have been accepted in between); a background job
        already owns the head, so it waits for a status probe to let go of the lock."""
        if job_id is None:
            with self.store.lock(uuid):
                self.check_idle(uuid, "a second train_head")
        with self.store.training(uuid, wait_s=10 if job_id else 0.2):
            if job_id is None:
                with self.store.lock(uuid):
                    self.check_idle(uuid, "a second train_head", lock_held=True)
            yield


@dataclass
class _Start:
    """What a run starts from: the head's record when it began, and whose weights (for a
    child's first run, its parent's as they are now)."""

    record: dict
    source: dict
    state: dict | None
    base: AddinBase | None = None  # an add-in's run: the parent weights it trains against


@dataclass
class Run:
    """One head's run, prepared: its config, start, planned examples and user code;
    `done` (nothing to learn) or a forgetting `warning`."""

    uuid: str
    config: dict
    start: _Start
    plan: ExamplePlan
    code: UserCode
    warning: str | None = None
    done: dict | None = None


class TrainingRuns:
    """Configures and runs a head's trainings, and switches it to new weights."""

    def __init__(self, store, policy: PathPolicy, sources: ConfigSources, loader: HeadLoader,
                 guard: TrainingGuard):
        self.store = store
        self.policy = policy
        self.sources = sources
        self.loader = loader
        self.guard = guard
        self.bases = AddinBases(store)

    def training_config(self, record: dict, config: Any = None, incremental: bool = False) -> dict:
        """The head's config with the Trainer of `config` merged in, validated, and the
        data the run uses chosen (see `choose_data`). Paths taken from the stored config
        (not named in `config`) must lie within the record's path limits (see ph.paths)."""
        overrides = self.sources.read_config(config, "config") if config is not None else {}
        self.sources.check_stored_model_folder(record)  # before validation loads it
        full = record["config"] if config is None else self.sources.with_trainer(
            record, overrides, "train_head",
            "it belongs to the head. Create the head again (create_head(..., replace=True)) "
            "or use another uuid", f"training of head '{record['uuid']}'")
        named = "train_json" in (dig(overrides, ("Trainer", "dataloader", "args")) or {})
        full = choose_data(full, named, incremental,
                           lambda: self.store.examples(record["uuid"]).summary().count)
        if record.get("path_limits"):  # paths this call does not name come from the record
            for key in STORED_PATHS:
                if dig(full, key) and dig(overrides, key) is None:
                    self.sources.resolve_stored(dig(full, key), ".".join(key), record["path_limits"])
        return full

    def train_resolved(self, uuid: str, config: dict, auto_update: bool = True,
                       stop: threading.Event | None = None,
                       on_epoch: Callable[[dict], None] | None = None,
                       incremental: bool = False, job_id: str | None = None,
                       rebase: bool = False) -> dict:
        """Train with an already validated config, holding the head's training lock (see
        `TrainingGuard.training`), and publish the best weights if `auto_update`.

        `rebase` (add-in heads): train against the parent's current weights instead of the
        pinned revision, on all stored examples plus a replay of what the parent knew."""
        with self.guard.training(uuid, job_id):
            run = self.prepare_run(uuid, config, incremental, rebase)
            if run.done is not None:
                return run.done
            model = self.model_for(run.start, run.code, config)
            result = run_training(config, model, self.data_context(run), uuid, self.policy.resolve,
                                  stop, on_epoch)
            return self.finish_run(run, result, auto_update)

    def prepare_run(self, uuid: str, config: dict, incremental: bool, rebase: bool) -> "Run":
        """What a run of head `uuid` starts from and trains on (call holding its training
        lock); `done` is set when there is nothing to learn."""
        start = self._start(uuid, rebase)
        incremental = incremental or (rebase and start.base is not None)
        plan = plan_examples(list(self.store.examples(uuid).iter()),
                             0 if rebase else start.record.get("examples_seen", 0), incremental,
                             config["Trainer"], config["Trainer"]["seed"],
                             self._replay_sources(start) if incremental else None)
        run = Run(uuid, config, start, plan, self.sources.code_of(start.record))
        if plan.nothing_new:
            run.done = {"uuid": uuid, "updated": False, "examples": plan.info,
                        "note": "no examples were added since the last run: nothing to learn"}
            return run
        run.warning = forgetting_warning(plan, start.state is not None)
        if run.warning:
            log.warning("head '%s': %s", uuid, run.warning)
        return run

    def finish_run(self, run: "Run", result: tuple[dict, dict | None, list | None],
                   auto_update: bool = True) -> dict:
        """The run's summary, its best weights published if `auto_update`."""
        summary, best, labels = result
        summary.update(uuid=run.uuid, updated=False, examples=run.plan.info)
        if run.warning:
            summary["warning"] = run.warning
        if best is None:
            summary["note"] = ("no epoch improved on the resumed checkpoint's best value, so "
                               "the head keeps its weights")
        elif auto_update:
            new = self._publish(run.uuid, run.start, run.code, run.config, run.plan,
                                (summary, best, labels))
            summary.update(updated=True, revision=new["revision"], labels=labels)
        return summary

    def _start(self, uuid: str, rebase: bool = False) -> _Start:
        record, state = self.store.read_current(uuid)
        if record.get("addin"):  # the add-in's own weights, against a revision of its parent
            base = self.bases.get(record, state is not None, rebase, self.sources.code_of(record))
            source = record if state is not None else self.store.read(record["parent"])
            return _Start(record, source, state, base)
        if rebase:
            raise BadInputError(f"rebase: head '{uuid}' is not an add-in; only add-ins are pinned "
                                "to a revision of their parent")
        source, parent = record, follows_parent(record)
        if parent:  # a child's first training starts from its parent as it is now
            try:
                source, state = self.store.read_current(parent)
            except NotFoundError:
                raise NotFoundError(f"head '{uuid}' follows its parent '{parent}', which no "
                                    "longer exists, so it has no weights to start training "
                                    "from") from None
        return _Start(record, source, state)

    def data_context(self, run: "Run") -> DataContext:
        """What the run's data loader reads: the planned examples, labels to start from."""
        config, start, plan = run.config, run.start, run.plan
        preprocessor = build_processors(config, run.code)[0]
        return DataContext(run.code, preprocessor, start.source.get("labels"),
                           config["Model"].get("args", {}).get("n_classes"),
                           config["Trainer"]["seed"], self.policy.resolve,
                           (plan.inputs, plan.labels), plan.replay,
                           run_embeddings(self.store, run.uuid, preprocessor,
                                          plan.inputs + (plan.replay[0] if plan.replay else [])))

    @staticmethod
    def model_for(start: _Start, code: UserCode, config: dict, frozen: FrozenBase | None = None):
        """What the run trains: the head's model, or an add-in over its frozen parent
        (`frozen`, shared by runs against the same parent weights, else built here)."""
        if start.base is None:
            return make_model(config, code, start.state, start.source["seed"])
        spec = addin_spec(config, start.record["addin"], code)
        if frozen is None:
            frozen = FrozenBase(make_model(config, code, start.base.state),
                                config["Model"].get("args") or {})
        state = start.state or initial_addin(spec, frozen.model, start.record["seed"])
        return AddinModel(frozen, spec, state)

    def _publish(self, uuid: str, start: _Start, code: UserCode, config: dict, plan: ExamplePlan,
                 result: tuple[dict, dict, list | None]) -> dict:
        """Switch the head to the run's best weights (`result`: run_training's summary,
        best weights and labels), with what the run covered; refused if the head was
        replaced while it trained (the weights stay in the run's folder)."""
        summary, best, labels = result
        trained_on = self._trained_on(start.source, config)  # stored before the record names it
        if start.base is not None and start.base.digest is None:  # likewise the parent revision
            start.base.digest = self.store.save_snapshot(start.base.state)
        with self.store.lock(uuid):
            current = self.store.read(uuid)
            if current["config"] != start.record["config"] \
                    or current["created"] != start.record["created"]:
                raise ConflictError(f"head '{uuid}' was replaced while it trained; the "
                                    f"new weights stay in {summary['weights']}")
            run = {k: summary[k] for k in ("best_epoch", "best_value", "epochs_run", "monitor",
                                           "weights")}
            run["finished"] = time.time()
            if plan.inputs:  # the examples this run covered (incremental runs start after)
                current["examples_seen"] = max(current.get("examples_seen", 0), plan.seen_up_to)
            if trained_on:
                current["trained_on"] = trained_on
            if start.base is not None:
                current.update(base=start.base.digest, parent_revision=start.base.revision)
            return self._serve_weights(uuid, current, best, labels,
                                       None if start.base else make_model(config, code, best), run)

    def load_weights(self, uuid: str, path: str) -> dict:
        """Switch a head to the weights in a file, checked against its model first."""
        if not isinstance(path, str) or not path:
            raise ConfigError("weights_file: give the path of a weights file (.pt)")
        record = self.store.read(uuid)
        if record.get("addin"):
            raise BadInputError(f"head '{uuid}' is an add-in on '{record['parent']}': its weights "
                                "are trained against a pinned parent revision, so load_weights "
                                "cannot set them. Train it (train_head), or create a head without "
                                "addin to load whole weights")
        head = self.loader.loaded(uuid)
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
            self.guard.check_idle(uuid, "load_weights")
            record = self._serve_weights(uuid, current, state, labels, model)
        return {"uuid": uuid, "revision": record["revision"], "labels": labels}

    def revisions(self, uuid: str) -> list[dict]:
        """The head's published revisions it keeps, newest (the current one) first."""
        record = self.store.read(uuid)
        kept = [{**_revision_info(e), "current": False} for e in record.get("history", [])]
        if record.get("weights"):
            kept.append({**_revision_info(record), "current": True,
                         "rolled_back_to": record.get("rolled_back_to")})
        return kept[::-1]

    def roll_back(self, uuid: str, revision: Any) -> dict:
        """Serve the weights of a kept earlier revision again, as the next revision."""
        if isinstance(revision, bool) or not isinstance(revision, int):
            raise BadInputError(f"rollback_head: revision must be a whole number (one that "
                                f"list_revisions shows), got {revision!r}")
        with self.store.lock(uuid):
            current = self.store.read(uuid)
            self.guard.check_idle(uuid, "rollback_head")
            record = self.store.roll_back(uuid, current, revision)
        log.info("head '%s' rolled back to revision %d, served as revision %d", uuid, revision,
                 record["revision"])
        return {"uuid": uuid, "revision": record["revision"], "rolled_back_to": revision,
                "labels": record.get("labels")}

    def _serve_weights(self, uuid: str, current: dict, state: dict, labels: list | None, model,
                       run: dict | None = None) -> dict:
        """Write new weights into the head's record and serve them from now on (call under
        its lock); a child with weights of its own no longer follows its parent."""
        record = self.store.write_weights(uuid, current, state, labels, run)
        self.loader.stop_following(uuid, current)
        self.loader.switch(uuid, record, model)
        return record

    def _replay_sources(self, start: _Start) -> list[dict]:
        """What the weights a run starts from were trained on, besides the head's own
        stored examples: the data sets recorded by earlier runs (for a child's first run,
        its parent's), and a child's parent's stored examples that the parent trained on.
        An incremental run replays from these so it keeps what the head knew."""
        rows: list[dict] = []
        for digest in start.source.get("trained_on", []):
            try:
                rows += self.store.load_dataset(digest)
            except FileNotFoundError:
                log.warning("head '%s': training data set %s is missing from the store; it is "
                            "not replayed", start.record["uuid"], digest)
        parent = start.record.get("parent")
        if parent:
            try:
                source = start.source if start.source["uuid"] == parent else self.store.read(parent)
                seen = source.get("examples_seen", 0)
                rows += [r for r in self.store.examples(parent).iter() if r["id"] <= seen]
            except NotFoundError:
                pass  # a trained child outlives its parent: the data sets still hold its start
        return rows

    def _trained_on(self, source: dict, config: dict) -> list[str]:
        """The data sets the new weights carry knowledge of: those of the weights the run
        started from, plus this run's train_json file, stored once by content (a parent
        and its children name the same copy)."""
        digests = list(source.get("trained_on", []))
        dataloader = config["Trainer"]["dataloader"]
        train_json = (dataloader.get("args") or {}).get("train_json")
        if dataloader["type"] == "SnipsDataLoader" and train_json:
            key = "Trainer.dataloader.args.train_json"
            records = read_records(self.policy.resolve(train_json, key), train_json)
            digest = self.store.save_dataset([{k: v, "label": label} for k, v, label in records])
            digests = [d for d in digests if d != digest] + [digest]
        return digests[-DATA_SETS_KEPT:]


def _revision_info(entry: dict) -> dict:
    return {"revision": entry["revision"], "updated": entry.get("updated"),
            "labels": entry.get("labels"), "examples_seen": entry.get("examples_seen", 0)}
