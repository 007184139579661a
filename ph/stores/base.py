"""What every store shares: uuid rules (a uuid is a folder name or a key part, so it must
never be able to name anything outside its head) and how long job records are kept."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import BadInputError, ConfigError

RUNS_KEPT = 20  # training runs remembered in a head's record
ACTIVE = ("queued", "running")  # a job in these states owns its head

UUID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_uuid(uuid: Any) -> str:
    """The uuid if it is safe as a folder name (it can never name a path outside the store)."""
    if not isinstance(uuid, str) or not UUID_PATTERN.fullmatch(uuid) or ".." in uuid:
        shown = repr(uuid) if not isinstance(uuid, str) or len(uuid) <= 40 else repr(uuid[:40] + "...")
        raise BadInputError(f"uuid {shown} is not valid: use 1 to 128 letters, digits, '_', '-' "
                            "or '.', starting with a letter or digit (or omit it to get a new uuid4)")
    return uuid


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def content_id(data: bytes) -> str:
    """The name stored content goes by (user code, configs, data sets): the same bytes,
    one name."""
    return hashlib.sha256(data).hexdigest()[:32]


def dataset_bytes(rows: list[dict]) -> bytes:
    """A training data set (rows of {text | input_ids | embedding, label}) in the one
    canonical form both stores keep, so the same data always gets the same content id."""
    return b"".join(json.dumps(row, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
                    for row in rows)


def dataset_rows(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines() if line]


class SortedLocks:
    """`locks()` for a store with `lock(uuid)`."""

    @contextlib.contextmanager
    def locks(self, *uuids: str) -> Iterator[None]:
        """Several heads' locks, always taken in sorted order (so two callers never wait
        on each other)."""
        with contextlib.ExitStack() as stack:
            for uuid in sorted(set(uuids)):
                stack.enter_context(self.lock(uuid))
            yield


@dataclass(frozen=True)
class JobRetention:
    """How many records of finished jobs (succeeded, failed, stopped) a store keeps, and
    for how long; a queued or running job's record is always kept."""

    kept: int = 1000
    max_age_s: int = 7 * 24 * 3600

    @classmethod
    def from_env(cls) -> "JobRetention":
        """From PH_JOB_RECORDS_KEPT and PH_JOB_RECORDS_MAX_AGE_S (defaults where unset).

        Raises:
            ConfigError: a value is not a whole number >= 1, naming the variable.
        """
        return cls(env_int("PH_JOB_RECORDS_KEPT", cls.kept, 1,
                           "how many finished job records to keep"),
                   env_int("PH_JOB_RECORDS_MAX_AGE_S", cls.max_age_s, 1,
                           "seconds a finished job's record is kept"))


def env_int(env: str, default: int, minimum: int, meaning: str = "") -> int:
    """A whole-number setting from the environment (`default` where unset).

    Raises:
        ConfigError: not a whole number >= minimum, naming the variable.
    """
    raw = os.environ.get(env) or None
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"{env}: must be a whole number >= {minimum}"
                          f"{f' ({meaning})' if meaning else ''}, got {raw!r}")
    return value
