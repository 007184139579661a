"""Whether a background training job is still alive, from its record and its process.

Below the registry (which refuses to change a head while its job lives) and below
`ph.jobs` (which starts and reports jobs), so neither has to import the other.
"""
from __future__ import annotations

import os
import subprocess
import time

from .errors import NotFoundError


ACTIVE = ("queued", "running")
STARTUP_GRACE_S = 120  # a job that has not reported its process after this is dead
FIELDS = ("id", "uuid", "state", "epoch", "epochs", "metrics", "error", "summary", "created",
          "started", "ended")
children: dict[str, subprocess.Popen] = {}  # job processes this process started


def job_status(store, job_id: str) -> dict:
    """The job's state; a job whose process died without saying so is recorded failed."""
    job = store.read_job(job_id)
    proc = children.get(job_id)
    if proc is not None and proc.poll() is not None:
        children.pop(job_id, None)
        job = store.read_job(job_id)
    pid = job.get("pid") or (proc.pid if proc is not None else None)
    if job["state"] in ACTIVE and not _alive(pid, proc, job):
        job = store.read_job(job_id)  # it may have finished just now
        if job["state"] in ACTIVE:
            job.update(state="failed", ended=time.time(),
                       error="the training process ended without finishing (killed or crashed); "
                             "the head keeps its previous weights")
            store.write_job(job)
    return {k: job.get(k) for k in FIELDS}


def is_active(store, job_id: str) -> bool:
    """True while the job is queued or running (a job with no record is not)."""
    try:
        return job_status(store, job_id)["state"] in ACTIVE
    except NotFoundError:
        return False


def reap() -> None:
    """Forget (and reap) the job processes of this process that have ended."""
    for job_id, proc in list(children.items()):
        if proc.poll() is not None:
            children.pop(job_id, None)


def _alive(pid: int | None, proc: subprocess.Popen | None, job: dict) -> bool:
    if proc is not None:
        return proc.poll() is None
    if not pid:  # queued: give the process time to start and write its pid
        return time.time() - job.get("created", 0) < STARTUP_GRACE_S
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
