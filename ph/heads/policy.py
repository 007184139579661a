"""PathPolicy: which files and code a caller may use.

The in-process module trusts its caller (the app's own JAC code): every path is
allowed. The remote server applies the operator's policy: paths only under the
folders it names, user Python only when it says so.

Who may store which paths. A config is stored (the head list, a head's record) by one
caller and used later by another, maybe a more trusted one: a remote client could
store `train_json: /etc/secret` or `save_dir: /etc/cron.d` that the in-process app,
which may use any path, would later read or write while training the head. So a
stored config remembers the allowed folders of every restricted caller that wrote any
part of it (`path_limits`: one list of folders per such caller; empty when only
unrestricted callers did). A head created from the head list inherits the list's
limits for its whole config, and a child its parent's.

A path taken from a stored config must lie inside the folders of each caller in its
limits, as well as be allowed by the policy of the caller using it: the starting
weights, python_file and encoder model folder when a head is created; train_json,
save_dir and resume when it trains. The model folder is checked against the limits
again before any process loads it (a relative one names a folder in that process's
working folder); the loading process's own policy does not apply there, as before,
since serving a head names no path. A path a caller names in its own call (a training
override, a config file, load_weights) answers to that caller's policy only. So a
remote client can never make anyone use a path it could not use itself. Records
written before this rule have no limits (they count as stored by an unrestricted caller).

Tenants of one server (ph.server.tenants) do not share files: while a tenant's call runs
(`path_scope` set to its name), a restricted policy allows only `<folder>/<tenant>` of
each folder it allows, and relative paths start in the first of them (`scoped`).
"""
from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInputError, PermissionDeniedError


path_scope: contextvars.ContextVar[str | None] = contextvars.ContextVar("ph_path_scope",
                                                                      default=None)


@dataclass(frozen=True)
class PathPolicy:
    """`allowed_roots=None` allows every path; a tuple allows only paths inside those folders."""

    allowed_roots: tuple[Path, ...] | None = None
    allow_code: bool = True
    base_dir: Path | None = field(default=None, compare=False)

    @classmethod
    def restricted(cls, roots=(), allow_code: bool = False, base_dir=None) -> "PathPolicy":
        return cls(tuple(Path(r).resolve() for r in roots), allow_code,
                   Path(base_dir).resolve() if base_dir else None)

    def scoped(self) -> "PathPolicy":
        """The policy as the current caller has it: a tenant's call (path_scope) may use
        only its own subfolder of each allowed folder, where its relative paths start."""
        tenant = path_scope.get()
        if tenant is None or self.allowed_roots is None:
            return self
        roots = tuple(root / tenant for root in self.allowed_roots)
        return _Scoped(roots, self.allow_code, roots[0] if roots else self.base_dir)

    def resolve(self, path: str | os.PathLike, key: str) -> Path:
        """Absolute path for a user-given path (relative to the working folder).

        Raises:
            PermissionDeniedError: the policy does not allow this path.
        """
        scoped = self.scoped()
        if scoped is not self:
            return scoped.resolve(path, key)
        try:
            raw = Path(os.path.expanduser(str(path)))
            full = (raw if raw.is_absolute() else (self.base_dir or Path.cwd()) / raw).resolve()
            full.exists()  # a NUL byte or an over-long name fails here, not later
        except (ValueError, OSError) as exc:
            raise BadInputError(f"{key}: '{str(path)[:80]}' is not a usable path ({exc})") from None
        if self.allowed_roots is None:
            return full
        if any(_inside(full, root) for root in self.allowed_roots):
            return full
        if not self.allowed_roots:
            raise PermissionDeniedError(f"{key}: this server does not read or write files named "
                                        f"in requests or their configs ('{path}'); its operator "
                                        "can allow folders with `ph serve --allow-path DIR`")
        roots = ", ".join(str(r) for r in self.allowed_roots)
        raise PermissionDeniedError(f"{key}: '{path}' is outside the folders this server allows "
                                    f"({roots}); use a path inside them")

    def limits(self) -> list[list[str]]:
        """What a config stored by a caller under this policy records of it: its allowed
        folders (one list), or nothing when it allows every path."""
        roots = self.scoped().allowed_roots
        return [] if roots is None else [[str(r) for r in roots]]

    def check_code(self, what: str) -> None:
        """Refuse to run user Python unless allowed."""
        if not self.allow_code:
            raise PermissionDeniedError(f"{what}: this server does not run user Python code; its "
                                        "operator can allow it with `ph serve --allow-code`")


@dataclass(frozen=True)
class _Scoped(PathPolicy):
    """A policy already narrowed to a tenant's folders (it narrows no further)."""

    def scoped(self) -> "PathPolicy":
        return self


def merge_limits(*limits: list | None) -> list[list[str]]:
    """The limits of a config that several callers wrote parts of: each caller's, once."""
    merged: dict[tuple, list[str]] = {}
    for group in limits:
        for roots in group or ():
            merged.setdefault(tuple(roots), list(roots))
    return list(merged.values())


def check_stored_path(full: Path, limits: list | None, key: str) -> None:
    """Refuse `full`, a resolved path taken from a stored config, unless it lies inside the
    allowed folders of every restricted caller that stored the config (`limits`).

    Raises:
        PermissionDeniedError: it lies outside one caller's folders, naming them.
    """
    for roots in limits or ():
        if not any(_inside(full, Path(root)) for root in roots):
            folders = ", ".join(roots) or "none"
            raise PermissionDeniedError(
                f"{key}: '{full}' comes from a config that a restricted caller (a remote "
                f"client) stored, which may only name paths inside the folders that caller may "
                f"use ({folders}). Name the path in this call instead (e.g. in train_head's "
                "config), or create the head again from a caller allowed to use it")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
