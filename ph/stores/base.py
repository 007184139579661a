"""The store interface and what every store shares.

The interface is one Protocol per concern (records, blobs, examples, locks, jobs) and
`Store`, which combines them: what the heads service, the job code and the adapters may
call, whichever backend is behind it. Each method's docstring is its contract; a
backend that cannot give a guarantee as such says so there.
tests/stores/test_store_interface.py checks that every backend has every method with the
same signature.

Shared by the backends: uuid rules (a uuid is a folder name or a key part, so it must
never be able to name anything outside its head), content ids, how long job records are
kept, an example log's bookkeeping, and `StoreBase` (the weights bookkeeping and the
sorted multi-head lock, written once).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import re
import time
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, runtime_checkable

import torch

from .. import settings
from ..errors import BadInputError, NotFoundError, WeightsError

RUNS_KEPT = 20  # training runs remembered in a head's record
ACTIVE = ("queued", "running")  # a job in these states owns its head

UUID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_uuid(uuid: Any) -> str:
    """The uuid if it is safe as a folder name (it can never name a path outside the store)."""
    if not isinstance(uuid, str) or not UUID_PATTERN.fullmatch(uuid) or ".." in uuid:
        shown = repr(uuid) if not isinstance(uuid, str) or len(uuid) <= 40 else repr(uuid[:40] + "...")
        raise BadInputError(f"uuid {shown} is not valid: use 1 to 128 letters, digits, '_', '-' "
                            "or '.', starting with a letter or digit (or omit it to get a new uuid4)")
    return uuid


IDENTITY_PATTERN = re.compile(r"^[0-9a-f]{8,64}$")


def check_identity(identity: str) -> str:
    """An encoder identity (a hex digest: ph.modeling.onnx_encoder.export_key) used as a
    folder name; anything else is a bug, refused before it names a path."""
    if not isinstance(identity, str) or not IDENTITY_PATTERN.fullmatch(identity):
        raise ValueError(f"not an encoder identity: {identity!r}")
    return identity


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def content_id(data: bytes) -> str:
    """The name stored content goes by (user code, configs, data sets): the same bytes,
    one name."""
    return hashlib.sha256(data).hexdigest()[:32]


def dataset_bytes(rows: list[dict]) -> bytes:
    """A training data set (rows of {text | input_ids | embedding, label}) in the one
    canonical form both stores keep, so the same data always gets the same content id."""
    return b"".join(json.dumps(row, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
                    for row in rows)


def snapshot_bytes(state: dict) -> bytes:
    """A state dict as torch.save writes it (the same tensors give the same bytes)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().to("cpu") for k, v in state.items()}, buffer)
    return buffer.getvalue()


def snapshot_state(data: bytes, digest: str) -> dict:
    """The state dict in snapshot bytes, checked against its id."""
    if content_id(data) != digest:
        raise WeightsError(f"parent snapshot {digest} is missing or damaged in the store; train "
                           "the add-in again against its parent's current weights "
                           "(rebase_addins)")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def dataset_rows(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines() if line]


@dataclass(frozen=True)
class JobRetention:
    """How many records of finished jobs (succeeded, failed, stopped) a store keeps, and
    for how long; a queued or running job's record is always kept."""

    kept: int = 1000
    max_age_s: int = 7 * 24 * 3600

    @classmethod
    def from_env(cls) -> "JobRetention":
        """From PH_JOB_RECORDS_KEPT and PH_JOB_RECORDS_MAX_AGE_S (defaults where unset).

        Raises:
            ConfigError: a value is not a whole number >= 1, naming the variable.
        """
        return cls(settings.value("PH_JOB_RECORDS_KEPT"),
                   settings.value("PH_JOB_RECORDS_MAX_AGE_S"))



# --- an example log's bookkeeping (ExampleLog and ObjectExampleLog) ---------------------------

