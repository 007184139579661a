"""Every PH_* setting in one table: its variable, command-line flag, default, type, range
and meaning, and the one parser that reads them.

Why one table: the same setting reaches ph from the environment, from `ph serve` /
`ph worker` flags and from `setup()`; parsing it in one place means one default, one
range and one message for a bad value, and the README's settings table is checked
against this one (tests/test_settings.py), so the two cannot drift.

Plain dataclasses rather than pydantic's BaseSettings: the core must import where only
torch is installed (the GPU machines), and Jaseci pins pydantic 1.x anyway.

A bad value raises ConfigError with one line: the setting, the value (never for a
secret), and what is accepted. Layer 0: imports nothing of ph but errors.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
SIZE_UNITS = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "B": 1}


@dataclass(frozen=True)
class Setting:
    """One setting: `kind` names its parser (KINDS); `minimum` bounds numbers."""

    env: str
    default: Any
    kind: str
    meaning: str
    flag: str | None = None
    minimum: float | None = None
    secret: bool = False

    def accepted(self) -> str:
        """What a good value looks like, for messages and the README."""
        if self.kind in ("int", "number") and self.minimum is not None:
            noun = {"int": "a whole number", "number": "a number"}[self.kind]
            return f"{noun} >= {self.minimum:g}"
        if self.kind == "bytes" and self.minimum == 0:
            return "a size: bytes, or e.g. 512MB, 2GB (0: off)"
        return KINDS[self.kind][1]

    def shown_default(self) -> str:
        if self.default in (None, "", ()):
            return "(none)"
        if self.kind == "bytes" and isinstance(self.default, int):
            return format_bytes(self.default)
        if self.kind == "flag":
            return "off" if not self.default else "on"
        if isinstance(self.default, tuple):
            return ",".join(self.default)
        return str(self.default)

    def names(self) -> str:
        return f"{self.env} ({self.flag})" if self.flag else self.env


def version() -> str:
    """ph's installed version (a working tree used without installing has none)."""
    from importlib import metadata
    try:
        return metadata.version("ph")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def format_bytes(n: int) -> str:
    for unit in ("TB", "GB", "MB", "KB"):
        if n >= SIZE_UNITS[unit] and n % SIZE_UNITS[unit] == 0:
            return f"{n // SIZE_UNITS[unit]}{unit[0]}iB"
    return str(n)


