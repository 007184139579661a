"""Prometheus metrics of every ph process, through prometheus-client: requests, the
stacked predict pass, loaded heads, the shared encoders' caches, training jobs and store
errors. `ph serve` exposes them at GET /metrics.

Several processes, one figure: `ph serve` points PROMETHEUS_MULTIPROC_DIR at a folder of
its own before its workers start (`use_folder`), so each worker, and each training job
process they start, writes its values there and a scrape of any worker adds them up
(prometheus-client's multiprocess mode). Without that variable (a library user, Jaseci's
module mode) they are this process's own.

The metric objects are made on first use, not at import, so that the variable is set
before prometheus-client reads it. Where prometheus-client is not installed (the GPU
machines' bare torch), every call here does nothing: metrics never break a predict.
Layer 0: imports nothing of ph.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import threading
import time
from typing import Any

FOLDER_ENV = "PROMETHEUS_MULTIPROC_DIR"
REFRESH_S = 1.0  # process gauges are refreshed at most this often (and at every scrape)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_lock = threading.Lock()
_metrics: dict[str, Any] | None = None
_seen: dict[tuple, float] = {}  # cumulative figures already counted: key -> value
_refreshed = 0.0


@functools.cache  # a failed import is not cached by Python: ask once
def available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def use_folder() -> str:
    """Give this process and the processes it starts one folder of metric files (made
    fresh unless the operator set PROMETHEUS_MULTIPROC_DIR); call before they start."""
    folder = os.environ.get(FOLDER_ENV)
    if not folder:
        folder = tempfile.mkdtemp(prefix="ph-metrics-")
        os.environ[FOLDER_ENV] = folder
        atexit.register(shutil.rmtree, folder, True)  # ours: gone when this process ends
    os.makedirs(folder, exist_ok=True)
    return folder


def process_ended(pid: int) -> None:
    """A worker or job process ended: its live gauges no longer count."""
    if os.environ.get(FOLDER_ENV) and available():
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)


def _made() -> dict[str, Any] | None:
    global _metrics
    if _metrics is not None or not available():
        return _metrics
    with _lock:
        if _metrics is None:
            from prometheus_client import Counter, Gauge, Histogram
            live = {"multiprocess_mode": "livesum"}
            _metrics = {
                "requests": Counter("ph_requests", "HTTP requests by action and status",
                                    ["action", "status"]),
                "latency": Histogram("ph_request_seconds", "HTTP request latency by action",
                                     ["action"], buckets=LATENCY_BUCKETS),
                "batch": Histogram("ph_predict_batch_size", "predict calls answered by one "
                                   "stacked pass", buckets=BATCH_BUCKETS),
                "pass": Histogram("ph_predict_pass_seconds", "time of one stacked predict pass",
                                  buckets=LATENCY_BUCKETS),
                "heads": Gauge("ph_heads_loaded", "heads loaded in memory", **live),
                "bytes": Gauge("ph_head_bytes", "bytes held by loaded heads, shared encoders "
                               "and their caches", **live),
                "cold": Counter("ph_head_cold_loads", "heads loaded from the store on a call"),
                "evictions": Counter("ph_head_evictions", "heads dropped from memory for the "
                                     "memory budget"),
                "enc_hits": Counter("ph_encoder_cache_hits", "texts answered by an encoder's "
                                    "embedding cache", ["model", "backend"]),
                "enc_misses": Counter("ph_encoder_cache_misses", "texts an encoder had to "
                                      "encode", ["model", "backend"]),
                "enc_bytes": Gauge("ph_encoder_bytes", "a shared encoder's model and cache bytes",
                                   ["model", "backend"], **live),
                "jobs": Counter("ph_jobs", "training jobs that started, and how they ended",
                                ["state"]),
                "epochs": Counter("ph_training_epochs", "training epochs finished"),
                "samples": Counter("ph_training_samples", "training samples processed "
                                   "(rate() of it: samples/s)"),
                "store_errors": Counter("ph_store_errors", "calls the store could not serve, by "
                                        "part (redis, object_store)", ["kind"]),
            }
    return _metrics


def request_done(action: str, status: int, seconds: float) -> None:
    metrics = _made()
    if metrics is not None:
        metrics["requests"].labels(action, str(status)).inc()
        metrics["latency"].labels(action).observe(seconds)


def predict_pass(requests: int, seconds: float) -> None:
    metrics = _made()
    if metrics is not None:
        metrics["batch"].observe(requests)
        metrics["pass"].observe(seconds)


def job_state(state: str) -> None:
    """A job started ("running") or ended ("done", "failed", "stopped")."""
    metrics = _made()
    if metrics is not None:
        metrics["jobs"].labels(state).inc()


def training_epoch(samples: int) -> None:
    metrics = _made()
    if metrics is not None:
        metrics["epochs"].inc()
        metrics["samples"].inc(max(0, samples))


def store_error(kind: str) -> None:
    metrics = _made()
    if metrics is not None:
        metrics["store_errors"].labels(kind).inc()


def observe_registry(stats: Any, force: bool = False) -> None:
    """Set the process's gauges and counters from a head registry's `stats()` (called
    after predict passes, at most every REFRESH_S, and at every scrape). `stats` is a
    callable, so nothing is computed when it is not time."""
    global _refreshed
    metrics = _made()
    now = time.monotonic()
    if metrics is None or (not force and now - _refreshed < REFRESH_S):
        return
    _refreshed = now
    figures = stats()
    metrics["heads"].set(figures.get("heads_loaded", 0))
    metrics["bytes"].set(figures.get("bytes_held", 0) + figures.get("shared_bytes", 0))
    _count(metrics["cold"], ("cold",), figures.get("misses", 0))
    _count(metrics["evictions"], ("evictions",), figures.get("evictions", 0))
    for encoder in figures.get("encoders", []):
        labels = (encoder.get("model", "?"), encoder.get("backend", "?"))
        cache = encoder.get("cache", {})
        _count(metrics["enc_hits"].labels(*labels), ("hits", *labels), cache.get("hits", 0))
        _count(metrics["enc_misses"].labels(*labels), ("misses", *labels), cache.get("misses", 0))
        metrics["enc_bytes"].labels(*labels).set(encoder.get("bytes", 0) + cache.get("bytes", 0))


def _count(counter: Any, key: tuple, total: float) -> None:
    """Add to `counter` what the cumulative `total` grew by since it was last seen."""
    with _lock:
        grown = total - _seen.get(key, 0)
        _seen[key] = total
    if grown > 0:
        counter.inc(grown)


def exposition() -> tuple[bytes, str]:
    """The text a scrape answers, and its content type: every process's figures when
    they share a folder, else this process's."""
    _made()
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    if os.environ.get(FOLDER_ENV):
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