@dataclass
class LogSummary:
    """What the registry needs to check a new call against what is stored, without
    reading every example again: count, last id, and the kind of labels seen."""

    count: int = 0
    last_id: int = 0
    label_kind: str | None = None  # "index", "name" or "vector"
    names: set = field(default_factory=set)
    vector_len: int | None = None
    size: int = 0  # bytes of whole lines this summary covers (ExampleLog)
    generation: str = ""  # the file header's: tells files apart across rewrites (ExampleLog)

    def add(self, row: dict) -> None:
        self.count += 1
        self.last_id = max(self.last_id, row["id"])
        label = row["label"]
        self.label_kind = self.label_kind or label_kind(label)
        if isinstance(label, str):
            self.names.add(label)
        elif isinstance(label, list):
            self.vector_len = len(label)


def label_kind(label: Any) -> str | None:
    """'index', 'name' or 'vector' (None: not a label)."""
    if isinstance(label, bool):
        return None
    if isinstance(label, int):
        return "index"
    if isinstance(label, str):
        return "name"
    if isinstance(label, list) and label and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in label):
        return "vector"
    return None


def json_line(obj: dict) -> bytes:
    """One stored example (or log line) as both logs write it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def numbered(summary: LogSummary, rows: list[dict]) -> tuple[list[dict], LogSummary]:
    """An append after `summary`: the rows as stored (the next ids, one `added` time) and
    the summary once they are."""
    after = replace(summary, names=set(summary.names))
    stored, now = [], round(time.time(), 3)
    for row in rows:
        stored.append({"id": after.last_id + 1, **row, "added": now})
        after.add(stored[-1])
    return stored, after


def page(rows: Iterable[dict], offset: int = 0, limit: int | None = None) -> list[dict]:
    """StoredExamples.read over its iter(): at most `limit` rows from position `offset`
    (reading no further than that)."""
    return list(itertools.islice(rows, offset, None if limit is None else offset + limit))


def without(summary: LogSummary, rows: Iterable[dict],
            ids: set[int] | None) -> tuple[list[dict], LogSummary]:
    """A delete of `ids` (all when None) from the log `summary` describes: the rows kept
    and their summary. `rows` is read only when some are kept; the last id stays, since
    ids are never reused. `summary.count - kept.count` were removed."""
    kept = [] if ids is None else [row for row in rows if row["id"] not in ids]
    after = LogSummary(last_id=summary.last_id)
    for row in kept:
        after.add(row)
    after.last_id = summary.last_id
    return kept, after


# --- the interface -------------------------------------------------------------------------------

@runtime_checkable
class StoredExamples(Protocol):
    """One head's stored examples (`Store.examples(uuid)`): an append-only log whose ids
    grow by one per example and are never reused, even after deletes. Writers (append,
    delete) hold the head's lock."""

    def summary(self) -> LogSummary:
        """Count, last id and label kinds of what is stored, without the rows.

        Raises:
            StoreUnavailableError: the store cannot be reached.
        """
        ...

    def iter(self) -> Iterator[dict]:
        """The rows in id order, each `{"id", ...the row given..., "added"}`; a row is
        never given twice, even if a delete rewrites the log while it is read.

        Raises:
            ConflictError: the log was rewritten too often while being read.
            StoreUnavailableError: the store cannot be reached.
        """
        ...

    def read(self, offset: int = 0, limit: int | None = None) -> list[dict]:
        """At most `limit` rows (all when None) from position `offset`, in id order."""
        ...

    def append(self, rows: list[dict]) -> LogSummary:
        """Store `rows` with the next ids, all or none, durably when it returns; returns
        the summary after them.

        Raises:
            ConflictError: another writer changed the log meanwhile (its lock ran out):
                nothing was stored.
            StoreUnavailableError: the store cannot be reached: nothing was stored.
        """
        ...

    def delete(self, ids: set[int] | None = None) -> int:
        """Remove the rows with these ids (all when None) from storage, not merely from
        view, in one switch; returns how many went (0: nothing changed).

        Raises:
            ConflictError: another writer changed the log meanwhile: nothing was deleted.
            StoreUnavailableError: the store cannot be reached: nothing was deleted.
        """
        ...


