"""Background training jobs: started, reported and stopped here; run elsewhere.

Each job runs in a process of its own, so serving stays responsive and a crash or kill
cannot touch the serving process or the head's current weights. The job's state lives in
the store, so any server can report or stop it. A job owns its head from the moment
start_job returns its id (see HeadRegistry.check_idle). The store hands it to what runs
its jobs (`Store.dispatch_job`: a new process on this machine for the local folder, a
message to the training workers, `ph worker`, for a distributed store); both run
`ph.adapters.job_runner.run_job`.

Whether a job still lives is judged from its record and what its store knows of its
runner (`Store.job_alive`: a local process, or a distributed worker's heartbeat):
`job_status`, which the heads service also uses to refuse changing a head while its job
lives.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import settings
from ..errors import NotFoundError, PHError
from ..stores import check_uuid, new_uuid
from ..stores.base import ACTIVE, Store
from ..stores.job_queue import queue_for

if TYPE_CHECKING:
    from .service import HeadRegistry

FIELDS = ("id", "uuid", "state", "epoch", "epochs", "metrics", "error", "summary", "created",
          "started", "ended")


def start_job(registry: "HeadRegistry", uuid: str, config=None, auto_update: bool = True,
              incremental: bool = False, rebase: bool = False) -> dict:
    """Validate the training config now, then hand the job to the store's runner; returns
    the job id and where it went (`pid` or `queue`).

    The job trains on the head's stored examples as a foreground run would (they are
    read when the job starts training, so examples added until then are included)."""
    store = registry.store
    record = store.read(check_uuid(uuid))
    full = registry.training_config(record, config, incremental)
    policy = registry.policy
    job = {"id": new_uuid(), "uuid": uuid, "state": "queued", "created": time.time(),
           "config": full, "auto_update": bool(auto_update), "incremental": bool(incremental),
           "rebase": bool(rebase), "epoch": 0,
           "epochs": full["Trainer"]["trainer"]["epochs"], "metrics": None, "error": None,
           "summary": None, "pid": None, "attempt": 1,
           "retries": job_retries() if store.can_resend_jobs else 0,
           "queue": queue_for(full),
           "policy": {"roots": (None if policy.allowed_roots is None
                                else [str(r) for r in policy.allowed_roots]),
                      "allow_code": policy.allow_code, "base_dir": str(Path.cwd())}}
    registry.accept_job(record, job)  # 409 if the head is training; from here the job owns it
    try:
        where = store.dispatch_job(job)
    except PHError as exc:  # it says what could not be started or queued
        job.update(state="failed", error=str(exc))
        store.write_job(job)
        raise
    return {"job_id": job["id"], "uuid": uuid, "state": "queued", **where}


def stop_job(registry: "HeadRegistry", job_id: str) -> dict:
    """Ask a job to stop (queued or running); the head keeps its previous weights.

    A flag in the store, not a signal: the job checks it twice a second, so no process
    id (which the system may have reused) is ever signalled."""
    store = registry.store
    job = store.read_job(job_id)
    if job["state"] in ACTIVE:
        store.request_stop(job_id)
        if job["state"] == "queued" and store.withdraw_queued(job_id, job.get("attempt", 1)):
            # no worker took it yet, and now none will: stopped here (a queue no worker
            # reads would otherwise keep it queued, and the head busy, for ever)
            job.update(state="stopped", ended=time.time(),
                       error="stopped before a worker took it; the head keeps its weights")
            store.write_job(job)
    return job_status(store, job_id)


def job_retries() -> int:
    """How often a job whose worker died is sent again ($PH_JOB_RETRIES, default 0)."""
    return settings.value("PH_JOB_RETRIES")


def job_status(store: Store, job_id: str) -> dict:
    """The job's state; a job whose runner died without saying so is recorded failed (or
    sent again, while it has retries left). Both writes hold only if the job is still
    active at the attempt judged: a runner that recorded its end meanwhile wins."""
    job = store.read_job(job_id)
    if job["state"] in ACTIVE and not store.job_alive(job):
        attempt = job.get("attempt", 1)  # written only if still active at it: else the
        if attempt <= job.get("retries", 0):  # job ended, or another probe acted, first
            job.update(state="queued", attempt=attempt + 1, pid=None,
                       error=f"attempt {attempt} lost its worker; sent again")
            if store.write_job(job, expect_attempt=attempt):
                try:
                    store.dispatch_job(job)
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


def is_active(store: Store, job_id: str) -> bool:
    """True while the job is queued or running (a job with no record is not)."""
    try:
        return job_status(store, job_id)["state"] in ACTIVE
    except NotFoundError:
        return False
