"""What an operator watches: request ids and per-request metrics (the Instrument
middleware), GET /livez, /readyz and /metrics.

/livez: the process answers. /readyz: it can serve: its store answers (the heads
folder is writable; Redis answers PING and the bucket is reachable), checked at most
every READY_CACHE_S so that a probe costs the store nothing. Each worker process of
`ph serve --workers N` answers for itself; its supervisor restarts a worker that dies.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import logs, metrics
from ..errors import PHError

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
    """The store's answer, remembered for READY_CACHE_S."""

    def __init__(self, check: Callable[[], None]):
        self.check = check
        self._checked, self._problem = 0.0, None

    def problem(self) -> str | None:
        """None when ready, else what is wrong."""
        now = time.monotonic()
        if now - self._checked >= READY_CACHE_S:
            try:
                self.check()
                self._problem = None
            except PHError as exc:
                self._problem = str(exc)
            except Exception as exc:  # noqa: BLE001  (a probe answers, whatever broke)
                self._problem = f"{type(exc).__name__}: {exc}"
            self._checked = time.monotonic()
        return self._problem


def add_routes(app: Any, readiness: Readiness, refresh: Callable[[], None], with_metrics: bool) -> None:
    @app.get("/livez", include_in_schema=False)
    async def livez():
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz():
        problem = readiness.problem()
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
