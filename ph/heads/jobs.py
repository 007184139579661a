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
from ..errors import BadInputError, NotFoundError, PHError
from ..stores import check_uuid, new_uuid
from .. import logs
from ..stores.base import ACTIVE, Store
from ..stores.job_queue import queue_for

if TYPE_CHECKING:
    from .service import HeadRegistry

FIELDS = ("id", "uuid", "state", "epoch", "epochs", "progress", "metrics", "error", "summary",
          "created", "started", "ended", "request_id")
GROUP_FIELDS = ("uuids", "heads")  # a group job's (start_group_job)


def head_stop_flag(job_id: str, uuid: str) -> str:
    """The stop flag of one head's run in a group job."""
    return f"{job_id}.{uuid}"


def start_job(registry: "HeadRegistry", uuid: str, config=None, auto_update: bool = True,
              incremental: bool = False, rebase: bool = False) -> dict:
    """Validate the training config now, then hand the job to the store's runner; returns
    the job id and where it went (`pid` or `queue`).

    The job trains on the head's stored examples as a foreground run would (they are
    read when the job starts training, so examples added until then are included)."""
    record = registry.store.read(check_uuid(uuid))
    full = registry.training_config(record, config, incremental)
    job = _new_job(registry, uuid, full, auto_update, incremental, rebase)
    registry.accept_job(record, job)  # 409 if the head is training; from here the job owns it
    return _dispatch(registry.store, job)


def start_group_job(registry: "HeadRegistry", uuids: list[str], config=None,
                    incremental: bool = True, rebase: bool = False) -> dict:
    """One background job that trains many add-in heads together (ph.heads.together:
    one parent pass per step for all of them). Each head is accepted as by start_job; a
    head that cannot be (busy, not an add-in, bad config) is left out with its error in
    `refused`. The job reports each head's state, epoch and outcome under `heads`, and
    stop_training(job_id, uuid) stops one head's run alone."""
    job, refused = None, {}
    for uuid in dict.fromkeys(uuids):
        try:
            record = registry.store.read(check_uuid(uuid))
            if not record.get("addin"):
                raise BadInputError(f"head '{uuid}' is not an add-in; train it with train_head")
            full = registry.training_config(record, config, incremental)
            if job is None:
                job = _new_job(registry, uuid, full, True, incremental, rebase)
                job.update(uuids=[], configs={}, heads={})
            job["uuids"].append(uuid)
            job["configs"][uuid] = full
            job["heads"][uuid] = {"state": "queued", "epoch": 0, "metrics": None,
                                  "error": None, "summary": None}
            try:
                registry.accept_job(record, job)
            except PHError:
                job["uuids"].pop()
                del job["configs"][uuid], job["heads"][uuid]
                raise
        except PHError as exc:
            refused[uuid] = exc.to_dict()
    if job is None or not job["uuids"]:
        raise BadInputError("uuids: no head could start training: " + "; ".join(
            f"{u}: {e['message']}" for u, e in refused.items()) if refused else
            "uuids: give a list of add-in heads' uuids")
    job["uuid"] = job["uuids"][0]
    registry.store.write_job(job)
    return {**_dispatch(registry.store, job), "uuids": job["uuids"], "refused": refused}


def _new_job(registry: "HeadRegistry", uuid: str, full: dict, auto_update: bool,
             incremental: bool, rebase: bool) -> dict:
    policy = registry.policy.scoped()  # a tenant's job keeps to the tenant's folders
    return {"id": new_uuid(), "uuid": uuid, "state": "queued", "created": time.time(),
            "request_id": logs.current_request_id(),  # its process logs under the same id
            "config": full, "auto_update": bool(auto_update), "incremental": bool(incremental),
            "rebase": bool(rebase), "epoch": 0,
            "epochs": full["Trainer"]["trainer"]["epochs"], "metrics": None, "error": None,
            "summary": None, "pid": None, "attempt": 1,
            "retries": job_retries() if registry.store.can_resend_jobs else 0,
            "queue": queue_for(full),
            "policy": {"roots": (None if policy.allowed_roots is None
                                 else [str(r) for r in policy.allowed_roots]),
                       "allow_code": policy.allow_code,
                       "base_dir": str(policy.base_dir or Path.cwd())}}


def _dispatch(store: Store, job: dict) -> dict:
    try:
        where = store.dispatch_job(job)
    except PHError as exc:  # it says what could not be started or queued
        job.update(state="failed", error=str(exc))
        store.write_job(job)
        raise
    return {"job_id": job["id"], "uuid": job["uuid"], "state": "queued", **where}


def stop_job(registry: "HeadRegistry", job_id: str, uuid: str | None = None) -> dict:
    """Ask a job to stop (queued or running); the head keeps its previous weights. With
    `uuid`, only that head's run of a group job (start_group_job) stops.

    A flag in the store, not a signal: the job checks it twice a second, so no process
    id (which the system may have reused) is ever signalled."""
    store = registry.store
    job = store.read_job(job_id)
    if uuid is not None:
        if uuid not in job.get("uuids", [job["uuid"]]):
            raise BadInputError(f"uuid: head '{uuid}' is not trained by job {job_id}; its heads "
                                f"are {', '.join(job.get('uuids', [job['uuid']]))}")
        if job.get("uuids"):
            if job["state"] in ACTIVE:
                store.request_stop(head_stop_flag(job_id, uuid))
            return job_status(store, job_id)
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


def job_status(store: Store, job_id: str, log_lines: int = 20) -> dict:
    """The job's state, progress and the last `log_lines` lines of its log; a job whose
    runner died without saying so is recorded failed (or sent again, while it has
    retries left). Both writes hold only if the job is still active at the attempt
    judged: a runner that recorded its end meanwhile wins."""
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
            for head in job.get("heads", {}).values():  # a group job's unfinished heads
                if head["state"] in ACTIVE:
                    head.update(state="failed", error=job["error"])
            store.write_job(job, expect_attempt=attempt)
        job = store.read_job(job_id)
    status = {k: job.get(k) for k in FIELDS + (GROUP_FIELDS if job.get("uuids") else ())}
    status["log"] = (job.get("log") or [])[-log_lines:] if log_lines > 0 else []
    return status


def is_active(store: Store, job_id: str) -> bool:
    """True while the job is queued or running (a job with no record is not)."""
    try:
        return job_status(store, job_id)["state"] in ACTIVE
    except NotFoundError:
        return False
