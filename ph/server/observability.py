"""What an operator watches: request ids and per-request metrics (the Instrument
middleware), GET /livez, /readyz and /metrics.

/livez: the process answers. /readyz: it can serve: its store answers (the heads
folder is writable; Redis answers PING and the bucket is reachable), checked at most
every READY_CACHE_S so that a probe costs the store nothing. Each worker process of
`ph serve --workers N` answers for itself; its supervisor restarts a worker that dies.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import logs, metrics

log = logging.getLogger("ph.server")
READY_CACHE_S = 1.5
PROBE_PATHS = ("/livez", "/readyz", "/healthz")


class Instrument:
    """Pure ASGI middleware (outermost): gives each request its id (X-Request-ID, or a
    new one), returns it in the X-Request-ID header, and counts the request by action
    and status with its latency (when metrics are on). Probes are not counted."""

    def __init__(self, app, actions: set[str], count: bool):
        self.app, self.actions, self.count = app, actions, count

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = logs.new_request_id(given)
        logs.request_id.set(rid)  # uvicorn runs each request in a task of its own
        status = [500]
        start = time.perf_counter()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:  # the id stays set after an error: the 500 handler runs outside, in this task
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope["path"]
            if self.count and path not in PROBE_PATHS:
                action = path.strip("/")
                metrics.request_done(action if action in self.actions else "other", status[0],
                                     time.perf_counter() - start)


class Readiness:
    """The store's answer, remembered for READY_CACHE_S. Checked in a worker thread, one
    check at a time (a hung store must not stall the event loop or pile up threads);
    the answer names only the part that failed: probes carry no token, so the details
    (hosts, bucket, folders) go to the log."""

    def __init__(self, check: Callable[[], None]):
        self.check = check
        self._checked, self._problem = float("-inf"), None
        self._lock = threading.Lock()

    async def problem(self) -> str | None:
        """None when ready, else which part of the store is not."""
        if time.monotonic() - self._checked >= READY_CACHE_S and self._lock.acquire(blocking=False):
            try:
                await run_in_threadpool(self._run_check)
            finally:
                self._lock.release()
        return self._problem

    def _run_check(self) -> None:
        try:
            self.check()
            problem = None
        except Exception as exc:  # noqa: BLE001  (a probe answers, whatever broke)
            detail = str(exc)
            part = ("Redis" if "Redis" in detail else "the object store" if "object store"
                    in detail else "the heads folder" if "heads folder" in detail else "the store")
            problem = f"{part} cannot be reached or used; the server log says why"
            if problem != self._problem:
                log.warning("not ready: %s", detail)
        if problem is None and self._problem is not None:
            log.warning("ready again")
        self._problem, self._checked = problem, time.monotonic()


def add_routes(app: Any, readiness: Readiness, refresh: Callable[[], None], with_metrics: bool) -> None:
    @app.get("/livez", include_in_schema=False)
    async def livez():
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz():
        problem = await readiness.problem()
        if problem is None:
            return {"status": "ready"}
        return with_request_id({"status": "not ready", "error": "unavailable", "message": problem},
                               503)

    if with_metrics:
        @app.get("/metrics", include_in_schema=False)
        async def scrape(request: Request):
            refresh()
            body, content_type = metrics.exposition()
            return Response(body, media_type=content_type)


def with_request_id(body: dict, status: int, headers: dict | None = None) -> JSONResponse:
    """A JSON error answer that carries the request's id (to quote in a bug report)."""
    rid = logs.current_request_id()
    return JSONResponse({**body, "request_id": rid} if rid else body, status_code=status,
                        headers=headers)
