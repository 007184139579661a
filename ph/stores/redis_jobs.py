"""RedisStore's background jobs (base.Jobs): records any server can read, each head's
latest job, stop flags, workers' heartbeats and claims of an attempt, all in Redis (their
keys: redis_store); a job reaches the training workers through the Celery queue
(job_queue).
"""
from __future__ import annotations

import json
import uuid as uuidlib

from ..errors import NotFoundError, StoreUnavailableError
from .base import ACTIVE, check_uuid
from .job_queue import enqueue
from .redis_access import RedisAccess, redis_errors


class RedisJobs(RedisAccess):
    """base.Jobs for RedisStore, which gives `_write_job` (the registered JOB_WRITE
    script), `job_ttl_s` (how long finished records and flags are kept) and `lease_s`
    (a worker's heartbeat lasts that long)."""

    can_resend_jobs = True  # a queue: any worker can take a job sent again
    job_ttl_s: int
    lease_s: float

    @redis_errors
    def write_job(self, job: dict, expect_attempt: int | None = None) -> bool:
        """Write a job's record (see LocalStore.write_job). Finished job records expire
        after PH_JOB_RECORDS_MAX_AGE_S (default 7 days)."""
        job = {**job, "w": uuidlib.uuid4().hex[:12]}
        finished = job.get("state") not in ACTIVE
        return bool(self._write_job(
            keys=[self.key("job", check_uuid(job["id"]))],
            args=[json.dumps(job), str(self.job_ttl_s) if finished else "",
                  "" if expect_attempt is None else str(expect_attempt), job["w"]]))

    @redis_errors
    def read_job(self, job_id: str) -> dict:
        raw = self.redis.get(self.key("job", check_uuid(job_id)))
        if raw is None:
            raise NotFoundError(f"no training job '{job_id}'; train_head(..., background=True) "
                                f"returns the job id (finished jobs are kept for {self.job_ttl_s / 3600:g} "
                                "hours, PH_JOB_RECORDS_MAX_AGE_S)")
        job = json.loads(raw)
        job.pop("w", None)  # the write id is the store's own
        return job

    @redis_errors
    def latest_job(self, uuid: str) -> str | None:
        raw = self.redis.get(self.key("latest", check_uuid(uuid)))
        return raw.decode() if raw else None

    @redis_errors
    def set_latest_job(self, uuid: str, job_id: str) -> None:
        self.redis.set(self.key("latest", check_uuid(uuid)), check_uuid(job_id))

    @redis_errors
    def request_stop(self, job_id: str) -> None:
        self.redis.set(self.key("stop", check_uuid(job_id)), 1, ex=self.job_ttl_s)

    @redis_errors
    def stop_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.key("stop", check_uuid(job_id))))

    @redis_errors
    def clear_stop(self, job_id: str) -> None:
        self.redis.delete(self.key("stop", check_uuid(job_id)))

    @redis_errors
    def beat(self, job_id: str) -> None:
        """The job's worker is alive (for the next lease period)."""
        self.redis.set(self.key("beat", check_uuid(job_id)), 1, px=int(self.lease_s * 1000))

    @redis_errors
    def job_alive(self, job: dict) -> bool:
        """A queued job waits for a worker however long that takes; once a worker took it
        (or it is running) it is alive while that worker keeps beating."""
        beating = bool(self.redis.exists(self.key("beat", check_uuid(job["id"]))))
        if job["state"] == "queued":  # dead only if a worker took it and stopped beating
            taken = self.redis.exists(self.key("claim", job["id"], str(job.get("attempt", 1))))
            return beating or not taken
        return beating

    def dispatch_job(self, job: dict) -> dict:
        """Send the job to the training workers (`ph worker`) on its queue; {"queue": it}."""
        from kombu.exceptions import OperationalError  # the distributed extra: only here
        try:
            enqueue(self.url, job)
        except OperationalError as exc:
            raise StoreUnavailableError(f"could not queue the job: {self.unavailable(exc)}") \
                from None
        return {"queue": job["queue"]}

    def withdraw_queued(self, job_id: str, attempt: int) -> bool:
        """Claim the attempt here, so that no worker that gets the message runs it."""
        return self.claim_job(job_id, attempt)

    @redis_errors
    def claim_job(self, job_id: str, attempt: int) -> bool:
        """True for the one worker that takes this attempt of the job (a message sent
        twice, by two servers that both saw the last worker die, runs once)."""
        key, token = self.key("claim", check_uuid(job_id), str(attempt)), uuidlib.uuid4().hex
        return bool(self.redis.set(key, token, nx=True, ex=self.job_ttl_s)) \
            or self.redis.get(key) == token.encode()  # our SET, sent again by a retry
