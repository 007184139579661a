"""Background training: each job runs in its own process, so serving stays responsive
and a crash or kill cannot touch the serving process or the head's current weights.

The job's state lives in the store, so any server can report or stop it. A job owns its
head from the moment start_job returns its id (see HeadRegistry.check_idle). With the
local store the job is a new process on this machine (`python -m ph.jobs HEADS_DIR
JOB_ID`); with a distributed store it is a message to the training workers (`ph
worker`), which run `run_job` in theirs.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import jobstate
from .errors import PHError, TrainingError
from .jobstate import ACTIVE
from .paths import PathPolicy
from .registry import HeadRegistry
from .stores import check_uuid, new_uuid, open_store
from .stores.base import env_int
from .stores.job_queue import queue_for
from .training import TrainingStopped

log = logging.getLogger("ph.jobs")
JOB_NICENESS = 10  # training jobs yield the CPU to serving


def start_job(registry: HeadRegistry, uuid: str, config=None, auto_update: bool = True,
              incremental: bool = False) -> dict:
    """Validate the training config now, then train in a new process; returns the job id.

    The job trains on the head's stored examples as a foreground run would (they are
    read when the job starts training, so examples added until then are included)."""
    record = registry.store.read(check_uuid(uuid))
    full = registry.training_config(record, config, incremental)
    policy = registry.policy
    job = {"id": new_uuid(), "uuid": uuid, "state": "queued", "created": time.time(),
           "config": full, "auto_update": bool(auto_update), "incremental": bool(incremental),
           "epoch": 0,
           "epochs": full["Trainer"]["trainer"]["epochs"], "metrics": None, "error": None,
           "summary": None, "pid": None, "attempt": 1,
           # only a queue can send a job again; a local job's process is started once
           "retries": job_retries() if registry.store.distributed else 0,
           "queue": queue_for(full),
           "policy": {"roots": (None if policy.allowed_roots is None
                                else [str(r) for r in policy.allowed_roots]),
                      "allow_code": policy.allow_code, "base_dir": str(Path.cwd())}}
    registry.accept_job(record, job)  # 409 if the head is training; from here the job owns it
    if registry.store.distributed:
        try:
            registry.store.enqueue(job)
        except PHError as exc:
            job.update(state="failed", error=f"could not queue the job: {exc}")
            registry.store.write_job(job)
            raise
        return {"job_id": job["id"], "uuid": uuid, "state": "queued", "queue": job["queue"]}
    jobstate.reap()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "ph.jobs", str(registry.store.root), job["id"]],
                                cwd=os.getcwd(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as exc:
        job.update(state="failed", error=f"could not start the training process: {exc}")
        registry.store.write_job(job)
        raise TrainingError(job["error"]) from None
    jobstate.children[job["id"]] = proc
    return {"job_id": job["id"], "uuid": uuid, "state": "queued", "pid": proc.pid}


def job_status(registry: HeadRegistry, job_id: str) -> dict:
    """The job's state; a job whose process died without saying so is reported failed."""
    return jobstate.job_status(registry.store, job_id)


def stop_job(registry: HeadRegistry, job_id: str) -> dict:
    """Ask a job to stop (queued or running); the head keeps its previous weights.

    A flag in the store, not a signal: the job checks it twice a second, so no process
    id (which the system may have reused) is ever signalled."""
    store = registry.store
    job = store.read_job(job_id)
    if job["state"] in ACTIVE:
        store.request_stop(job_id)
        if job["state"] == "queued" and store.distributed \
                and store.claim_job(job_id, job.get("attempt", 1)):
            # no worker took it yet, and now none will: stopped here (a queue no worker
            # reads would otherwise keep it queued, and the head busy, for ever)
            job.update(state="stopped", ended=time.time(),
                       error="stopped before a worker took it; the head keeps its weights")
            store.write_job(job)
    return job_status(registry, job_id)


def job_retries() -> int:
    """How often a job whose worker died is sent again ($PH_JOB_RETRIES, default 0)."""
    return env_int("PH_JOB_RETRIES", 0, 0)


