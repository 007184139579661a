"""Background training: each job runs in its own process, so serving stays responsive
and a crash or kill cannot touch the serving process or the head's current weights.

The job's state lives in `<heads>/_jobs/<id>.json`, so any worker can report it.
Run as `python -m ph.jobs HEADS_DIR JOB_ID` (started by `start_job`).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .errors import ConflictError, NotFoundError, PHError, TrainingError
from .fileio import atomic_write_bytes
from .paths import PathPolicy
from .registry import HeadRegistry
from .store import check_uuid, new_uuid
from .training import TrainingStopped

log = logging.getLogger("ph.jobs")
ACTIVE = ("queued", "running")
STARTUP_GRACE_S = 120  # a job that has not reported its process after this is dead
_children: dict[str, subprocess.Popen] = {}


def start_job(registry: HeadRegistry, uuid: str, config=None, auto_update: bool = True,
              incremental: bool = False) -> dict:
    """Validate the training config now, then train in a new process; returns the job id.

    The job trains on the head's stored examples as a foreground run would (they are
    read when the job starts training, so examples added until then are included)."""
    record = registry.store.read(check_uuid(uuid))
    full = registry.training_config(record, config, incremental)
    pointer = registry.store.job_path(uuid).with_suffix(".head")  # the head's latest job
    with registry.store.lock(uuid):
        latest = pointer.read_text() if pointer.exists() else None
        if latest and _active(registry, latest):
            raise ConflictError(f"head '{uuid}' is already training (job {latest}); wait for it "
                                "(train_status) or stop it (stop_training)")
        if registry.store.is_training(uuid):
            raise ConflictError(f"head '{uuid}' is already training; wait for that run")
        job_id = new_uuid()
        atomic_write_bytes(pointer, job_id.encode())
    policy = registry.policy
    job = {"id": job_id, "uuid": uuid, "state": "queued", "created": time.time(),
           "config": full, "auto_update": bool(auto_update), "incremental": bool(incremental),
           "epoch": 0,
           "epochs": full["Trainer"]["trainer"]["epochs"], "metrics": None, "error": None,
           "summary": None, "pid": None,
           "policy": {"roots": (None if policy.allowed_roots is None
                                else [str(r) for r in policy.allowed_roots]),
                      "allow_code": policy.allow_code, "base_dir": str(Path.cwd())}}
    registry.store.write_job(job)
    _reap()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "ph.jobs", str(registry.store.root), job["id"]],
                                cwd=os.getcwd(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as exc:
        job.update(state="failed", error=f"could not start the training process: {exc}")
        registry.store.write_job(job)
        raise TrainingError(job["error"]) from None
    _children[job["id"]] = proc
    return {"job_id": job["id"], "uuid": uuid, "state": "queued", "pid": proc.pid}


def job_status(registry: HeadRegistry, job_id: str) -> dict:
    """The job's state; a job whose process died without saying so is reported failed."""
    job = registry.store.read_job(job_id)
    proc = _children.get(job_id)
    if proc is not None and proc.poll() is not None:
        _children.pop(job_id, None)
        job = registry.store.read_job(job_id)
    pid = job.get("pid") or (proc.pid if proc is not None else None)
    if job["state"] in ACTIVE and not _alive(pid, proc, job):
        job = registry.store.read_job(job_id)  # it may have finished just now
        if job["state"] in ACTIVE:
            job.update(state="failed", ended=time.time(),
                       error="the training process ended without finishing (killed or crashed); "
                             "the head keeps its previous weights")
            registry.store.write_job(job)
    return {k: job.get(k) for k in ("id", "uuid", "state", "epoch", "epochs", "metrics",
                                    "error", "summary", "created", "started", "ended")}


def _active(registry: HeadRegistry, job_id: str) -> bool:
    try:
        return job_status(registry, job_id)["state"] in ACTIVE
    except NotFoundError:
        return False


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


def _reap() -> None:
    for job_id, proc in list(_children.items()):
        if proc.poll() is not None:
            _children.pop(job_id, None)


def run_job(heads_dir: str, job_id: str) -> int:
    """Body of the job process: train, record progress per epoch, record the outcome."""
    from .store import HeadStore
    store = HeadStore(heads_dir)
    job = store.read_job(job_id)
    spec = job["policy"]
    policy = PathPolicy(None if spec["roots"] is None else tuple(Path(r) for r in spec["roots"]),
                        spec["allow_code"], Path(spec["base_dir"]))
    registry = HeadRegistry(heads_dir, policy)
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
                                          stop, on_epoch, job.get("incremental", False))
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


def _watch(flag: Path, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        if flag.exists():
            stop.set()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run_job(sys.argv[1], sys.argv[2]))
