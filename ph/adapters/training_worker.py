"""`ph worker`: a training worker for a distributed store, on any machine.

A Celery worker over the store's Redis that takes job ids from its queues and runs them
with `ph.adapters.job_runner.run_job`, one at a time (the solo pool: a training owns the process, and
kill -9 of the worker ends its training with it; the job is then reported failed, or
sent again, by ph.heads.jobs.job_status). GPU machines take the ph-gpu queue.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ConfigError
from .job_runner import run_job, yield_cpu_to_serving
from ..stores import is_distributed, open_store
from ..stores.job_queue import TASK, celery_app

log = logging.getLogger("ph.worker")


def run_worker(store_url: str, heads_dir: str, queues: list[str], ready_file: str | None = None,
               log_level: str = "info") -> int:
    """Serve training jobs until stopped (SIGTERM: finish the current task first)."""
    if not is_distributed(store_url):
        raise ConfigError("--store (or PH_STORE) must name a distributed store "
                          "(redis://...?objects=s3://...); with the local heads folder, "
                          "ph serve runs training jobs itself")
    store = open_store(store_url, heads_dir)  # fails clearly now if the URL is wrong
    store.objects.check()
    store.start_sweeper()  # objects let go of while the object store was away, and orphans
    app = celery_app(store.url)

    @app.task(name=TASK, ignore_result=True)
    def train(job_id: str, attempt: int = 1) -> int:
        return run_job(heads_dir, job_id, store, attempt, stop_on_sigterm=False)

    if ready_file:
        from celery.signals import worker_ready
        worker_ready.connect(lambda **_: Path(ready_file).touch(), weak=False)
    yield_cpu_to_serving()
    worker = app.Worker(queues=queues, pool="solo", concurrency=1, loglevel=log_level.upper(),
                        without_gossip=True, without_mingle=True, without_heartbeat=True)
    worker.start()
    return worker.exitcode or 0
