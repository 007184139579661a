"""What every store shares: uuid rules (a uuid is a folder name or a key part, so it must
never be able to name anything outside its head)."""
from __future__ import annotations

import re
import uuid as uuidlib
from typing import Any

from ..errors import BadInputError

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
