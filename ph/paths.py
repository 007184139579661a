"""PathPolicy: which files and code a caller may use.

The in-process module trusts its caller (the app's own JAC code): every path is
allowed. The remote server applies the operator's policy: paths only under the
folders it names, user Python only when it says so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInputError, PermissionDeniedError


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

    def resolve(self, path: str | os.PathLike, key: str) -> Path:
        """Absolute path for a user-given path (relative to the working folder).

        Raises:
            PermissionDeniedError: the policy does not allow this path.
        """
        try:
            raw = Path(os.path.expanduser(str(path)))
            full = (raw if raw.is_absolute() else (self.base_dir or Path.cwd()) / raw).resolve()
            full.exists()  # a NUL byte or an over-long name fails here, not later
        except (ValueError, OSError) as exc:
            raise BadInputError(f"{key}: '{str(path)[:80]}' is not a usable path ({exc})") from None
        if self.allowed_roots is None:
            return full
        if any(full == root or root in full.parents for root in self.allowed_roots):
            return full
        if not self.allowed_roots:
            raise PermissionDeniedError(f"{key}: this server does not read or write files named "
                                        f"in requests or their configs ('{path}'); its operator "
                                        "can allow folders with `ph serve --allow-path DIR`")
        roots = ", ".join(str(r) for r in self.allowed_roots)
        raise PermissionDeniedError(f"{key}: '{path}' is outside the folders this server allows "
                                    f"({roots}); use a path inside them")

    def check_code(self, what: str) -> None:
        """Refuse to run user Python unless allowed."""
        if not self.allow_code:
            raise PermissionDeniedError(f"{what}: this server does not run user Python code; its "
                                        "operator can allow it with `ph serve --allow-code`")
