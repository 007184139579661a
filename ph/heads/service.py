"""HeadRegistry: uuid -> head, for one process, over a store shared with others
(`ph.stores`: the local heads folder, or Redis + an object store).

Every call checks the head's signature in the store (a stat for the folder, a local
lookup kept current by Redis notifications for RedisStore), so a head created, trained,
reloaded or deleted by another process is seen on the next call. Loaded heads live in
a memory-bounded cache.

The registry is the one class the adapters call; it hands each job to a part with one
job (as Lightning's Trainer hands work to its connectors):
  ConfigSources (sources.py)  configs, user code and paths, read and checked once
  HeadLoader (loader.py)      heads in memory: cache, banks, build locks, followers
  Lifecycle (lifecycle.py)    the head list; create, replace, delete, check a head
  TrainingGuard, TrainingRuns (runs.py)  one training per head; runs and new weights
  HeadExamples (examples.py)  a head's stored examples
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable

from ..errors import NotFoundError, as_ph_error
from ..modeling.addins import merged_state
from ..modeling.encoders import encoder_stats
from ..modeling.stacked import answer_many
from ..stores import check_uuid, open_store
from ..stores.example_files import ExampleLimits
from ..stores.fileio import atomic_torch_save
from .addin_heads import addin_spec
from .together import Each, train_together
from .cache import LoadedHead
from .examples import HeadExamples
from .lifecycle import LIST_PAGE, Lifecycle
from .loader import HeadLoader
from .policy import PathPolicy
from .runs import TrainingGuard, TrainingRuns
from .sources import ConfigSources

__all__ = ["HeadRegistry", "LIST_PAGE"]


class HeadRegistry:
    """Creates, serves and trains the heads in one heads folder (or distributed store)."""

    def __init__(self, heads_dir: str | os.PathLike = "heads", policy: PathPolicy | None = None,
                 memory_budget: int | None = None, limits: ExampleLimits | None = None,
                 store: str | None = None):
        self.store = open_store(store, heads_dir)
        self.policy = policy or PathPolicy()
        self.limits = limits or ExampleLimits.from_env()
        self.sources = ConfigSources(self.store, self.policy)
        self.loader = HeadLoader(self.store, self.sources, memory_budget)
        self.guard = TrainingGuard(self.store)
        self.lifecycle = Lifecycle(self.store, self.sources, self.loader, self.guard)
        self.runs = TrainingRuns(self.store, self.policy, self.sources, self.loader, self.guard)
        self.examples = HeadExamples(self.store, self.loader, self.guard, self.limits)
        self.cache = self.loader.cache  # stats, benchmarks and tests look at these
        self.banks = self.loader.banks
        self._follows = self.loader.follows  # bench/children.py counts it

    # --- heads -----------------------------------------------------------------------------
    def create_head_list(self, config: Any = None, python: str | None = None) -> None:
        """Set the default config (and user Python source) for heads created later."""
        self.lifecycle.create_head_list(config, python)

    def create_head(self, uuid: str | None = None, config: Any = None, replace: bool = False,
                    parent: str | None = None, addin: Any = None) -> str:
        """Create a head from the head list's config with `config` merged in; returns its uuid.

        Creating an existing uuid with the same config returns it unchanged (trained
        weights kept); with another config it is a conflict. `replace` starts the head over
        (new weights) whatever its config. With `parent`, the head is a child of that head
        (see `ph.children`): it takes the parent's config (`config` may change Trainer only)
        and answers with the parent's weights until it first trains. With `addin` too
        ("lora", "adapter", "bias" or {type, args}; see ph.modeling.addins) its trainings
        train only a small add-in on a pinned revision of the parent (ph.heads.addin_heads).
        """
        return self.lifecycle.create_head(uuid, config, replace, parent, addin)

    def get_config(self, uuid: str) -> dict:
        return self.lifecycle.get_config(uuid)

    def check_head(self, uuid: str) -> dict:
        """What is known about a head without loading it; `{"uuid", "exists": False}` for
        a head that does not exist, so a walker can branch on it.

        For a child: `parent`; `follows_parent` is the parent's uuid while the child has not
        trained (it answers with the parent's weights and labels, at `parent_revision`).
        `followers` counts the untrained children that answer with this head's weights."""
        return self.lifecycle.check_head(uuid)

    def list_heads(self, offset: int = 0, limit: int = LIST_PAGE, prefix: str = "") -> list[str]:
        """Uuids (starting with `prefix`: a tenant's) in sorted order from position
        `offset`, at most `limit` (a store may hold millions: page through them)."""
        return self.lifecycle.list_heads(offset, limit, prefix)

    def delete_head(self, uuid: str) -> bool:
        return self.lifecycle.delete_head(uuid)

    # --- serving ---------------------------------------------------------------------------
    def loaded(self, uuid: str, _hops: int = 0) -> LoadedHead:
        """The head in memory, (re)loaded if its record on disk changed. For an untrained
        child: its parent's loaded head (the child holds no weights of its own)."""
        return self.loader.loaded(uuid, _hops)

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
        return self.runs.load_weights(uuid, path)

    def list_revisions(self, uuid: str) -> list[dict]:
        return self.runs.revisions(check_uuid(uuid))

    def rollback_head(self, uuid: str, revision: int) -> dict:
        return self.runs.roll_back(check_uuid(uuid), revision)

    # --- training --------------------------------------------------------------------------
    def train(self, uuid: str, config: Any = None, auto_update: bool = True,
              stop: threading.Event | None = None,
              on_epoch: Callable[[dict], None] | None = None, incremental: bool = False,
              rebase: bool = False) -> dict:
        """Train a head on its Trainer config (with `config` merged in); returns a summary.

        With `auto_update` the head switches to the best weights at the end, atomically.
        `incremental` trains from the current weights on the examples added since the
        last run plus a replay sample of older ones.
        """
        record = self.store.read(check_uuid(uuid))
        full = self.training_config(record, config, incremental)
        return self.train_resolved(uuid, full, auto_update, stop, on_epoch, incremental,
                                   rebase=rebase)

    def training_config(self, record: dict, config: Any = None, incremental: bool = False) -> dict:
        """The head's config with the Trainer section of `config` merged in, validated.

        Which data: a train_json named in this call's `config` is used together with the
        stored examples. Without one, a head that has stored examples trains on them only
        (train_json becomes null), and a head without any uses its config's train_json as
        before. An incremental run uses stored examples only. Paths taken from the stored
        config (not named in `config`) must also lie within the record's path limits
        (see ph.paths).
        """
        return self.runs.training_config(record, config, incremental)

    def train_resolved(self, uuid: str, config: dict, auto_update: bool = True,
                       stop: threading.Event | None = None,
                       on_epoch: Callable[[dict], None] | None = None,
                       incremental: bool = False, job_id: str | None = None,
                       rebase: bool = False) -> dict:
        """Train with an already validated config (background jobs start here, with their
        `job_id`: the head is already theirs, so they wait for a probe to let go of its lock)."""
        return self.runs.train_resolved(uuid, config, auto_update, stop, on_epoch, incremental,
                                        job_id, rebase)

    # --- one training per head (see ph.heads.runs) -----------------------------------------
    def training_job(self, uuid: str) -> str | None:
        """The head's background job while it is queued or running, else None."""
        return self.guard.training_job(uuid)

    def check_idle(self, uuid: str, action: str, lock_held: bool = False) -> None:
        """Refuse `action` (ConflictError) while the head is training (call it under the
        head's store lock; see TrainingGuard.check_idle)."""
        self.guard.check_idle(uuid, action, lock_held)

    def accept_job(self, record: dict, job: dict) -> None:
        """Record a background job for the head `record` describes and make it the head's
        training, from now on: refused if the head is training, was deleted or replaced."""
        self.guard.accept_job(record, job)

    # --- stored examples -------------------------------------------------------------------
    def add_examples(self, uuid: str, examples: Any) -> int:
        """Store examples with the head (checked whole first); returns its example count.

        Durable when this returns: the examples are fsynced under the head's lock.
        """
        return self.examples.add(uuid, examples)

    def list_examples(self, uuid: str, offset: int = 0, limit: int = 100) -> list[dict]:
        """Stored examples from position `offset` (at most `limit`), oldest first."""
        return self.examples.list(uuid, offset, limit)

    def delete_examples(self, uuid: str, ids: list | None = None) -> dict:
        """Delete the examples with these ids, or all of them (ids None); they are gone
        from disk when this returns. Weights already trained on them keep what they
        learnt until the head is trained again. Refused while the head is training."""
        return self.examples.delete(uuid, ids)

    # --- add-ins (see ph.heads.addin_heads) -------------------------------------------------
    def addins_behind(self, parent: str) -> list[str]:
        """The trained add-ins on `parent` pinned to an older revision than its current one."""
        current = self.store.read(check_uuid(parent))["revision"]
        behind = []
        for uuid in sorted(self.store.followers(parent)):
            try:
                record = self.store.read(uuid)
            except NotFoundError:
                continue
            if record.get("addin") and record.get("parent") == parent and record.get("weights") \
                    and record.get("parent_revision") != current:
                behind.append(uuid)
        return behind

    def train_together(self, uuids: list[str], incremental: bool = True,
                       rebase: bool = False, each: Each | None = None) -> dict[str, Any]:
        """Train many add-in heads at once, one parent pass per step for all of them (see
        ph.heads.together); uuid -> summary, or the PHError that ended that head's run.
        `each`: per head configs, stop events and epoch callback (a group job's)."""
        return train_together(self.runs, uuids, incremental, rebase, each=each)

    def export_weights(self, uuid: str, weights_file: str) -> dict:
        """Write the head's weights as a plain state dict of its model's architecture (an
        add-in folded into its parent's weights) to `weights_file`, with its labels."""
        record, state = self.store.read_current(check_uuid(uuid))
        if state is None:  # untrained: the weights it answers with
            state = self.loaded(uuid).engine.state_dict()
        elif record.get("addin"):
            spec = addin_spec(record["config"], record["addin"], self.sources.code_of(record))
            state = merged_state(spec, self.store.load_snapshot(record["base"]), state)
        path = self.policy.resolve(weights_file, "weights_file")
        atomic_torch_save({"state_dict": state, "labels": record.get("labels")}, path)
        return {"uuid": uuid, "weights_file": str(path), "revision": record["revision"],
                "parent_revision": record.get("parent_revision")}

    # --- the process -----------------------------------------------------------------------
    def close(self) -> None:
        """Let go of the store's connections and threads (a distributed store's listener)."""
        self.store.close()

    def stats(self) -> dict:
        return {"heads_dir": str(self.store.root), **self.cache.stats(),
                "encoders": encoder_stats()}