@runtime_checkable
class Records(Protocol):
    """Head records and their weights, followers and the head list.

    A record is a dict: the caller's fields (uuid, config, labels, revision...) plus the
    store's own bookkeeping, which callers pass back unchanged (RedisStore: inc, v, w).
    Every method raises BadInputError for an unsafe uuid (check_uuid) and, on a store
    with servers, StoreUnavailableError while they cannot be reached (nothing changed).
    """

    def exists(self, uuid: str) -> bool:
        """Whether the head exists now."""
        ...

    def signature(self, uuid: str) -> tuple:
        """A value that changes whenever the head's record is rewritten (create, write,
        write_weights, replace); cheap enough for every predict.

        Raises:
            NotFoundError: no such head.
        """
        ...

    def read(self, uuid: str) -> dict:
        """The head's record, with its config.

        Raises:
            NotFoundError: no such head.
        """
        ...

    def create(self, uuid: str, record: dict, state: dict | None = None,
               replace: bool = False) -> None:
        """Publish a new head (with starting weights `state` at revision 1, if given) in
        one step: readers see no head or the whole new one.

        With `replace` the new head takes an existing one's place in one switch (call with
        the head's lock held): readers see the old head whole (record, weights, examples)
        or the new one whole, and the old one's weights and examples are removed after.

        Raises:
            ConflictError: the uuid exists and not `replace` (the existing head is kept,
                nothing of the new one is left behind).
        """
        ...

    def write(self, uuid: str, record: dict) -> dict:
        """Rewrite the head's record (not its weights); returns the record as stored, to
        pass to the next write. Call with the head's lock held, `record` read under it.

        Raises:
            ConflictError: the record changed since `record` was read (a store that can
                tell: RedisStore; the local folder relies on the lock).
            NotFoundError: the head was deleted meanwhile (RedisStore).
        """
        ...

    def write_weights(self, uuid: str, record: dict, state: dict, labels: list | None,
                      run: dict | None = None) -> dict:
        """Store new weights and switch the record to them in one step: the next
        revision, `labels`, `updated` now, and `run` appended to `runs` (the last
        RUNS_KEPT kept). The revision it replaces joins the record's `history` (the last
        PH_WEIGHT_HISTORY - 1 kept, for roll_back). Returns the new record. Readers see
        the old weights or the new ones, never a record naming weights not yet stored;
        weights no longer named are removed after the switch. Call with the head's lock
        held, `record` read under it.

        Raises:
            ConflictError: the record changed since it was read, or (RedisStore) the
                training run writing it lost its lease; nothing was published and the
                new weights are removed again.
            NotFoundError: the head was deleted meanwhile.
        """
        ...

    def roll_back(self, uuid: str, record: dict, revision: int) -> dict:
        """Switch the record, in one step as write_weights does, to the weights of an
        earlier `revision` kept in its `history`; they are published as the next revision
        (`rolled_back_to` says which), and the weights they replace join the history, so
        a roll-back can itself be undone. Call with the head's lock held.

        Raises:
            NotFoundError: no such revision is kept (the message lists those that are).
            WeightsError: its weights are gone from the store.
            ConflictError, NotFoundError: as write_weights.
        """
        ...

    def read_current(self, uuid: str) -> tuple[dict, dict | None]:
        """(record, its weights or None if untrained), the two from the same revision
        even while a writer switches them.

        Raises:
            NotFoundError: no such head.
            WeightsError: the weights the record names are missing from the store.
        """
        ...

    def read_weights(self, uuid: str, record: dict) -> dict | None:
        """The weights (a state dict) `record` names, or None for an untrained head.

        Raises:
            FileNotFoundError: they are gone: the head has newer weights than `record`
                (read the record again).
        """
        ...

    def delete(self, uuid: str) -> None:
        """Remove the head, its weights and examples; readers stop seeing it in one step.

        Raises:
            NotFoundError: no such head.
        """
        ...

    def list(self, offset: int = 0, limit: int | None = None, prefix: str = "") -> list[str]:
        """Uuids (those starting with `prefix`: a tenant's) in sorted order from position
        `offset` among them, at most `limit` (all if None)."""
        ...

    def add_follower(self, parent: str, child: str) -> None:
        """Record that the untrained `child` follows `parent` (idempotent)."""
        ...

    def remove_follower(self, parent: str, child: str) -> None:
        """Forget that `child` follows `parent` (nothing if it did not)."""
        ...

    def follower_count(self, parent: str) -> int:
        """How many followers `parent` has, as recorded."""
        ...

    def followers(self, parent: str) -> list[str]:
        """The uuids recorded as following `parent`, sorted (some may be stale: a crash
        between recording one and creating it; callers check the child's record)."""
        ...

    def write_head_list(self, record: dict) -> None:
        """Replace the head list (the default config of new heads) in one step."""
        ...

    def read_head_list(self) -> dict | None:
        """The head list, or None if none was written."""
        ...


