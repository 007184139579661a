"""LocalStore's background jobs (base.Jobs) and training locks: job records, each head's
latest job and stop flags as files under the heads folder, a flock per head that trains
(the layout: ph.stores.local). Each job runs in a process of its own on this machine
(job_processes).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Iterator

from ..errors import ConflictError, NotFoundError
from . import job_processes
from .base import ACTIVE, JobRetention, check_uuid
from .fileio import atomic_write_bytes, atomic_write_json, file_lock


class LocalJobs:
    """base.Jobs, and the training lock of base.Locks, for LocalStore, which gives `root`
    (the heads folder) and `job_retention`."""

    root: Path
    job_retention: JobRetention

    def job_path(self, job_id: str) -> Path:
        return self.root / "_jobs" / f"{check_uuid(job_id)}.json"

    def write_job(self, job: dict, expect_attempt: int | None = None) -> bool:
        """Write a job's record; writing a finished one prunes old finished records.

        With `expect_attempt`, only while the stored job is still queued or running at
        that attempt (whoever decided otherwise first wins); returns whether it wrote."""
        with file_lock(self.root / "_locks" / f"job-{check_uuid(job['id'])}.lock"):
            if expect_attempt is not None:
                try:
                    current = self.read_job(job["id"])
                except NotFoundError:
                    return False
                if current["state"] not in ACTIVE or current.get("attempt", 1) != expect_attempt:
                    return False
            atomic_write_json(self.job_path(job["id"]), job)
        if job.get("state") not in ACTIVE:
            self._prune_jobs()
        return True

    def _prune_jobs(self) -> None:
        """Remove the records of finished jobs beyond the newest `job_retention.kept`
        records or older than `job_retention.max_age_s`, by when each was last written (a
        finished record is not written again). A queued or running job's record stays,
        whatever its age. Costs a stat per record, and a read per record past the limits."""
        records = []
        with os.scandir(self.root / "_jobs") as entries:
            for entry in entries:
                if entry.name.endswith(".json"):
                    with contextlib.suppress(FileNotFoundError):
                        records.append((entry.stat().st_mtime, Path(entry.path)))
        records.sort(reverse=True)
        oldest_kept = time.time() - self.job_retention.max_age_s
        for position, (written, path) in enumerate(records):
            if position < self.job_retention.kept and written >= oldest_kept:
                continue
            try:
                if json.loads(path.read_text(encoding="utf-8")).get("state") in ACTIVE:
                    continue
            except (OSError, ValueError):
                continue
            path.unlink(missing_ok=True)
            path.with_suffix(".stop").unlink(missing_ok=True)

    def read_job(self, job_id: str) -> dict:
        job_processes.reap()  # this process's ended job processes: no zombies left
        try:
            return json.loads(self.job_path(job_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            hours = self.job_retention.max_age_s / 3600
            raise NotFoundError(f"no training job '{job_id}'; train_head(..., background=True) "
                                "returns the job id. Finished jobs are forgotten after "
                                f"{hours:g} hour{'' if hours == 1 else 's'}, and beyond the "
                                f"newest {self.job_retention.kept} (PH_JOB_RECORDS_MAX_AGE_S, "
                                "PH_JOB_RECORDS_KEPT)") from None

    def latest_job(self, uuid: str) -> str | None:
        """The id of the last background job accepted for the head, if any."""
        try:
            return self._job_pointer(uuid).read_text(encoding="utf-8") or None
        except FileNotFoundError:
            return None

    def set_latest_job(self, uuid: str, job_id: str) -> None:
        """Point the head at its newest job (call with the head's lock held)."""
        atomic_write_bytes(self._job_pointer(uuid), check_uuid(job_id).encode("utf-8"))

    def _job_pointer(self, uuid: str) -> Path:
        return self.root / "_jobs" / f"{check_uuid(uuid)}.head"

    def request_stop(self, job_id: str) -> None:
        """Ask the job to stop: a flag file, not a signal, so no process id (which the
        system may have reused) is ever signalled."""
        self.job_path(job_id).with_suffix(".stop").touch()

    def stop_requested(self, job_id: str) -> bool:
        return self.job_path(job_id).with_suffix(".stop").exists()

    def clear_stop(self, job_id: str) -> None:
        self.job_path(job_id).with_suffix(".stop").unlink(missing_ok=True)

    def dispatch_job(self, job: dict) -> dict:
        """A process of its own on this machine (job_processes); {"pid": its id}."""
        return {"pid": job_processes.start(self.root, job)}

    def withdraw_queued(self, job_id: str, attempt: int) -> bool:
        """False: the job's process was started for it; it reads the stop flag at its start."""
        return False

    def claim_job(self, job_id: str, attempt: int) -> bool:
        """Always True: a local job has exactly one process, started for it."""
        return True

    def beat(self, job_id: str) -> None:
        """Nothing to do: a local job is alive while its process is (see job_alive)."""

    def job_alive(self, job: dict) -> bool:
        """Whether the job's process lives (job_processes.alive)."""
        return job_processes.alive(job)

    @contextlib.contextmanager
    def training(self, uuid: str, wait_s: float = 0.2) -> Iterator[None]:
        """Held while a head trains: one training per head, across threads and processes.

        Waits up to `wait_s` for it: a status probe or a refused caller holds it for a moment.
        """
        fd = os.open(self._train_lock(uuid), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ConflictError(f"head '{uuid}' is already training; wait for that run "
                                            "to finish (train_status) and try again") from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)

    def is_training(self, uuid: str) -> bool:
        fd = os.open(self._train_lock(uuid), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def _train_lock(self, uuid: str) -> Path:
        return self.root / "_locks" / f"{check_uuid(uuid)}.train"
