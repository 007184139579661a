"""Whether a background training job is still alive, from its record and what its store
knows of its process (a local process id, or a distributed worker's heartbeat).

Below the registry (which refuses to change a head while its job lives) and below
`ph.jobs` (which starts and reports jobs), so neither has to import the other.
"""
from __future__ import annotations

import subprocess
import time

from .errors import NotFoundError, PHError


ACTIVE = ("queued", "running")
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
    if job["state"] in ACTIVE and not store.job_alive(job, proc):
        attempt = job.get("attempt", 1)  # written only if still active at it: else the
        if attempt <= job.get("retries", 0):  # job ended, or another probe acted, first
            job.update(state="queued", attempt=attempt + 1, pid=None,
                       error=f"attempt {attempt} lost its worker; sent again")
            if store.write_job(job, expect_attempt=attempt):
                try:
                    store.enqueue(job)
                except PHError as exc:
                    job.update(state="failed", ended=time.time(),
                               error=f"its worker died and sending it again failed: {exc}")
                    store.write_job(job)
        else:
            job.update(state="failed", ended=time.time(),
                       error="the training process ended without finishing (killed or crashed); "
                             "the head keeps its previous weights")
            store.write_job(job, expect_attempt=attempt)
        job = store.read_job(job_id)
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
