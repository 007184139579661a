"""Runs one background training job: the body of a local job process
(`python -m ph.adapters.job_runner HEADS_DIR JOB_ID`, started by ph.heads.jobs) and of
`ph worker`'s task. It claims the job's attempt, trains through the heads service under
the accepting server's path policy, records progress per epoch and the outcome."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .. import logs, metrics
from ..errors import PHError
from ..heads.jobs import head_stop_flag
from ..heads.policy import PathPolicy
from ..heads.service import HeadRegistry
from ..heads.together import Each
from ..stores import open_store
from ..training.trainer import TrainingStopped

log = logging.getLogger("ph.jobs")
JOB_NICENESS = 10  # training jobs yield the CPU to serving
job_log = logs.TailHandler()  # the job's log lines, kept with its record (train_status)
logging.getLogger("ph").addHandler(job_log)


def run_job(heads_dir: str, job_id: str, store_url: str | None = None, attempt: int = 1,
            stop_on_sigterm: bool = True) -> int:
    """Body of the job process or worker task: train, record progress per epoch, record
    the outcome. Returns 0 when the job succeeded."""
    store = open_store(store_url, heads_dir)
    stop = threading.Event()
    job_log.clear()  # a ph worker runs one job after another in one process
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
    logs.request_id.set(job.get("request_id") or f"job-{job_id}")  # the request that started it
    job.update(state="running", pid=os.getpid(), started=time.time())
    if not store.write_job(job, expect_attempt=attempt):
        return 1  # stopped, or failed by a probe, since the check above
    metrics.job_state("running")
    log.info("job %s attempt %d started", job_id, attempt)
    asked_to_stop = store.stop_requested(job_id)

    def write() -> None:
        job["log"] = job_log.lines()
        if not store.write_job(job, expect_attempt=attempt):
            log.warning("job %s attempt %d was ended elsewhere (its worker was taken for "
                        "dead); stopping", job_id, attempt)
            stop.set()

    def on_epoch(record: dict) -> None:
        job.update(epoch=record["epoch"], metrics=record)
        write()

    def on_progress(progress: dict) -> None:  # from the first batch on, every second
        job.update(epoch=max(job.get("epoch") or 0, progress["epoch"] - 1), progress=progress)
        write()

    on_epoch.progress = on_progress

    if job.get("uuids"):
        _run_group(registry, job, attempt, stop, asked_to_stop)
        return _record_end(store, job, attempt)
    try:
        if asked_to_stop:
            raise TrainingStopped("the job was stopped before it started; the head keeps its "
                                  "previous weights")
        summary = registry.train_resolved(job["uuid"], job["config"], job["auto_update"],
                                          stop, on_epoch, job.get("incremental", False),
                                          job_id=job_id, rebase=job.get("rebase", False))
        job.update(state="succeeded", summary=summary)
    except PHError as exc:
        job.update(state="stopped" if stop.is_set() or isinstance(exc, TrainingStopped)
                   else "failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001  (report anything; the head is untouched)
        job.update(state="failed", error=f"{type(exc).__name__}: {exc}")
    return _record_end(store, job, attempt)


def _record_end(store, job: dict, attempt: int) -> int:
    job["ended"] = time.time()
    metrics.job_state(job["state"])
    log.info("job %s attempt %d %s%s", job["id"], attempt, job["state"],
             f": {job['error']}" if job.get("error") else "")
    job["log"] = job_log.lines()
    if not store.write_job(job, expect_attempt=attempt):
        log.warning("job %s attempt %d ended %s, but it was ended elsewhere first",
                    job["id"], attempt, job["state"])
    store.clear_stop(job["id"])
    for uuid in job.get("uuids", ()):
        store.clear_stop(head_stop_flag(job["id"], uuid))
    return 0 if job["state"] == "succeeded" else 1


def _run_group(registry: HeadRegistry, job: dict, attempt: int, stop: threading.Event,
               asked_to_stop: bool) -> None:
    """A group job (start_group_job): its heads train together, each reported under
    job["heads"]; the job succeeded if at least one head did (the others say why not)."""
    store, heads = registry.store, job["heads"]
    stops = {uuid: threading.Event() for uuid in job["uuids"]}
    if asked_to_stop:
        for event in stops.values():
            event.set()
    watched = threading.Event()
    threading.Thread(target=_watch_heads, args=(store, job["id"], stop, stops, watched),
                     daemon=True).start()
    lock = threading.Lock()

    def on_epoch(uuid: str, record: dict) -> None:
        with lock:
            heads[uuid].update(state="running", epoch=record["epoch"], metrics=record)
            job["epoch"] = max(h["epoch"] for h in heads.values())
            if not store.write_job(job, expect_attempt=attempt):
                log.warning("group job %s was ended elsewhere; stopping", job["id"])
                stop.set()
                for event in stops.values():
                    event.set()

    try:
        results = registry.train_together(job["uuids"], job["incremental"], job["rebase"],
                                          Each(job["configs"], None, stops, on_epoch, job["id"]))
    except Exception as exc:  # noqa: BLE001  (a failure of the group as a whole)
        results = {uuid: exc for uuid in job["uuids"]}
    finally:
        watched.set()
    for uuid, result in results.items():
        if isinstance(result, BaseException):
            stopped = stops[uuid].is_set() or isinstance(result, TrainingStopped)
            heads[uuid].update(state="stopped" if stopped else "failed", error=str(result))
        else:
            heads[uuid].update(state="succeeded", summary=result)
    states = [h["state"] for h in heads.values()]
    failed = {u: h["error"] for u, h in heads.items() if h["state"] != "succeeded"}
    job["state"] = ("succeeded" if "succeeded" in states else
                    "stopped" if all(st == "stopped" for st in states) else "failed")
    job["summary"] = {"succeeded": states.count("succeeded"), "heads": len(states)}
    job["error"] = (f"{len(failed)} of {len(states)} heads did not train: " + "; ".join(
        f"{u}: {e}" for u, e in list(failed.items())[:5])) if failed else None


def _watch_heads(store, job_id: str, stop: threading.Event, stops: dict,
                 done: threading.Event) -> None:
    """A group job's per-head stop flags (the job's own flag stops every head)."""
    while not done.wait(0.5):
        try:
            for uuid, event in stops.items():
                if stop.is_set() or store.stop_requested(head_stop_flag(job_id, uuid)):
                    event.set()
        except Exception as exc:  # noqa: BLE001  (the store is away a moment)
            log.warning("job %s: %s", job_id, exc)


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
    from .. import settings
    logs.configure(settings.value("PH_LOG_LEVEL"), settings.value("PH_LOG_FORMAT"))
    yield_cpu_to_serving()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(run_job(sys.argv[1], sys.argv[2]))
