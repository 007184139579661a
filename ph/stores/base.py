"""What every store shares: uuid rules (a uuid is a folder name or a key part, so it must
never be able to name anything outside its head) and how long job records are kept."""
from __future__ import annotations

import os
import re
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from ..errors import BadInputError, ConfigError

RUNS_KEPT = 20  # training runs remembered in a head's record

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
        values = {}
        for name, env, meaning in (
                ("kept", "PH_JOB_RECORDS_KEPT", "how many finished job records to keep"),
                ("max_age_s", "PH_JOB_RECORDS_MAX_AGE_S", "seconds a finished job's record is kept")):
            raw = os.environ.get(env) or None
            if raw is None:
                continue
            try:
                values[name] = int(raw)
            except ValueError:
                values[name] = 0
            if values[name] < 1:
                raise ConfigError(f"{env}: must be a whole number >= 1 ({meaning}), got {raw!r}")
        return cls(**values)