@runtime_checkable
class Blobs(Protocol):
    """Immutable content stored once by its content id (content_id): user Python sources
    and training data sets. Saving the same content again is cheap and harmless."""

    def save_code(self, source: str) -> str:
        """Store a user source; returns its content id."""
        ...

    def load_code(self, digest: str) -> str:
        """The source stored under `digest`.

        Raises:
            WeightsError: it is missing or does not match its digest (create the head
                list, or head, again with its source).
        """
        ...

    def save_dataset(self, rows: list[dict]) -> str:
        """Store a training data set (in dataset_bytes's canonical form); returns its id."""
        ...

    def load_dataset(self, digest: str) -> list[dict]:
        """The rows of the data set stored under `digest`.

        Raises:
            FileNotFoundError: it is gone (callers replay what is left, with a warning).
        """
        ...

    def save_snapshot(self, state: dict) -> str:
        """Store a parent's weights by content (the revision add-ins were trained on, kept
        while the parent moves on); returns its id. Stored once however many add-ins."""
        ...

    def load_snapshot(self, digest: str) -> dict:
        """The weights stored under `digest` (loaded without unpickling objects).

        Raises:
            WeightsError: they are missing or do not match their id.
        """
        ...


@runtime_checkable
class Examples(Protocol):
    """Where a head's examples are kept."""

    def examples(self, uuid: str) -> StoredExamples:
        """The head's stored examples. The head must exist (callers check first); a
        store that reads the head to find its log raises NotFoundError if it does not."""
        ...


@runtime_checkable
class Embeddings(Protocol):
    """A head's stored examples' embeddings, as packs of bytes per encoder identity
    (ph.heads.stored_embeddings reads and writes them): derived from the examples, kept
    with the head so that a training on any machine finds them. Deleting any of the
    head's examples drops them all (they are encoded again on the next training), and
    they go with the head."""

    def embedding_packs(self, uuid: str, identity: str) -> dict[str, bytes]:
        """{pack name: bytes} of the head's packs for this encoder ({} if none)."""
        ...

    def save_embedding_pack(self, uuid: str, identity: str, data: bytes,
                            replaces: Iterable[str] = ()) -> None:
        """Store one more pack, then remove the packs named in `replaces` (a merge)."""
        ...


@runtime_checkable
class Locks(Protocol):
    """Mutual exclusion across threads, processes and (RedisStore) machines."""

    @contextlib.contextmanager
    def lock(self, uuid: str) -> Iterator[None]:
        """Held by a head's writers for the block (a short critical section). A holder
        that dies frees it: the local folder's with its process, RedisStore's when its
        lease (renewed while held) runs out.

        Raises:
            ConflictError: (RedisStore) another holder kept it for LOCK_WAIT_S.
        """
        yield

    @contextlib.contextmanager
    def locks(self, *uuids: str) -> Iterator[None]:
        """Several heads' locks, always taken in sorted order (two callers never wait on
        each other)."""
        yield

    @contextlib.contextmanager
    def training(self, uuid: str, wait_s: float = 0.2) -> Iterator[None]:
        """Held while a head trains: one training per head everywhere. RedisStore's is a
        lease that fences the run's write_weights: a run that lost it cannot publish.

        Raises:
            ConflictError: the head is already training (after waiting `wait_s`).
        """
        yield

    def is_training(self, uuid: str) -> bool:
        """Whether some run holds the head's training lock now."""
        ...


