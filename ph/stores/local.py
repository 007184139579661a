"""LocalStore: the heads folder on disk. Survives restarts; shared by processes.

Layout (every write atomic; a head's writers hold its lock):
    <root>/<uuid>/head.json          config, label map, revision, weights file, runs
    <root>/<uuid>/weights-<rev>.pt   current weights (state dict)
    <root>/<uuid>/examples.jsonl     the head's stored examples (ph.stores.example_files)
    <root>/<uuid>/embeddings/<identity>/<sha>.emb   their embeddings (base.Embeddings)
    <root>/_list.json                the head list: default config for new heads
    <root>/_code/<sha>.py            user Python sources, by content
    <root>/_data/<sha>.jsonl         training data sets heads were trained on, by content
                                     (replayed by incremental runs; shared by a parent
                                     and its children)
    <root>/_jobs/<id>.json           background training jobs (finished ones pruned: JobRetention)
    <root>/_jobs/<uuid>.head         the id of the head's latest job
    <root>/_jobs/<id>.stop           the job was asked to stop
    <root>/_children/<parent>/<uuid> one empty file per untrained child that follows <parent>
    <root>/_locks/                   lock files: a head's writers, its training, a job's
                                     record, the head list
    <root>/_tmp/                     heads being built, replaced or deleted

The store by concern: jobs and training locks (local_jobs), user code and data sets
(local_blobs); here head records, followers, the head list, examples and head locks.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid as uuidlib
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import ConflictError, HeadNotFoundError, StoreUnavailableError, WeightsError
from .base import JobRetention, StoreBase, StoredExamples, check_identity, check_uuid, content_id, \
    weights_named
from .example_files import EMBEDDINGS_DIR, ExampleLog
from .fileio import atomic_torch_save, atomic_write_bytes, atomic_write_json, exchange_paths, \
    file_lock, fsync_dir, load_state
from .local_blobs import LocalBlobs
from .local_jobs import LocalJobs

REPLACED = "replaced-"  # _tmp/replaced-<uuid>: an old head moved aside while it is replaced


class LocalStore(LocalBlobs, LocalJobs, StoreBase):
    """Files of every head under one root folder (the default store: no servers needed).
    The interface and its contracts: base.Store."""

    distributed = False  # for tests that look at files; code above the store never asks

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.job_retention = JobRetention.from_env()
        for sub in ("_children", "_code", "_data", "_jobs", "_locks", "_tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._restore_replaced()
        self._clean_tmp()

    def close(self) -> None:
        """Nothing to let go of: every call opens and closes its own files."""

    def check_ready(self) -> None:
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreUnavailableError(f"the heads folder {self.root} is gone or not writable "
                                        "by this process; check the volume and its permissions")

    def _clean_tmp(self, older_than_s: float = 3600) -> None:
        """Remove what crashed creates and deletes left in _tmp (old enough to be dead)."""
        for entry in (self.root / "_tmp").iterdir():
            if entry.name.startswith(REPLACED):
                continue  # _restore_replaced decides, under the head's lock
            with contextlib.suppress(OSError):
                if time.time() - entry.stat().st_mtime > older_than_s:
                    shutil.rmtree(entry, ignore_errors=True)

    # --- heads -----------------------------------------------------------------------
    def head_dir(self, uuid: str) -> Path:
        return self.root / check_uuid(uuid)

    def record_path(self, uuid: str) -> Path:
        return self.head_dir(uuid) / "head.json"

    def examples(self, uuid: str) -> StoredExamples:
        """The head's stored examples (append and delete under the head's lock)."""
        return ExampleLog(self.head_dir(uuid) / "examples.jsonl")

    def embedding_packs(self, uuid: str, identity: str) -> dict[str, bytes]:
        folder = self.head_dir(uuid) / EMBEDDINGS_DIR / check_identity(identity)
        packs = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(folder):
                if entry.name.endswith(".emb"):
                    with contextlib.suppress(FileNotFoundError):  # merged away meanwhile
                        packs[entry.name] = Path(entry.path).read_bytes()
        return packs

    def save_embedding_pack(self, uuid: str, identity: str, data: bytes,
                            replaces: Iterable[str] = ()) -> None:
        folder = self.head_dir(uuid) / EMBEDDINGS_DIR / check_identity(identity)
        if not self.exists(uuid):  # deleted meanwhile: never make its folder again
            return
        atomic_write_bytes(folder / f"{content_id(data)}.emb", data, durable=False)
        for name in replaces:
            (folder / name).unlink(missing_ok=True)

    def exists(self, uuid: str) -> bool:
        return self.record_path(uuid).is_file()

    def signature(self, uuid: str) -> tuple:
        """Changes whenever the head's record is rewritten (cheap: one stat)."""
        try:
            st = os.stat(self.record_path(uuid))
        except FileNotFoundError:
            raise HeadNotFoundError(f"no head with uuid '{uuid}'; create it with "
                                    "create_head(uuid=...) or list them with list_heads()") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def read(self, uuid: str) -> dict:
        try:
            return json.loads(self.record_path(uuid).read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.signature(uuid)  # raises the not-found error
            raise

    def create(self, uuid: str, record: dict, state: dict | None = None,
               replace: bool = False) -> None:
        """Publish a new head (with starting weights, if any) in one step.

        Fails (ConflictError) if the uuid exists, unless `replace`: then the new head takes
        the old one's place in one switch. Every reader sees the old head whole (record,
        weights, examples) or the new one whole; a crash at any moment leaves one of them
        whole; the old head's files are removed after the switch. Call with the head's lock
        held when replacing.
        """
        final = self.head_dir(uuid)
        tmp = self.root / "_tmp" / f"{uuid}-{uuidlib.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            if state is not None:
                record = {**record, "revision": 1, "weights": "weights-1.pt"}
                atomic_torch_save(state, tmp / "weights-1.pt")
            atomic_write_json(tmp / "head.json", record)
            if replace and final.exists():
                self._switch_in(uuid, tmp)
            else:
                os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if final.exists() and not replace:
                raise ConflictError(f"head '{uuid}' already exists") from None
            raise

    def _switch_in(self, uuid: str, new: Path) -> None:
        """Put the head folder `new` in the place of the existing head `uuid` (see create)."""
        final = self.head_dir(uuid)
        if exchange_paths(new, final):  # `new` now names the old head
            shutil.rmtree(new, ignore_errors=True)
            return
        # No atomic exchange on this file system: move the old head aside under a name
        # that the next LocalStore to open puts back if a crash comes before the new head
        # is in place. Readers may find no head for that moment.
        aside = self.root / "_tmp" / f"{REPLACED}{uuid}"
        shutil.rmtree(aside, ignore_errors=True)  # left by a crash after a switch: stale
        os.rename(final, aside)
        try:
            os.rename(new, final)
        except BaseException:
            os.rename(aside, final)
            raise
        fsync_dir(self.root)
        shutil.rmtree(aside, ignore_errors=True)

    def _restore_replaced(self) -> None:
        """Put back an old head whose replacement crashed before the new one was in place
        (see _switch_in); one whose replacement finished is removed."""
        for aside in (self.root / "_tmp").glob(f"{REPLACED}*"):
            uuid = aside.name[len(REPLACED):]
            with self.lock(uuid), contextlib.suppress(OSError):
                if not self.head_dir(uuid).exists():
                    os.rename(aside, self.head_dir(uuid))
                shutil.rmtree(aside, ignore_errors=True)

    def write(self, uuid: str, record: dict) -> dict:
        """Rewrite head.json atomically (the caller's lock keeps other writers out)."""
        atomic_write_json(self.record_path(uuid), record)
        return record

    def _save_weights(self, uuid: str, record: dict, revision: int, state: dict) -> str:
        """weights-<revision>.pt, written whole before the record names it."""
        name = f"weights-{revision}.pt"
        atomic_torch_save(state, self.head_dir(uuid) / name)
        return name

    def _switch_weights(self, uuid: str, old: dict, new: dict) -> dict:
        self.write(uuid, new)
        for name in weights_named(old) - weights_named(new):
            with contextlib.suppress(FileNotFoundError):
                (self.head_dir(uuid) / name).unlink()
        return new

    def read_current(self, uuid: str) -> tuple[dict, dict | None]:
        """(record, its weights), read together even while a writer switches them: both
        through one open folder, so a replace between the two reads cannot mix two heads."""
        record: dict = {}
        for _ in range(5):
            try:
                folder = os.open(self.head_dir(uuid), os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                self.signature(uuid)  # raises the not-found error
                continue  # replaced just now (the fallback switch has a gap)
            try:
                def in_folder(name: str, flags: int) -> int:
                    return os.open(name, flags, dir_fd=folder)
                with open("head.json", encoding="utf-8", opener=in_folder) as fh:
                    record = json.load(fh)
                if not record.get("weights"):
                    return record, None
                with open(record["weights"], "rb", opener=in_folder) as fh:
                    return record, load_state(fh)
            except FileNotFoundError:
                continue  # switched to newer weights (or replaced) between the reads: again
            finally:
                os.close(folder)
        raise WeightsError(f"head '{uuid}': its weights file {record.get('weights')} is missing "
                           f"from {self.head_dir(uuid)}; load weights again with load_weights")

    def read_weights(self, uuid: str, record: dict) -> dict | None:
        """The head's current state dict, or None for a head that was never trained."""
        if not record.get("weights"):
            return None
        return load_state(self.head_dir(uuid) / record["weights"])

    def delete(self, uuid: str) -> None:
        """Remove a head; it disappears for readers in one rename."""
        src = self.head_dir(uuid)
        trash = self.root / "_tmp" / f"deleted-{uuid}-{uuidlib.uuid4().hex[:8]}"
        try:
            os.rename(src, trash)
        except FileNotFoundError:
            raise HeadNotFoundError(f"no head with uuid '{uuid}' to delete") from None
        shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):  # its followers' folder, if empty
            (self.root / "_children" / uuid).rmdir()

    def list(self, offset: int = 0, limit: int | None = None, prefix: str = "") -> list[str]:
        """Uuids in sorted order, from `offset` (at most `limit`)."""
        names = sorted(e.name for e in os.scandir(self.root)
                       if e.name.startswith(prefix) and not e.name.startswith(("_", ".")))
        page, end = [], None if limit is None else offset + limit
        for name in names[offset:]:  # a page of heads costs a page of checks
            if end is not None and offset + len(page) >= end:
                break
            if (self.root / name / "head.json").is_file():
                page.append(name)
        return page

    @contextlib.contextmanager
    def lock(self, uuid: str) -> Iterator[None]:
        """Serialize writers of one head across threads and processes."""
        with file_lock(self.root / "_locks" / f"{check_uuid(uuid)}.lock"):
            yield

    # --- followers: untrained children of a head ---------------------------------------
    # One empty file per follower, so adding or removing one never rewrites a shared file
    # and nothing on the predict path reads them: only create, delete and check_head do.
    def add_follower(self, parent: str, child: str) -> None:
        folder = self.root / "_children" / check_uuid(parent)
        folder.mkdir(exist_ok=True)
        (folder / check_uuid(child)).touch()

    def remove_follower(self, parent: str, child: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / "_children" / check_uuid(parent) / check_uuid(child)).unlink()

    def follower_count(self, parent: str) -> int:
        return len(self.followers(parent))

    def followers(self, parent: str) -> list[str]:
        """Uuids of the untrained children that follow `parent`, as recorded."""
        try:
            return sorted(e.name for e in os.scandir(self.root / "_children" / check_uuid(parent))
                          if not e.name.startswith("."))
        except FileNotFoundError:
            return []

    # --- the head list -------------------------------------------------------------------
    def write_head_list(self, record: dict) -> None:
        with file_lock(self.root / "_locks" / "_list.lock"):
            atomic_write_json(self.root / "_list.json", record)

    def read_head_list(self) -> dict | None:
        try:
            return json.loads((self.root / "_list.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def head_list_signature(self) -> tuple | None:
        try:
            st = os.stat(self.root / "_list.json")
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)
