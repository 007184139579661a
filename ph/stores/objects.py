"""ObjectStore: immutable blobs (weights, user code, example chunks) in an S3-compatible
store, with a local cache folder.

Every object ph writes is immutable: a new revision or chunk gets a new key. So a copy
cached on local disk never goes stale, a reader never sees half an object, and the only
thing that must switch atomically is the Redis record that names the key.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from .. import settings
from .. import metrics
from ..errors import StoreUnavailableError
from .fileio import atomic_write_bytes

# Fail fast while the object store is unreachable: a request gets a clear 503 in seconds,
# not after botocore's default minutes of retries.
CONNECT_TIMEOUT_S = 2
READ_TIMEOUT_S = 30
ATTEMPTS = 2
PRUNE_EVERY = 64  # downloads between two looks at the cache's size


def cache_limit() -> int:
    """Bytes of objects each machine caches ($PH_CACHE_MAX_BYTES, default 10 GiB)."""
    return settings.value("PH_CACHE_MAX_BYTES")


class ObjectStore:
    """Blobs under `s3://BUCKET/PREFIX`, cached in `cache_dir`."""

    def __init__(self, location: str, endpoint: str | None, cache_dir: Path):
        import boto3
        from botocore.config import Config

        parts = urlsplit(location)
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        self.endpoint = endpoint or "AWS S3"
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.max_cache_bytes = cache_limit()
        self._downloads = 0
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint,
            config=Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                          retries={"max_attempts": ATTEMPTS, "mode": "standard"}))

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, data: bytes) -> None:
        with self._errors(f"writing {name}"):
            self._client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data)

    def get(self, name: str) -> bytes:
        """The object's bytes. Raises FileNotFoundError if there is none."""
        with self._errors(f"reading {name}"):
            try:
                return self._client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"].read()
            except self._client.exceptions.NoSuchKey:
                raise FileNotFoundError(f"s3://{self.bucket}/{self.key(name)}") from None

    def cached(self, name: str) -> Path:
        """A local file with the object's bytes, downloaded once per machine (objects
        never change, so a cached copy is always current). Not fsynced: a copy a crash
        damaged is dropped by `forget_cached` when it fails to load, and fetched again."""
        digest = hashlib.sha256(self.key(name).encode()).hexdigest()[:40]
        path = self.cache_dir / digest[:2] / digest
        try:
            os.utime(path)  # recently used: pruned last
        except FileNotFoundError:
            atomic_write_bytes(path, self.get(name), durable=False)
            self._downloads += 1
            if self._downloads % PRUNE_EVERY == 0:
                self.prune()
        return path

    def forget_cached(self, name: str) -> None:
        digest = hashlib.sha256(self.key(name).encode()).hexdigest()[:40]
        (self.cache_dir / digest[:2] / digest).unlink(missing_ok=True)

    def prune(self) -> None:
        """Keep the cache under max_cache_bytes, removing the least recently used first
        (a removed object is downloaded again when next needed)."""
        files = []
        for path in self.cache_dir.glob("*/*"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                files.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_cache_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def list(self, prefix: str) -> Iterator[str]:
        """Names (without this store's prefix) of the objects under `prefix`."""
        return (name for name, _ in self.list_modified(prefix))

    def list_modified(self, prefix: str) -> Iterator[tuple[str, float]]:
        """(name, when it was last written, epoch seconds) of the objects under `prefix`:
        the sweeper judges an unnamed object only once it is older than its grace."""
        strip = len(self.key(""))
        with self._errors(f"listing {prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key(prefix))
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][strip:], item["LastModified"].timestamp()

    def modified(self, name: str) -> float | None:
        """When the object was last written (epoch seconds), None if there is none: a
        content-addressed object may be written again at any time, so the sweeper looks
        again just before removing one."""
        try:
            with self._errors(f"looking at {name}"):
                head = self._client.head_object(Bucket=self.bucket, Key=self.key(name))
        except FileNotFoundError:
            return None
        return head["LastModified"].timestamp()

    def delete(self, names: list[str]) -> None:
        """Remove these objects (absent ones count as removed). Raises
        StoreUnavailableError if the store cannot be reached or refuses any of them."""
        for start in range(0, len(names), 1000):  # the API's limit per call
            batch = [{"Key": self.key(n)} for n in names[start:start + 1000]]
            with self._errors("deleting objects"):
                answer = self._client.delete_objects(Bucket=self.bucket,
                                                     Delete={"Objects": batch, "Quiet": True})
            refused = answer.get("Errors") or []
            if refused:  # the call succeeds even where single keys were refused
                first = refused[0]
                raise _unavailable(f"the object store ({self.endpoint}, bucket '{self.bucket}') "
                                   f"refused deleting {len(refused)} object(s), e.g. "
                                   f"{first.get('Key')}: {first.get('Code')}",
                                   f"the object store refused deleting ({first.get('Code')})")

    def delete_prefix(self, prefix: str) -> None:
        self.delete(list(self.list(prefix)))

    def close(self) -> None:
        self._client.close()

    def check(self) -> None:
        """Raise a clear error now if the bucket cannot be reached (used at start-up)."""
        with self._errors("checking the bucket"):
            self._client.head_bucket(Bucket=self.bucket)

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Connection failures and server errors become StoreUnavailableError (503)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except FileNotFoundError:
            raise
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(doing) from None
            raise _unavailable(
                f"the object store ({self.endpoint}, bucket '{self.bucket}') refused {doing}: "
                f"{code or exc}; check the bucket exists and the credentials "
                "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) allow it",
                f"the object store refused it: {code or type(exc).__name__}") from None
        except (BotoCoreError, OSError) as exc:
            raise _unavailable(
                f"the object store ({self.endpoint}) cannot be reached while {doing} "
                f"({type(exc).__name__}); nothing was changed: try again when it is back",
                "the object store is unreachable") from None


def _unavailable(message: str, reason: str) -> StoreUnavailableError:
    """A 503 whose `reason` is the bare cause, for messages about a change that did
    happen (the full message says "nothing was changed", true of the call that failed)."""
    metrics.store_error("object_store")
    error = StoreUnavailableError(message)
    error.reason = reason
    return error