@runtime_checkable
class Jobs(Protocol):
    """Background training jobs: records (dicts with id, uuid, state, attempt...) any
    server can read, stop flags, and how a job reaches whatever runs it."""

    can_resend_jobs: bool
    """Whether a job whose worker died can be sent again (dispatch_job once more): True
    for a queue any worker reads; a local job's process is started once."""

    def write_job(self, job: dict, expect_attempt: int | None = None) -> bool:
        """Write a job's record in one step. With `expect_attempt`, only while the stored
        job is still queued or running at that attempt (whoever decided otherwise first
        wins). Returns whether it wrote. Finished records are forgotten after
        JobRetention (age; the local folder also keeps at most `kept` of them)."""
        ...

    def read_job(self, job_id: str) -> dict:
        """The job's record.

        Raises:
            NotFoundError: no such job (or it was forgotten), saying how long they are kept.
        """
        ...

    def latest_job(self, uuid: str) -> str | None:
        """The id of the last job accepted for the head, if any."""
        ...

    def set_latest_job(self, uuid: str, job_id: str) -> None:
        """Point the head at its newest job (call with the head's lock held)."""
        ...

    def request_stop(self, job_id: str) -> None:
        """Ask the job to stop: a flag its runner checks, never a signal."""
        ...

    def stop_requested(self, job_id: str) -> bool:
        """Whether the job was asked to stop."""
        ...

    def clear_stop(self, job_id: str) -> None:
        """Forget the stop flag (nothing if there is none)."""
        ...

    def dispatch_job(self, job: dict) -> dict:
        """Hand a recorded, queued job to what runs this store's jobs: a process of its
        own on this machine (LocalStore), or the training workers' queue (RedisStore).
        Returns where it went: {"pid": ...} or {"queue": ...}.

        Raises:
            TrainingError: the local process could not be started.
            StoreUnavailableError: the queue cannot be reached.
        """
        ...

    def withdraw_queued(self, job_id: str, attempt: int) -> bool:
        """Take back a queued attempt before anything runs it; True if withdrawn (then
        nothing will run it). False where the attempt is already on its way: a local
        job's process was started for it and reads the stop flag."""
        ...

    def claim_job(self, job_id: str, attempt: int) -> bool:
        """True for the one runner that takes this attempt (a message sent twice runs
        once; an attempt withdrawn is never taken)."""
        ...

    def beat(self, job_id: str) -> None:
        """The job's runner is alive (called while it runs)."""
        ...

    def job_alive(self, job: dict) -> bool:
        """Whether the job's runner lives: a local process (by its process id, or at
        once for one this process started), or a worker that keeps beating. A queued job
        is alive while it waits to start (a local one for JOB_STARTUP_GRACE_S)."""
        ...


@runtime_checkable
class Store(Records, Blobs, Examples, Embeddings, Locks, Jobs, Protocol):
    """Where heads live: every concern, and the store's own life."""

    root: Path
    """This machine's folder: the heads (LocalStore) or its cache of objects (RedisStore)."""

    def check_ready(self) -> None:
        """Raise StoreUnavailableError, saying what is wrong, if the store cannot serve
        now (a server's readiness: /readyz). Cheap enough for a probe every few seconds."""
        ...

    def start_background_tasks(self) -> None:
        """Start what a long-running process (`ph serve`, `ph worker`) runs for the store
        until close(): RedisStore's sweeper; nothing for the local folder. Library users
        need not call it."""
        ...

    def close(self) -> None:
        """Let go of connections and threads (idempotent)."""
        ...


