"""Where heads live: one store interface, two backends, picked by one setting.

    (nothing), a path, file:///path   LocalStore: the heads folder (default; no servers)
    redis://[:PASSWORD@]HOST[:PORT][/DB]?objects=s3://BUCKET[/PREFIX][&endpoint=URL][&namespace=NS]
    rediss://...                      the same over TLS
                                      RedisStore: records, revisions, locks and jobs in
                                      Redis; weights, user code and examples in the
                                      S3-compatible object store (AWS S3, MinIO, Ceph)

The setting is `--store URL` for `ph serve` and `ph worker`, `setup(store=URL)` in
Python, and $PH_STORE everywhere (the Jaseci module reads it). With RedisStore the
heads folder (`--heads-dir`, $PH_HEADS_DIR) is only this machine's cache of immutable
objects: every machine may have its own. S3 credentials come from the usual AWS
variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION), the endpoint
from `endpoint=` or AWS_ENDPOINT_URL.

Why two implementations rather than one over fsspec: the local folder relies on what
POSIX gives for free (atomic rename, flock, a stat per call to see changes), and an
object store has none of them; sharing the code would make the local backend slower
or the object one wrong. What they share sits in `base` and above (the registry).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigError
from .base import RUNS_KEPT, check_uuid, new_uuid
from .local import LocalStore

__all__ = ["LocalStore", "RUNS_KEPT", "check_uuid", "new_uuid", "open_store", "store_url",
           "is_distributed"]
DISTRIBUTED_SCHEMES = ("redis", "rediss")


def store_url(given: str | None = None) -> str | None:
    """The store setting: the given value, else $PH_STORE, else None (the local folder)."""
    value = given if given not in (None, "") else os.environ.get("PH_STORE") or None
    return value


def is_distributed(url: str | None) -> bool:
    return bool(url) and urlsplit(str(url)).scheme in DISTRIBUTED_SCHEMES


def open_store(url: Any, heads_dir: str | os.PathLike = "heads") -> Any:
    """The store `url` names (see the module docstring); `heads_dir` is the local folder
    (LocalStore) or this machine's object cache (RedisStore).

    Raises:
        ConfigError: the URL is malformed, saying what a good one looks like.
    """
    if url is None or url == "":
        return LocalStore(heads_dir)
    if not isinstance(url, (str, os.PathLike)):
        return url  # already a store
    url = str(url)
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        return LocalStore(parts.path if parts.scheme else url)
    if parts.scheme not in DISTRIBUTED_SCHEMES:
        raise ConfigError(f"store: unknown kind '{parts.scheme}://' in '{_shown(url)}'; use a "
                          "folder path (file:///path) or redis://HOST:PORT/DB?objects=s3://BUCKET")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    objects = query.pop("objects", None)
    if not objects or urlsplit(objects).scheme != "s3" or not urlsplit(objects).netloc:
        raise ConfigError(f"store: '{_shown(url)}' needs objects=s3://BUCKET[/PREFIX], the object "
                          "store that holds weights, code and examples")
    unknown = set(query) - {"endpoint", "namespace"}
    if unknown:
        raise ConfigError(f"store: unknown setting(s) {sorted(unknown)} in '{_shown(url)}'; the "
                          "settings are objects, endpoint and namespace")
    try:
        parts.port  # raises for a port that is not a number from 0 to 65535
    except ValueError:
        raise ConfigError(f"store: the port in '{_shown(url)}' is not a number from 0 to "
                          "65535; use redis://HOST:PORT/DB?objects=s3://BUCKET") from None
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ConfigError(f"store: the database in '{_shown(url)}' must be a number (redis://"
                          "HOST:PORT/DB, e.g. /0)")
    from .redis_store import RedisStore  # needs redis and boto3: only imported when used
    redis_url = parts._replace(query="", fragment="").geturl()
    return RedisStore(redis_url, objects, query.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL"),
                      query.get("namespace", "ph"), Path(heads_dir))


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url
