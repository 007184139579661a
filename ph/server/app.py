"""The remote action server: Jaseci's remote action protocol over FastAPI.

`GET /jaseci_actions_spec/` lists the actions and their parameters; `POST /<action>/`
takes the arguments as a JSON object, so `actions load remote http://host:port` works.
Errors map to status codes in one handler, with a JSON body and no stack trace.
Without a token only loopback clients are served; paths and user code from clients
are refused unless the operator allows them.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import inspect
import ipaddress
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import api, metrics, settings
from ..errors import BadInputError, PHError, TooLargeError
from ..heads.policy import PathPolicy
from ..settings import version as ph_version
from .observability import PROBE_PATHS, Instrument, Readiness, add_routes, with_request_id
from .tenants import Tenant, TenantActions, load_tokens, tenant_of

log = logging.getLogger("ph.server")
SPEC_PATH = "/jaseci_actions_spec/"
WRONG_TOKEN = ("missing or wrong token: send 'Authorization: Bearer TOKEN' (or use "
               "http://user:TOKEN@host:port as the remote action URL)")
OPEN_PATHS = PROBE_PATHS  # open to probes: they say nothing about heads or paths
DEFAULT_MAX_BODY = settings.BY_ENV["PH_MAX_BODY_BYTES"].default  # 1,000 768-float examples fit
ENV = ("PH_HEADS_DIR", "PH_STORE", "PH_TOKEN", "PH_ALLOW_CODE", "PH_ALLOW_PATHS", "PH_MEMORY_BUDGET",
       "PH_BATCH_WINDOW_MS", "PH_WORKERS", "PH_TORCH_THREADS", "PH_MAX_BODY_BYTES", "PH_METRICS",
       "PH_METRICS_OPEN", "PH_LOG_FORMAT", "PH_API_DOCS", "PH_TOKENS_FILE")


@dataclass
class ServerSettings:
    """What the operator decides; read from PH_* variables so every worker agrees."""

    heads_dir: str = "heads"
    store: str | None = None  # a distributed store's URL (ph.stores); None: heads_dir
    token: str | None = None
    allow_code: bool = False
    allow_paths: list[str] = field(default_factory=list)
    memory_budget: int | str | None = None
    batch_window_ms: float = 0.0
    workers: int = 1
    torch_threads: int = 0  # 0: one core per worker is left to its event loop (below)
    max_body_bytes: int = DEFAULT_MAX_BODY
    metrics: bool = True
    metrics_open: bool = False  # /metrics without the token (a scraper in the cluster)
    log_format: str = "text"
    api_docs: bool = True
    tokens_file: str | None = None  # tenants (ph.server.tenants)

    @classmethod
    def from_env(cls) -> "ServerSettings":
        """From the PH_* variables (ph.settings parses them; a bad one is a ConfigError)."""
        return cls.from_values({env: settings.value(env) for env in ENV})

    @classmethod
    def from_values(cls, values: dict) -> "ServerSettings":
        """From parsed settings, keyed by variable (as ph.settings gives them)."""
        return cls(heads_dir=values["PH_HEADS_DIR"], store=values["PH_STORE"],
                   token=values["PH_TOKEN"] or None, allow_code=values["PH_ALLOW_CODE"],
                   allow_paths=list(values["PH_ALLOW_PATHS"]),
                   memory_budget=values["PH_MEMORY_BUDGET"],
                   batch_window_ms=values["PH_BATCH_WINDOW_MS"], workers=values["PH_WORKERS"],
                   torch_threads=values["PH_TORCH_THREADS"],
                   max_body_bytes=values["PH_MAX_BODY_BYTES"], metrics=values["PH_METRICS"],
                   metrics_open=values["PH_METRICS_OPEN"], log_format=values["PH_LOG_FORMAT"],
                   api_docs=values["PH_API_DOCS"], tokens_file=values["PH_TOKENS_FILE"] or None)

    def to_env(self) -> dict[str, str]:
        return {"PH_HEADS_DIR": str(self.heads_dir), "PH_STORE": self.store or "",
                "PH_TOKEN": self.token or "",
                "PH_ALLOW_CODE": "1" if self.allow_code else "",
                "PH_ALLOW_PATHS": os.pathsep.join(str(Path(p).resolve()) for p in self.allow_paths),
                "PH_MEMORY_BUDGET": str(self.memory_budget or ""),
                "PH_BATCH_WINDOW_MS": str(self.batch_window_ms), "PH_WORKERS": str(self.workers),
                "PH_TORCH_THREADS": str(self.torch_threads),
                "PH_MAX_BODY_BYTES": str(self.max_body_bytes),
                "PH_METRICS": "1" if self.metrics else "0",
                "PH_METRICS_OPEN": "1" if self.metrics_open else "",
                "PH_LOG_FORMAT": self.log_format, "PH_API_DOCS": "1" if self.api_docs else "0",
                "PH_TOKENS_FILE": str(Path(self.tokens_file).resolve()) if self.tokens_file else ""}

    def compute_threads(self) -> int:
        """torch threads per worker: the cores left after each worker's event loop.

        torch's default (one thread per core) makes its threads spin against the event
        loop that parses requests; on 2 cores that cut throughput at 32 connections 5x."""
        if self.torch_threads:
            return self.torch_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cores or 1) // max(1, self.workers) - 1)


class PredictBatcher:
    """Answers concurrent predict calls together: calls that arrive while a pass runs (or
    within `window_ms` of the first) go into one `predict_many`, so many users' heads of
    one architecture share a stacked forward. A lone call is answered at once.

    Passes run on one compute thread fed by a plain queue: the event loop only enqueues
    and is woken once per pass, with no task or thread-pool hop per batch."""

    def __init__(self, window_ms: float = 0.0, max_batch: int = 1024, count: bool = False):
        self.window, self.max_batch, self.count = window_ms / 1000.0, max_batch, count
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = self.requests = 0
        self.pass_cpu_s = 0.0

    async def predict(self, uuid: Any, data: Any) -> Any:
        if self._thread is None:
            self._start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((uuid, data, future, loop))
        return await future

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="ph-predict", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            if self.window:
                time.sleep(self.window)
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            results = self._pass([(u, d) for u, d, _, _ in batch])
            self.batches, self.requests = self.batches + 1, self.requests + len(batch)
            for loop in {item[3] for item in batch}:
                loop.call_soon_threadsafe(_deliver, [b for b in batch if b[3] is loop],
                                          [r for b, r in zip(batch, results) if b[3] is loop])

    def _pass(self, requests: list) -> list:
        """One predict_many as plain values, with its CPU time counted (benchmarks split a
        request's server time into the stacked pass and the rest). Never raises: every
        waiting call gets its own answer or error."""
        start, wall = time.thread_time(), time.perf_counter()
        try:
            results = api.get_registry().predict_many(requests)
            return [r if isinstance(r, Exception) else api.to_plain(r) for r in results]
        except Exception as exc:  # noqa: BLE001
            return [exc] * len(requests)
        finally:
            self.pass_cpu_s += time.thread_time() - start
            if self.count:
                metrics.predict_pass(len(requests), time.perf_counter() - wall)
                metrics.observe_registry(api.get_registry().stats)


def _deliver(batch: list, results: list) -> None:
    for (_, _, future, _), result in zip(batch, results):
        if future.done():  # the client went away
            continue
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """The ASGI app; sets up this process's registry with the server's path policy."""
    settings = settings or ServerSettings.from_env()
    policy = PathPolicy.restricted(settings.allow_paths, settings.allow_code)
    registry = api.setup(settings.heads_dir, settings.memory_budget, policy, store=settings.store)
    registry.store.start_background_tasks()  # not for library users: servers only
    torch.set_num_threads(settings.compute_threads())
    app = FastAPI(title="ph remote actions", description="Personalized heads for Jaseci",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    count = settings.metrics and metrics.available()
    batcher = PredictBatcher(settings.batch_window_ms, count=count)

    open_paths = OPEN_PATHS + (("/metrics",) if settings.metrics_open else ())
    tokens = load_tokens(settings.tokens_file, settings.token) if settings.tokens_file else None
    tenant_actions = TenantActions(api.get_registry, settings.workers) if tokens else None
    app.add_middleware(Gatekeeper, token=settings.token, open_paths=open_paths, tokens=tokens)
    app.add_middleware(Instrument, actions={fn.__name__ for fn in api.ACTIONS}, count=count)
    add_routes(app, Readiness(registry.store.check_ready),
               lambda: metrics.observe_registry(registry.stats, force=True), count)

    @app.exception_handler(PHError)
    async def ph_error(request: Request, exc: PHError):
        retry = getattr(exc, "retry_after", None)  # a quota: when to try again
        return with_request_id(exc.to_dict(), exc.http_status,
                               {"Retry-After": str(retry)} if retry else None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            names = ", ".join(fn.__name__ for fn in api.ACTIONS)
            return with_request_id({"error": "not_found", "message": f"no action at "
                                    f"{request.url.path}; POST /<action>/ with one of: {names}"}, 404)
        return with_request_id({"error": "http", "message": str(exc.detail)}, exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("internal error in %s", request.url.path)
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:  # from middleware tasks
            exc = exc.exceptions[0]
        return with_request_id({"error": "internal", "message": f"internal error "
                                f"({type(exc).__name__}); the server log has the details "
                                "(search it for the request_id)"}, 500)

    @app.get("/healthz", include_in_schema=False)
    async def health():  # open to probes (and the benchmarks' pass counters)
        return {"status": "ok", "pid": os.getpid(), "torch_threads": torch.get_num_threads(),
                "predict_batches": batcher.batches,
                "predict_requests": batcher.requests,
                "predict_pass_cpu_s": round(batcher.pass_cpu_s, 4)}

    if settings.api_docs:  # guarded like the actions (not in OPEN_PATHS)
        from .openapi import openapi_document, swagger_page
        document = openapi_document(api.ACTIONS, ph_version())
        page = swagger_page("ph remote actions")

        @app.get("/openapi.json", include_in_schema=False)
        async def openapi():
            return JSONResponse(document)

        @app.get("/docs", include_in_schema=False)
        async def docs():
            return HTMLResponse(page)

    @app.get(SPEC_PATH)
    async def spec():
        return {f"ph.{fn.__name__}": list(inspect.signature(fn).parameters) for fn in api.ACTIONS}

    for fn in api.ACTIONS:
        run = batcher.predict if fn is api.predict else None
        # plain Starlette routes: the endpoints read and answer JSON themselves, so
        # FastAPI's per-request dependency solving and response encoding add only cost
        app.add_route(f"/{fn.__name__}/", _endpoint(fn, run, settings.max_body_bytes,
                                                    tenant_actions),
                      methods=["POST"], name=fn.__name__)
    return app


def _endpoint(fn, run=None, max_body: int = DEFAULT_MAX_BODY,
              tenant_actions: TenantActions | None = None):
    """POST handler: check the JSON arguments against `fn`, then call it in a worker
    thread (or `run`, a coroutine taking the same arguments); a tenant's call through
    `tenant_actions`."""
    signature = inspect.signature(fn)
    params = signature.parameters

    async def endpoint(request: Request):
        body = await _read_body(request, max_body)
        try:
            args = json.loads(body) if body.strip() else {}
        except ValueError:
            raise BadInputError(f"{fn.__name__}: the request body must be a JSON object of "
                                "arguments") from None
        if not isinstance(args, dict):
            raise BadInputError(f"{fn.__name__}: the request body must be a JSON object of "
                                f"arguments, got {type(args).__name__}")
        unknown = sorted(set(args) - set(params))
        if unknown:
            raise BadInputError(f"{fn.__name__}: unknown argument(s) {', '.join(unknown)}; "
                                f"it takes: {', '.join(params)}")
        try:
            signature.bind(**args)
        except TypeError as exc:
            raise BadInputError(f"{fn.__name__}: {exc}; it takes: {', '.join(params)}") from None
        tenant = request.scope.get("ph.tenant")
        if tenant is not None and not tenant.admin:
            return JSONResponse(await tenant_actions.call(tenant, fn, args, run))
        if run is not None:
            return JSONResponse(await run(**args))
        return JSONResponse(await run_in_threadpool(fn, **args))

    endpoint.__name__ = fn.__name__
    return endpoint


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 when it passes `limit` bytes. The rest of an
    oversized body is read and dropped (never held), so the client gets the answer."""
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise TooLargeError(f"the request body has {size} bytes, more than this server's limit "
                            f"of {limit} bytes; send fewer examples per call (several calls), or "
                            "ask the operator to raise it (ph serve --max-body-bytes, "
                            "PH_MAX_BODY_BYTES)")
    return b"".join(chunks)


class Gatekeeper:
    """Refuses requests the operator did not allow, before any route runs (pure ASGI:
    Starlette's BaseHTTPMiddleware would add a task and a stream to every request)."""

    def __init__(self, app, token: str | None, open_paths: tuple[str, ...] = OPEN_PATHS,
                 tokens: dict[str, Tenant] | None = None):
        self.app, self.token, self.open_paths, self.tokens = app, token, open_paths, tokens

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            request = Request(scope)
            refusal = _not_json(request) or (
                _refusal(request, self.token) if self.tokens is None else
                _tenant_refusal(request, self.tokens, scope))
            if refusal is not None:
                return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)


