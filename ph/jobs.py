"""Background training: each job runs in its own process, so serving stays responsive
and a crash or kill cannot touch the serving process or the head's current weights.

The job's state lives in `<heads>/_jobs/<id>.json`, so any worker can report it. A job
owns its head from the moment start_job returns its id (see HeadRegistry.check_idle).
Run as `python -m ph.jobs HEADS_DIR JOB_ID` (started by `start_job`).
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
from .stores import check_uuid, new_uuid
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
           "summary": None, "pid": None,
           "policy": {"roots": (None if policy.allowed_roots is None
                                else [str(r) for r in policy.allowed_roots]),
                      "allow_code": policy.allow_code, "base_dir": str(Path.cwd())}}
    registry.accept_job(record, job)  # 409 if the head is training; from here the job owns it
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

    A flag file, not a signal: the job checks it twice a second, so no process id (which
    the system may have reused) is ever signalled."""
    job = registry.store.read_job(job_id)
    if job["state"] in ACTIVE:
        _stop_flag(registry.store, job_id).touch()
    return job_status(registry, job_id)


def _stop_flag(store, job_id: str) -> Path:
    return store.job_path(job_id).with_suffix(".stop")


def run_job(heads_dir: str, job_id: str) -> int:
    """Body of the job process: train, record progress per epoch, record the outcome."""
    from .stores import LocalStore as HeadStore
    store = HeadStore(heads_dir)
    job = store.read_job(job_id)
    spec = job["policy"]
    policy = PathPolicy(None if spec["roots"] is None else tuple(Path(r) for r in spec["roots"]),
                        spec["allow_code"], Path(spec["base_dir"]))
    registry = HeadRegistry(heads_dir, policy)
    yield_cpu_to_serving()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    flag = _stop_flag(store, job_id)
    threading.Thread(target=_watch, args=(flag, stop), daemon=True).start()
    job.update(state="running", pid=os.getpid(), started=time.time())
    store.write_job(job)

    def on_epoch(record: dict) -> None:
        job.update(epoch=record["epoch"], metrics=record)
        store.write_job(job)

    try:
        if flag.exists():
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
    store.write_job(job)
    flag.unlink(missing_ok=True)
    return 0 if job["state"] == "succeeded" else 1


def yield_cpu_to_serving(niceness: int = JOB_NICENESS) -> None:
    """Run this training process below the servers: a busy machine serves predictions
    first. The job runs in its own session, which Linux may schedule as its own group
    (autogroup), where plain nice has no effect across groups: lower the group too."""
    with contextlib.suppress(OSError):
        os.nice(niceness)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(niceness))


def _watch(flag: Path, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        if flag.exists():
            stop.set()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run_job(sys.argv[1], sys.argv[2]))
