"""The distributed store's training queue: Celery over the store's own Redis.

Servers only send messages (by task name, so they never import the worker's code);
`ph worker` consumes them (ph.worker). A message carries a job id and nothing else:
the job itself lives in the store, so any server can report or stop it.

Messages are acknowledged when a worker takes them. Redelivery of a lost message is
not left to the broker (its visibility timeout would also redeliver long runs that are
still alive); a job whose worker stops beating is failed, or sent again when the job
allows retries (PH_JOB_RETRIES), by whoever notices first (ph.heads.jobs.job_status).
"""
from __future__ import annotations

import functools

from .. import settings

TASK = "ph.train"
CPU_QUEUE = "ph-train"
GPU_QUEUE = "ph-gpu"


@functools.lru_cache(maxsize=8)
def celery_app(redis_url: str):
    from celery import Celery

    app = Celery("ph", broker=redis_url, set_as_current=False)
    app.conf.update(task_acks_late=False, worker_prefetch_multiplier=1,
                    task_default_queue=CPU_QUEUE, broker_connection_retry_on_startup=True,
                    worker_hijack_root_logger=False, worker_send_task_events=False,
                    task_serializer="json", accept_content=["json"])
    return app


def queue_for(config: dict) -> str:
    """Jobs of heads that name a CUDA device go to the GPU workers' queue; the rest to
    $PH_TRAIN_QUEUE (default ph-train)."""
    if "cuda" in str(config.get("Inference", {}).get("device", "")):
        return GPU_QUEUE
    return settings.value("PH_TRAIN_QUEUE")


def enqueue(redis_url: str, job: dict) -> None:
    celery_app(redis_url).send_task(TASK, args=[job["id"], job.get("attempt", 1)],
                                    queue=job["queue"])
