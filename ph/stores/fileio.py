"""Crash-safe files: atomic writes (temp file, fsync, rename) and inter-process locks.

Readers never see a half-written file; writers in several processes take a lock.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import (os.umask can only be read by setting it)


@contextlib.contextmanager
def atomic_open(path: Path, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` only when the block ends without error, so
    readers see the old file or the new one, whole. `durable=False` skips the fsyncs (a
    cache a crash may cut short: its reader checks and fetches again)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; honour the umask
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    with atomic_open(path, durable) as fh:
        fh.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temp file; the result loads with weights_only=True."""
    with atomic_open(path) as fh:
        torch.save(obj, fh)


def load_state(source: Any) -> dict:
    """A state dict saved by atomic_torch_save (a path or an open file), on the CPU;
    `weights_only`, so a stored file can never run code when it is loaded."""
    return torch.load(source, map_location="cpu", weights_only=True)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # from Linux <fcntl.h> and <linux/fs.h>


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap what two existing paths name in one atomic step (Linux renameat2 with
    RENAME_EXCHANGE), so a reader of either path sees one side or the other, never
    nothing. Returns False where the system or its file system cannot (e.g. NFS): the
    caller then needs another way.

    Raises:
        OSError: the swap was possible but failed (a path is missing, no permission).
    """
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        fsync_dir(Path(b).parent)
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@functools.lru_cache(maxsize=1)
def _renameat2():
    """libc's renameat2, or None where there is none (glibc before 2.28, not Linux)."""
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """An advisory lock on `path` (created if missing) held across processes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
