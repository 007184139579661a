"""ExampleLog: a head's own training examples, stored with the head.

Why a log: examples arrive a few at a time (a user's correction), must survive a kill -9
once acknowledged, and must stay cheap to append to a head that already holds 100,000.
So each head has an append-only JSON-lines file. A call's examples are written as
lines followed by one commit line, and fsynced before the call returns. Readers take
only what a commit line closes: a crash in the middle of a call leaves lines (or half a
line) after the last commit, which readers ignore and the next append cuts off. So a
call is stored whole or not at all, and only data never acknowledged can be lost.
Deleting rewrites the file atomically (temp + rename), so a deleted example is gone
from the file, not merely hidden.

File (`<heads>/<uuid>/examples.jsonl`):
    {"format": "ph-examples/1", "base_id": 0, "generation": "5f0c..."}   header
    {"id": 1, "label": "order_food", "text": "..."}         one example per line
    {"commit": 1}                                           end of one call
Ids grow by one per example and are never reused, even after deletes (a rewritten
file's header carries the last id given out), so "added after id N" stays meaningful:
incremental training relies on it. Each rewrite gets a new `generation`, so a summary
remembered from an earlier file is never mistaken for this one (even if the file
system reuses the inode number).

The interface is base.StoredExamples (summary, iter, read, append, delete), so another
backend's log (ObjectExampleLog: chunks in an object store) stands in for this file.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from .. import settings
from .base import LogSummary, json_line, label_kind, numbered, page, without
from .fileio import atomic_open, fsync_dir

__all__ = ["ExampleLimits", "ExampleLog", "LogSummary", "label_kind"]  # the last two: from base

log = logging.getLogger("ph.examples")
FORMAT = "ph-examples/1"
EMBEDDINGS_DIR = "embeddings"  # beside the log: its examples' embeddings (base.Embeddings)
INPUT_KEYS = ("text", "input_ids", "embedding")


@dataclass(frozen=True)
class ExampleLimits:
    """How many examples one call may add and one head may hold (operators may change
    them: `setup(max_examples_per_call=..., max_examples_per_head=...)` or the
    PH_MAX_EXAMPLES_PER_CALL / PH_MAX_EXAMPLES_PER_HEAD variables)."""

    per_call: int = 1000
    per_head: int = 100_000

    @classmethod
    def from_env(cls, per_call: int | str | None = None,
                 per_head: int | str | None = None) -> "ExampleLimits":
        values = {}
        for name, given, env in (("per_call", per_call, "PH_MAX_EXAMPLES_PER_CALL"),
                                 ("per_head", per_head, "PH_MAX_EXAMPLES_PER_HEAD")):
            values[name] = settings.value(env) if given is None else \
                settings.parse(env, given, f"max_examples_{name} ({env})")
        return cls(**values)


# Summaries by file path, refreshed from the bytes appended since (by any process):
# a head's first call in a process reads its log once, later calls read only what is new.
_summaries: dict[str, LogSummary] = {}
_summaries_lock = threading.Lock()
_SUMMARIES_KEPT = 4096


class ExampleLog:
    """One head's examples in an append-only JSON-lines file. Writers hold the head's lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # --- reading -----------------------------------------------------------------------
    def summary(self) -> LogSummary:
        """Count, last id and label kind of the stored examples (torn tail ignored)."""
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return LogSummary()
        with fh:
            generation = _generation(fh.readline())
            size = os.fstat(fh.fileno()).st_size
            with _summaries_lock:
                cached = _summaries.get(str(self.path))
            if cached is not None and cached.generation == generation and cached.size <= size:
                summary = replace(cached, names=set(cached.names))
                if cached.size == size:
                    return summary
            else:
                summary = LogSummary(generation=generation)
            fh.seek(summary.size)
            for end, rows, last_id in self._calls(fh, summary.size):
                for row in rows:
                    summary.add(row)
                summary.last_id, summary.size = max(summary.last_id, last_id), end
        self._remember(summary)
        return replace(summary, names=set(summary.names))

    def read(self, offset: int = 0, limit: int | None = None) -> list[dict]:
        """The stored examples in the order they were added (from position `offset`)."""
        return page(self.iter(), offset, limit)

    def iter(self) -> Iterator[dict]:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        with fh:
            for _, rows, _ in self._calls(fh, 0):
                yield from rows

    def _calls(self, fh, start: int) -> Iterator[tuple[int, list[dict], int]]:
        """(end offset, rows, last id given out) per committed call (the header counts as
        one). Lines after the last commit belong to a call cut short by a crash: they were
        never acknowledged and are not yielded."""
        offset, pending = start, []
        for line in fh:
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("%s: skipping an unreadable line ending at byte %d", self.path, offset)
                continue
            if not isinstance(obj, dict):
                continue
            if "commit" in obj:
                yield offset, pending, int(obj["commit"])
                pending = []
            elif "format" in obj:
                yield offset, [], int(obj.get("base_id", 0))
            elif "id" in obj:
                pending.append(obj)
        if pending or offset < os.fstat(fh.fileno()).st_size:
            log.info("%s: ignoring the end of an unfinished write (%d examples never "
                     "acknowledged)", self.path, len(pending))

    # --- writing (caller holds the head's lock) -----------------------------------------
    def append(self, rows: list[dict]) -> LogSummary:
        """Give `rows` the next ids and store them durably, all or none; returns the new
        summary. On any error nothing of this call stays in the file.
        """
        summary = self.summary()
        new_file = not self.path.exists()
        stored, after = numbered(summary, rows)
        lines = [json_line(row) for row in stored] + [json_line({"commit": after.last_id})]
        if new_file or summary.size == 0:
            after.generation = uuid.uuid4().hex[:16]
            lines.insert(0, _header(summary.last_id, after.generation))
        data = b"".join(lines)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, summary.size)  # cut off a torn tail (it was never acknowledged)
            try:
                os.lseek(fd, summary.size, os.SEEK_SET)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, summary.size)
                raise
            after.size = summary.size + len(data)
        finally:
            os.close(fd)
        if new_file:
            fsync_dir(self.path.parent)
        self._remember(after)
        return after

    def delete(self, ids: set[int] | None = None) -> int:
        """Remove the examples with these ids (all when None); returns how many went."""
        summary = self.summary()
        if not self.path.exists():
            return 0
        kept, after = without(summary, self.iter(), ids)
        removed = summary.count - after.count
        if removed == 0:
            return 0
        with atomic_open(self.path) as fh:
            fh.write(_header(summary.last_id, uuid.uuid4().hex[:16]))
            for row in kept:
                fh.write(json_line(row))
            if kept:
                fh.write(json_line({"commit": summary.last_id}))
        with _summaries_lock:
            _summaries.pop(str(self.path), None)
        shutil.rmtree(self.path.parent / EMBEDDINGS_DIR, ignore_errors=True)  # derived from them
        return removed

    def _remember(self, summary: LogSummary) -> None:
        with _summaries_lock:
            if len(_summaries) >= _SUMMARIES_KEPT:
                _summaries.pop(next(iter(_summaries)))
            _summaries[str(self.path)] = replace(summary, names=set(summary.names))


def _header(base_id: int, generation: str) -> bytes:
    return json_line({"format": FORMAT, "base_id": base_id, "generation": generation})


def _generation(first_line: bytes) -> str:
    try:
        return str(json.loads(first_line).get("generation", "")) if first_line.endswith(b"\n") else ""
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return ""
