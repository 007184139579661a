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
or the object one wrong. The interface both give, with each method's contract, and what
they share are in `base`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from .. import settings
from ..errors import ConfigError
from .base import RUNS_KEPT, Store, check_uuid, new_uuid
from .local import LocalStore

__all__ = ["LocalStore", "RUNS_KEPT", "Store", "check_uuid", "new_uuid", "open_store", "store_url",
           "is_distributed", "mask_url", "parse_store_url", "RedisParts"]
DISTRIBUTED_SCHEMES = ("redis", "rediss")
GOOD_URL = ("a good one is redis://HOST:PORT/DB?objects=s3://BUCKET[/PREFIX][&endpoint=URL]"
            "[&namespace=NS], rediss:// for TLS, with :PASSWORD@ before HOST (/ ? # @ in it "
            "as %2F %3F %23 %40), or a folder path")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class RedisParts(NamedTuple):
    """What a distributed store URL names: RedisStore's arguments, less the cache folder."""

    redis_url: str  # the URL without its query, as Redis and Celery take it
    objects: str  # s3://BUCKET[/PREFIX]
    endpoint: str | None
    namespace: str


def store_url(given: str | None = None) -> str | None:
    """The store setting: the given value, else $PH_STORE, else None (the local folder)."""
    return settings.value("PH_STORE", given if given not in (None, "") else None)


def is_distributed(url: str | None) -> bool:
    # the scheme as urlsplit reads it, without urlsplit's errors for a malformed rest
    return bool(url) and str(url).partition(":")[0].strip().lower() in DISTRIBUTED_SCHEMES


def mask_url(url: str) -> str:
    """`url` for messages and logs: everything between `://` and its LAST `@` becomes ***.

    Not urlsplit's idea of the password: a password with an unencoded / ? # or @ moves
    where urlsplit looks, and part of it would be shown; the last @ always ends it."""
    url = str(url)
    at = url.rfind("@")
    if at < 0:
        return url
    scheme = _SCHEME.match(url)
    keep = scheme.end() if scheme and scheme.end() <= at else 0
    return f"{url[:keep]}***{url[at:]}"


def parse_store_url(url: str, setting: str = "store") -> str | RedisParts:
    """Check the store URL without connecting to anything, so that a bad one fails at
    start-up in one line: the local folder's path, or the parts of a distributed store.

    Raises:
        ConfigError: naming `setting` (--store, PH_STORE, store), what is wrong and what a
            good URL looks like; the password is masked (mask_url).
    """
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{mask_url(url)!r}: {problem}; {GOOD_URL}", source=setting)

    try:
        parts = urlsplit(url)
    except ValueError:  # urlsplit: "Invalid IPv6 URL" and the like
        raise bad("a '[' or ']' does not enclose an IPv6 address (HOST or [::1])") from None
    if parts.scheme in ("", "file"):
        return parts.path if parts.scheme else url
    if parts.scheme not in DISTRIBUTED_SCHEMES:
        raise bad(f"unknown kind '{parts.scheme}://' (the kinds are redis://, rediss://, "
                  "file:// and a folder path)")
    at, start = url.rfind("@"), url.find("://")
    if at >= 0 and (start < 0 or any(c in url[start + 3:at] for c in "/?#@")):
        raise bad("the password holds an unencoded '/', '?', '#' or '@' (or an '@' follows it)")
    if not parts.hostname:
        raise bad("the HOST is missing")
    try:
        parts.port  # raises for a port that is not a number from 0 to 65535
    except ValueError:
        raise bad("the port is not a number from 0 to 65535") from None
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise bad("the database (/DB after HOST:PORT) is not a number, e.g. /0")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    objects = query.pop("objects", None)
    try:
        objects_parts = urlsplit(objects or "")
    except ValueError:
        objects_parts = None
    if not objects_parts or objects_parts.scheme != "s3" or not objects_parts.netloc:
        raise bad("it needs objects=s3://BUCKET[/PREFIX], the object store that holds "
                  "weights, code and examples")
    unknown = set(query) - {"endpoint", "namespace"}
    if unknown:
        raise bad(f"unknown setting(s) {sorted(unknown)} (the settings are objects, endpoint "
                  "and namespace)")
    return RedisParts(parts._replace(query="", fragment="").geturl(), objects,
                      query.get("endpoint"), query.get("namespace", "ph"))


def open_store(url: Any, heads_dir: str | os.PathLike = "heads") -> Store:
    """The store `url` names (see the module docstring); `heads_dir` is the local folder
    (LocalStore) or this machine's object cache (RedisStore).

    Raises:
        ConfigError: the URL is malformed (see parse_store_url).
    """
    if url is None or url == "":
        return LocalStore(heads_dir)
    if not isinstance(url, (str, os.PathLike)):
        return url  # already a store
    parsed = parse_store_url(str(url))
    if isinstance(parsed, str):
        return LocalStore(parsed)
    from .redis_store import RedisStore  # needs redis and boto3: only imported when used
    return RedisStore(parsed.redis_url, parsed.objects,
                      parsed.endpoint or os.environ.get("AWS_ENDPOINT_URL"), parsed.namespace,
                      Path(heads_dir))