def run_job(heads_dir: str, job_id: str, store_url: str | None = None, attempt: int = 1,
            stop_on_sigterm: bool = True) -> int:
    """Body of the job process or worker task: train, record progress per epoch, record
    the outcome. Returns 0 when the job succeeded."""
    store = open_store(store_url, heads_dir)
    stop = threading.Event()
    store.beat(job_id)  # alive from the claim on: beating until the job is recorded ended
    threading.Thread(target=_watch, args=(store, job_id, stop), daemon=True).start()
    try:
        return _run_claimed(store, heads_dir, job_id, attempt, stop, stop_on_sigterm)
    finally:
        stop.set()


def _run_claimed(store, heads_dir: str, job_id: str, attempt: int, stop: threading.Event,
                 stop_on_sigterm: bool) -> int:
    if not store.claim_job(job_id, attempt):
        log.info("job %s attempt %d was taken by another worker or stopped", job_id, attempt)
        return 1
    job = store.read_job(job_id)
    if job["state"] != "queued" or job.get("attempt", 1) != attempt:
        log.info("job %s attempt %d is %s (attempt %s): not run", job_id, attempt,
                 job["state"], job.get("attempt", 1))
        return 1
    spec = job["policy"]
    # The job runs under the accepting server's policy, relative paths (the default
    # save_dir, saved/) included: a worker on another machine uses the same folder names
    # on its own disk, so a server's --allow-path limits bind its jobs wherever they run.
    policy = PathPolicy(None if spec["roots"] is None else tuple(Path(r) for r in spec["roots"]),
                        spec["allow_code"], Path(spec["base_dir"]))
    registry = HeadRegistry(heads_dir, policy, store=store)
    if stop_on_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    job.update(state="running", pid=os.getpid(), started=time.time())
    if not store.write_job(job, expect_attempt=attempt):
        return 1  # stopped, or failed by a probe, since the check above
    asked_to_stop = store.stop_requested(job_id)

    def on_epoch(record: dict) -> None:
        job.update(epoch=record["epoch"], metrics=record)
        if not store.write_job(job, expect_attempt=attempt):
            log.warning("job %s attempt %d was ended elsewhere (its worker was taken for "
                        "dead); stopping", job_id, attempt)
            stop.set()

    try:
        if asked_to_stop:
            raise TrainingStopped("the job was stopped before it started; the head keeps its "
                                  "previous weights")
        summary = registry.train_resolved(job["uuid"], job["config"], job["auto_update"],
                                          stop, on_epoch, job.get("incremental", False),
                                          job_id=job_id)
        job.update(state="succeeded", summary=summary)
    except PHError as exc:
        job.update(state="stopped" if stop.is_set() or isinstance(exc, TrainingStopped)
                   else "failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001  (report anything; the head is untouched)
        job.update(state="failed", error=f"{type(exc).__name__}: {exc}")
    job["ended"] = time.time()
    if not store.write_job(job, expect_attempt=attempt):
        log.warning("job %s attempt %d ended %s, but it was ended elsewhere first",
                    job_id, attempt, job["state"])
    store.clear_stop(job_id)
    return 0 if job["state"] == "succeeded" else 1


def yield_cpu_to_serving(niceness: int = JOB_NICENESS) -> None:
    """Run this training process below the servers: a busy machine serves predictions
    first. The job runs in its own session, which Linux may schedule as its own group
    (autogroup), where plain nice has no effect across groups: lower the group too."""
    with contextlib.suppress(OSError):
        os.nice(niceness)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(niceness))


def _watch(store, job_id: str, stop: threading.Event) -> None:
    """Stop the run when asked; tell the store the job lives (its heartbeat)."""
    while not stop.wait(0.5):
        try:
            store.beat(job_id)
            if store.stop_requested(job_id):
                stop.set()
        except Exception as exc:  # noqa: BLE001  (the store is away a moment: keep training)
            log.warning("job %s: %s", job_id, exc)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    yield_cpu_to_serving()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(run_job(sys.argv[1], sys.argv[2]))
