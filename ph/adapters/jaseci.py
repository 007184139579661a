"""The Jaseci adapter: registers every ph action under the `ph` group.

Imported by `ph/__init__.py` only when Jaseci is already loaded (as it is during
`actions load module ph`), so the core never needs Jaseci.
"""
from __future__ import annotations

import functools
from typing import Callable

from jaseci.jsorc.live_actions import jaseci_action

from .. import api


def _as_action(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def action(*args, **kwargs):
        return fn(*args, **kwargs)

    action.__module__ = "ph"  # Jaseci unloads actions by the module that was loaded
    return jaseci_action(act_group=["ph"], allow_remote=True)(action)


def register() -> None:
    """(Re-)register the actions; runs on every import of `ph`, as Jaseci reloads it."""
    for fn in api.ACTIONS:
        _as_action(fn)