# --- what the backends share -------------------------------------------------------------------

# What a published revision is: its weights and what they were trained on (an add-in's
# parent snapshot too), restored together by a roll-back.
REVISION_FIELDS = ("revision", "weights", "labels", "updated", "examples_seen", "trained_on",
                   "base", "parent_revision")


def _pushed(record: dict, history: list[dict]) -> list[dict]:
    """`history` with `record`'s current revision added (if it has weights), the oldest
    dropped beyond PH_WEIGHT_HISTORY - 1 entries."""
    if record.get("weights"):
        history = history + [{k: record[k] for k in REVISION_FIELDS if k in record}]
    keep = settings.value("PH_WEIGHT_HISTORY") - 1
    return history[-keep:] if keep > 0 else []


def weights_named(record: dict) -> set[str]:
    """Every weights file or object a record names: its current ones and its history's."""
    names = {entry["weights"] for entry in record.get("history", [])}  # (kept for roll_back)
    return names | ({record["weights"]} if record.get("weights") else set())

class StoreBase:
    """The bookkeeping every backend does alike. A backend gives the two steps of a
    weights write: `_save_weights` (store them under a new name) and `_switch_weights`
    (point the record at them, then let go of the old ones)."""

    can_resend_jobs = False

    def write_weights(self, uuid: str, record: dict, state: dict, labels: list | None,
                      run: dict | None = None) -> dict:
        """See Records.write_weights."""
        revision = record["revision"] + 1
        name = self._save_weights(uuid, record, revision, state)
        new = {**record, "revision": revision, "weights": name, "labels": labels,
               "updated": time.time(), "history": _pushed(record, record.get("history", []))}
        new.pop("rolled_back_to", None)
        if run is not None:
            new["runs"] = (record.get("runs", []) + [run])[-RUNS_KEPT:]
        return self._switch_weights(uuid, record, new)

    def roll_back(self, uuid: str, record: dict, revision: int) -> dict:
        """See Records.roll_back."""
        history = record.get("history", [])
        kept = [entry for entry in history if entry["revision"] == revision]
        if not kept:
            revisions = ", ".join(str(e["revision"]) for e in history) or "none"
            raise NotFoundError(f"head '{uuid}' keeps no revision {revision} to roll back to "
                                f"(kept: {revisions}; current: {record['revision']}); "
                                "list_revisions lists them")
        try:  # its weights must still load
            self.read_weights(uuid, {**record, "weights": kept[0]["weights"]})  # type: ignore
        except FileNotFoundError:
            raise WeightsError(f"head '{uuid}': the weights of revision {revision} are gone "
                               "from the store; roll back to another (list_revisions)") from None
        new = {**record, **{k: v for k, v in kept[0].items() if k != "revision"},
               "revision": record["revision"] + 1, "updated": time.time(),
               "rolled_back_to": revision,
               "history": _pushed(record, [e for e in history if e is not kept[0]])}
        return self._switch_weights(uuid, record, new)

    def _save_weights(self, uuid: str, record: dict, revision: int, state: dict) -> str:
        """Store `state` as `revision`'s weights, where no reader looks yet; their name."""
        raise NotImplementedError

    def _switch_weights(self, uuid: str, old: dict, new: dict) -> dict:
        """Switch the record from `old` to `new` (which names the saved weights), remove
        `old`'s weights; the record as stored. A refused switch removes `new`'s weights."""
        raise NotImplementedError

    @contextlib.contextmanager
    def locks(self, *uuids: str) -> Iterator[None]:
        """See Locks.locks."""
        with contextlib.ExitStack() as stack:
            for uuid in sorted(set(uuids)):
                stack.enter_context(self.lock(uuid))  # type: ignore[attr-defined]
            yield

    def start_background_tasks(self) -> None:
        """See Store.start_background_tasks: nothing, unless a backend has some."""
