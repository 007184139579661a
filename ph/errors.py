"""The errors ph raises on purpose.

Every message says what was wrong, where (config key path, uuid or file) and how to
fix it. `http_status` lets the server map a kind to a status code in one place.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class PHError(Exception):
    """Base of all ph errors."""

    kind = "error"
    http_status = 500

    def to_dict(self) -> dict:
        return {"error": self.kind, "message": str(self)}


class ConfigError(PHError):
    """A config (or an argument that is part of one) is invalid; lists every problem."""

    kind = "config"
    http_status = 400

    def __init__(self, problems: str | Iterable[str], source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            message = f"Invalid config{where}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"Invalid config{where}, {len(self.problems)} problems:\n{lines}"
        super().__init__(message)


class BadInputError(PHError):
    """Data or an argument given to an action cannot be used."""

    kind = "bad_input"
    http_status = 400


class WeightsError(PHError):
    """A weights file is missing, unreadable or does not fit the head's model."""

    kind = "weights"
    http_status = 400


class PermissionDeniedError(PHError):
    """The operator has not allowed this (remote code, a path outside allowed folders)."""

    kind = "forbidden"
    http_status = 403


class NotFoundError(PHError):
    """No head, job or action with this name."""

    kind = "not_found"
    http_status = 404


HeadNotFoundError = NotFoundError  # the name most callers meet it by


class ConflictError(PHError):
    """The request conflicts with existing state (a head exists, a training runs)."""

    kind = "conflict"
    http_status = 409


class TooLargeError(PHError):
    """More than the operator allows: a request body, examples per call or per head."""

    kind = "too_large"
    http_status = 413


class QuotaError(PHError):
    """Over a tenant's quota (heads, examples, jobs, requests per second): try again after
    `retry_after` seconds, or ask the operator to raise it."""

    kind = "quota"
    http_status = 429

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailableError(PHError):
    """The store's Redis or object store cannot be reached now; nothing was changed, and
    the same call can be made again once it is back."""

    kind = "unavailable"
    http_status = 503


class TrainingError(PHError):
    """Training started but failed; the head's current weights are unchanged."""

    kind = "training"
    http_status = 500


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' hint for a misspelt name, or '' (case counts least)."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""


def as_ph_error(exc: Exception, where: str) -> PHError:
    """An exception as a PHError (an unexpected one keeps its type in the message)."""
    if isinstance(exc, PHError):
        return exc
    return PHError(f"{where} failed: {type(exc).__name__}: {exc}")