def parse_bytes(value: Any) -> int:
    """Bytes from 123, '512MB', '2GB' or '1.5GiB' (KB = 1024 bytes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().upper().replace("IB", "B")
    scale = 1
    for unit, factor in SIZE_UNITS.items():
        if text.endswith(unit):
            text, scale = text[: -len(unit)], factor
            break
    number = float(text)  # ValueError for 'lots'
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(value)
    return int(number * scale)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(value)
    return number


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(value)
        return text
    return parse


def _paths(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value if str(v))
    return tuple(p for p in str(value).split(os.pathsep) if p)


def _text(value: Any) -> str:
    return str(value)


def _queues(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = tuple(q.strip() for q in items if q.strip())
    if not names:
        raise ValueError(value)
    return names


# kind -> (parser, what is accepted)
KINDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "text": (_text, "text"),
    "path": (_text, "a folder path"),
    "paths": (_paths, f"folder paths separated by '{os.pathsep}'"),
    "url": (_text, "redis://[:PASSWORD@]HOST:PORT/DB?objects=s3://BUCKET[/PREFIX]"
                   "[&endpoint=URL][&namespace=NS], or a folder path"),
    "flag": (_flag, "1/true/yes/on or 0/false/no/off"),
    "int": (_int, "a whole number"),
    "number": (_number, "a number"),
    "bytes": (parse_bytes, "a size of at least 1 byte: bytes, or e.g. 512MB, 2GB"),
    "log_level": (_one_of(LOG_LEVELS), ", ".join(LOG_LEVELS)),
    "log_format": (_one_of(LOG_FORMATS), ", ".join(LOG_FORMATS)),
    "queues": (_queues, "queue names separated by commas (ph-train, ph-gpu)"),
}

SETTINGS: tuple[Setting, ...] = (
    Setting("PH_STORE", None, "url", "where heads live: a distributed store (Redis + S3); "
            "unset: the heads folder", "--store", secret=True),
    Setting("PH_HEADS_DIR", "heads", "path", "the heads folder; with a distributed store, "
            "this machine's cache of its objects", "--heads-dir"),
    Setting("PH_TOKEN", None, "text", "the token clients of ph serve must send (Bearer, or "
            "http://user:TOKEN@host:port); required to serve other hosts", "--token",
            secret=True),
    Setting("PH_ALLOW_PATHS", (), "paths", "folders remote clients may name files in "
            "(none: no paths)", "--allow-path"),
    Setting("PH_TOKENS_FILE", None, "path", "a YAML file of tenants, each with its own "
            "tokens and quotas, and admin tokens (README: Tenants); PH_TOKEN is then an admin "
            "token", "--tokens-file"),
    Setting("PH_ALLOW_CODE", False, "flag", "let remote clients run user Python (uploaded "
            "source or python_file)", "--allow-code"),
    Setting("PH_MEMORY_BUDGET", None, "bytes", "memory for loaded heads per process (least "
            "recently used go back to disk); unset: no limit", "--memory-budget", minimum=1),
    Setting("PH_BATCH_WINDOW_MS", 0.0, "number", "how long ph serve waits to gather "
            "concurrent predict calls into one pass", "--batch-window-ms", minimum=0),
    Setting("PH_WORKERS", 1, "int", "ph serve's worker processes", "--workers", minimum=1),
    Setting("PH_TORCH_THREADS", 0, "int", "torch threads per server worker (0: the cores "
            "per worker, less one for its event loop, at least 1)", "--threads", minimum=0),
    Setting("PH_MAX_BODY_BYTES", 32 * 2**20, "bytes", "largest request body ph serve "
            "accepts (larger: 413)", "--max-body-bytes", minimum=1),
    Setting("PH_WEIGHT_HISTORY", 3, "int", "published revisions a head keeps, the current "
            "one included (list_revisions, rollback_head)", minimum=1),
    Setting("PH_LOG_LEVEL", "info", "log_level", "how much ph serve and ph worker log",
            "--log-level"),
    Setting("PH_LOG_FORMAT", "text", "log_format", "ph serve's and ph worker's log lines: "
            "text, or one JSON object per line (both with a UTC timestamp and the request "
            "id)", "--log-format"),
    Setting("PH_METRICS", True, "flag", "serve Prometheus metrics at GET /metrics (0: off, "
            "and nothing is counted)"),
    Setting("PH_API_DOCS", True, "flag", "describe the actions at GET /openapi.json and /docs "
            "(guarded by the token like the actions; 0: off)"),
    Setting("PH_METRICS_OPEN", False, "flag", "let /metrics be scraped without the token "
            "(for a scraper inside the cluster; the figures name no head)", "--metrics-open"),
    Setting("PH_MAX_EXAMPLES_PER_CALL", 1000, "int", "examples one add_examples call may "
            "add (and list_examples' largest page)", minimum=1),
    Setting("PH_MAX_EXAMPLES_PER_HEAD", 100_000, "int", "examples one head may hold",
            minimum=1),
    Setting("PH_JOB_RECORDS_KEPT", 1000, "int", "finished training jobs' records kept (the "
            "heads folder)", minimum=1),
    Setting("PH_JOB_RECORDS_MAX_AGE_S", 7 * 24 * 3600, "int", "seconds a finished job's "
            "record is kept", minimum=1),
    Setting("PH_JOB_RETRIES", 0, "int", "how often a distributed job whose worker died is "
            "sent again", minimum=0),
    Setting("PH_TRAIN_LEASE_S", 30.0, "number", "seconds a distributed training lease lasts "
            "unless its worker renews it", minimum=0.1),
    Setting("PH_TRAIN_QUEUE", "ph-train", "text", "the queue CPU training jobs are sent to"),
    Setting("PH_TRAIN_QUEUES", ("ph-train",), "queues", "the queues ph worker takes jobs "
            "from", "--queues"),
    Setting("PH_CACHE_MAX_BYTES", 10 * 2**30, "bytes", "bytes of a distributed store's "
            "objects each machine caches", minimum=1),
    Setting("PH_CACHE_DIR", None, "path", "where packaged encoder models are unpacked "
            "(unset: $XDG_CACHE_HOME/ph or ~/.cache/ph)"),
    Setting("PH_EMBEDDING_CACHE_BYTES", 64 * 2**20, "bytes", "embeddings of texts seen "
            "before, kept per shared text encoder (0 turns it off); counted in the memory "
            "budget", minimum=0),
    Setting("PH_EMBEDDING_STORE", True, "flag", "keep the embeddings of texts training "
            "encoded on this machine's disk (the cache folder), so no job here encodes a "
            "text twice"),
    Setting("PH_SWEEP_INTERVAL_S", 30, "int", "seconds between two sweeps of the object "
            "store for objects nothing names", minimum=1),
    Setting("PH_ORPHAN_GRACE_S", 3600, "int", "seconds an object no record names is kept "
            "before the sweeper removes it", minimum=0),
)
BY_ENV = {s.env: s for s in SETTINGS}


def parse(env: str, raw: Any, source: str | None = None) -> Any:
    """`raw` read as setting `env`. Raises ConfigError (one line) if it is not valid.

    Args:
        source: where the value came from, for the message (default: the variable and,
            if it has one, its flag).
    """
    setting = BY_ENV[env]
    parser = KINDS[setting.kind][0]
    try:
        value = parser(raw)
        if setting.minimum is not None and value < setting.minimum:
            raise ValueError(raw)
    except (TypeError, ValueError):
        shown = "" if setting.secret else f", got {str(raw)[:80]!r}"
        raise ConfigError(f"{source or setting.names()}: must be {setting.accepted()}{shown}") \
            from None
    return value  # a store URL's own rules are checked by ph.stores.parse_store_url


def value(env: str, given: Any = None, environ: Mapping[str, str] | None = None) -> Any:
    """The setting's value: `given` (a flag or setup() argument) if not None, else the
    variable if set and not empty, else the default."""
    if given is not None:
        return parse(env, given)
    raw = (os.environ if environ is None else environ).get(env)
    if raw in (None, ""):
        return BY_ENV[env].default
    return parse(env, raw)


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Parse every setting set in the environment, so a bad one stops a server or worker
    at start-up, not at the first call that reads it.

    Raises:
        ConfigError: one line for the first bad variable.
    """
    for setting in SETTINGS:
        value(setting.env, environ=environ)


def cache_root() -> Path:
    """PH_CACHE_DIR, else $XDG_CACHE_HOME/ph, else ~/.cache/ph."""
    root = value("PH_CACHE_DIR")
    return Path(root) if root else \
        Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "ph"


def markdown_table() -> str:
    """The README's settings table (tests/test_settings.py keeps them equal)."""
    rows = ["| variable | flag | default | accepted | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        rows.append(f"| `{s.env}` | {f'`{s.flag}`' if s.flag else ''} | {s.shown_default()} "
                    f"| {s.accepted()} | {s.meaning} |")
    return "\n".join(rows)
