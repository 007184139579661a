"""How every part of RedisStore reaches Redis: its key names, and Redis being unreachable
turned into the store's StoreUnavailableError (a 503 that names it). Shared by the
store's parts (redis_store, redis_records, redis_blobs, redis_jobs) and, through the
store, by ObjectExampleLog, Leases and the sweeper.
"""
from __future__ import annotations

import functools
from typing import Any

from .. import metrics
from ..errors import StoreUnavailableError


def redis_errors(method):
    """Redis being unreachable becomes a StoreUnavailableError (503) naming it."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return self.call(method, self, *args, **kwargs)
    return wrapper


def unavailable_errors() -> tuple:
    """What Redis says while it cannot take a call now: unreachable, a replica after a
    failover, out of memory."""
    import redis
    return (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
            redis.OutOfMemoryError)


class RedisAccess:
    """Key names under the namespace `ns`, and `call`, for a store with a Redis client
    `redis` at `url`."""

    url: str
    ns: str
    redis: Any

    def key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def unavailable(self, exc: Exception) -> StoreUnavailableError:
        where = self.url.split("@")[-1]
        metrics.store_error("redis")
        return StoreUnavailableError(f"Redis ({where}) cannot be reached ({type(exc).__name__}: "
                                     f"{exc}); nothing was changed: try again when it is back")

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs), Redis being unreachable raised as StoreUnavailableError."""
        try:
            return fn(*args, **kwargs)
        except unavailable_errors() as exc:
            raise self.unavailable(exc) from None