def _tenant_refusal(request: Request, tokens: dict[str, Tenant], scope: dict) -> JSONResponse | None:
    """With tenants: the token names the tenant (put in scope["ph.tenant"]); /metrics is
    the operator's."""
    tenant = tenant_of(tokens, _credential(request.headers.get("authorization", "")))
    if tenant is None:
        return _unauthorized(WRONG_TOKEN)
    if scope["path"] == "/metrics" and not tenant.admin:
        return with_request_id({"error": "forbidden", "message": "/metrics is the operator's: "
                                "scrape it with an admin token"}, 403)
    scope["ph.tenant"] = tenant
    return None


def _not_json(request: Request) -> JSONResponse | None:
    """The 415 for a POST that is not JSON: a browser page cannot send JSON without a CORS
    preflight, which this server refuses."""
    if request.method == "POST" and request.headers.get("content-type", "").split(";")[0] \
            != "application/json":
        return with_request_id({"error": "bad_input", "message": "send the arguments as JSON "
                                "with Content-Type: application/json"}, 415)
    return None


def _refusal(request: Request, token: str | None) -> JSONResponse | None:
    """None when the request may go on, else the 401 response."""
    if token is None:
        host = request.headers.get("host", "").rsplit(":", 1)[0].strip("[]")
        if not is_loopback(request.client.host if request.client else ""):
            why = "a client on another machine"
        elif "origin" in request.headers:
            why = "a request from a web page (it has an Origin header)"
        elif not is_loopback(host):
            why = f"a request for host '{host}' (not this machine's loopback name)"
        else:
            return None
        return _unauthorized(f"this server has no token, so it refuses {why}; it answers "
                             "programs on this machine only. Its operator can set PH_TOKEN "
                             "(ph serve --token)")
    given = _credential(request.headers.get("authorization", ""))
    if given is not None and hmac.compare_digest(given.encode(), token.encode()):
        return None
    return _unauthorized(WRONG_TOKEN)


def _credential(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def _unauthorized(message: str) -> JSONResponse:
    return with_request_id({"error": "unauthorized", "message": message}, 401,
                           headers={"WWW-Authenticate": 'Bearer realm="ph", Basic realm="ph"'})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serv_actions() -> FastAPI:
    """Factory for `uvicorn ph.server:serv_actions` (settings from PH_* variables)."""
    return create_app()
