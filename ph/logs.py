"""Log lines an operator can use: a timestamp on each, text or one JSON object per line
(`--log-format`), and the id of the request (or training job) each line belongs to.

The request id lives in a context variable: the server sets it per request (taken from
X-Request-ID or made up), it follows the request into the worker thread that runs the
action, is stored with a background job the request starts, and the job's process sets
it again, so `grep <id>` finds a request's lines and its job's. Layer 0: imports nothing
of ph.
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import json
import logging
import re
import time
import uuid

TEXT_FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s [%(request_id)s] %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")  # what a client's X-Request-ID may be

TAIL_LINES, TAIL_LINE_CHARS = 200, 500  # a job's kept log: at most about 100 KB

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("ph_request_id", default="-")


def new_request_id(given: str | None = None) -> str:
    """The client's id when it is a sane one (letters, digits, ._:/+=-, at most 128),
    else a new one: a header must never inject text into the logs."""
    if given and REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    rid = request_id.get()
    return None if rid == "-" else rid


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (handlers' formatters print it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (and the
    exception's text when there is one)."""

    converter = time.gmtime  # UTC (the Z)

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": f"{self.formatTime(record, DATE_FORMAT)}.{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage(),
                "request_id": getattr(record, "request_id", "-")}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TailHandler(logging.Handler):
    """The last TAIL_LINES log lines (each at most TAIL_LINE_CHARS), in the text format:
    a background job's log, kept with its record in the store (train_status shows it).
    Only lines logged under the job's request id: a worker's other threads (the sweeper,
    the change listener) log about other heads, maybe other tenants'."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.addFilter(RequestIdFilter())
        self.addFilter(lambda record: record.request_id == request_id.get() != "-")
        self.setFormatter(_text_formatter())
        self._lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self._lines.append(self.format(record)[:TAIL_LINE_CHARS])

    def lines(self) -> list[str]:
        return list(self._lines)

    def clear(self) -> None:
        self._lines.clear()


def _text_formatter() -> logging.Formatter:
    formatter = logging.Formatter(TEXT_FORMAT, DATE_FORMAT)
    formatter.converter = time.gmtime  # UTC (the Z): lines from many hosts line up
    return formatter


def configure(level: str = "info", fmt: str = "text") -> None:
    """The root logger for a ph process (ph serve, its workers, ph worker, job processes):
    one handler on stderr in `fmt`, at `level`; uvicorn's and celery's loggers go through
    it too (they are started without their own configuration)."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else _text_formatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # no handlers of their own
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
