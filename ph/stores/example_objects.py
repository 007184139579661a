"""ObjectExampleLog: a head's stored examples for RedisStore, with ExampleLog's interface
and guarantees (ids never reused, a call stored whole or not at all, durable when it
returns, deleted examples gone from storage).

Each add_examples call becomes one immutable chunk object; one Redis key holds the
summary and the chunk names, and switches in one write after the chunk is uploaded. A
crash before that switch leaves an orphan chunk nobody names: the call was never
acknowledged. Deleting writes the kept rows as one new chunk, switches (queueing the
old chunks for removal in that same Redis write), then removes the old chunks: at once
if the object store answers, else by the sweeper once it does. Deleting some examples
reads the chunks first, so it is refused (503, nothing changed) while the object store
is away; deleting all reads nothing. Writers hold the head's lock (the registry takes it).
"""
from __future__ import annotations

import json
import time
import uuid as uuidlib
from dataclasses import asdict
from typing import TYPE_CHECKING, Iterator

from ..errors import ConflictError
from .base import LogSummary, json_line, numbered, page, without
from .sweeper import GC_PREFIX, embeddings_prefix

if TYPE_CHECKING:
    from .redis_store import RedisStore

READ_ATTEMPTS = 5


class ObjectExampleLog:
    """base.StoredExamples over RedisStore: what it uses of the store is its shared
    surface (call, redis, key, objects, switch_examples, forget_objects)."""

    def __init__(self, store: "RedisStore", uuid: str, inc: str):
        self.store, self.uuid, self.inc = store, uuid, inc
        self._key = store.key("ex", uuid, inc)

    def _state(self) -> tuple[LogSummary, list[str], str]:
        """(summary, chunk names, the id of the write that made them)."""
        raw = self.store.call(self.store.redis.get, self._key)
        if raw is None:
            return LogSummary(), [], ""
        state = json.loads(raw)
        summary = LogSummary(**{**state["summary"], "names": set(state["summary"]["names"])})
        return summary, state["chunks"], state.get("w", "")

    def summary(self) -> LogSummary:
        return self._state()[0]

    def iter(self) -> Iterator[dict]:
        """The rows in id order. A delete by another caller replaces the chunks (and
        removes the old ones) while they are being read: then the new chunk list is read
        and the rows go on after the last id given (ids only grow along the log)."""
        after = 0
        for attempt in range(READ_ATTEMPTS):
            try:
                for row in self._rows(self._state()[1]):
                    if row["id"] > after:
                        after = row["id"]
                        yield row
                return
            except FileNotFoundError:
                if attempt == READ_ATTEMPTS - 1:
                    raise ConflictError(f"head '{self.uuid}': its examples were rewritten "
                                        f"{READ_ATTEMPTS} times while being read; try "
                                        "again") from None

    def read(self, offset: int = 0, limit: int | None = None) -> list[dict]:
        return page(self.iter(), offset, limit)

    def append(self, rows: list[dict]) -> LogSummary:
        summary, chunks, written = self._state()
        stored, after = numbered(summary, rows)
        chunk = self._put(stored)
        self._switch(after, chunks + [chunk], written, [chunk])
        return after

    def delete(self, ids: set[int] | None = None) -> int:
        summary, chunks, written = self._state()
        kept, after = without(summary, self._rows(chunks), ids)
        removed = summary.count - after.count
        if removed == 0:
            return 0
        new = [self._put(kept)] if kept else []
        self._switch(after, new, written, new, dropped=chunks)
        self.store.forget_objects(chunks, f"examples were deleted from head '{self.uuid}'; "
                                          "their stored chunks", queued=True)
        self.store.forget_objects([GC_PREFIX + embeddings_prefix(self.uuid, self.inc)],
                                  f"examples were deleted from head '{self.uuid}'; its "
                                  "embedding packs")
        return removed

    def _put(self, rows: list[dict]) -> str:
        name = f"heads/{self.uuid}/{self.inc}/examples/{uuidlib.uuid4().hex}.jsonl"
        self.store.objects.put(name, b"".join(json_line(row) for row in rows))
        return name

    def _rows(self, chunks: list[str]) -> Iterator[dict]:
        for chunk in chunks:
            for line in self.store.objects.get(chunk).splitlines():
                yield json.loads(line)

    def _switch(self, summary: LogSummary, chunks: list[str], expected: str,
                uploaded: list[str], dropped: list[str] | None = None) -> None:
        """Switch to `chunks` if the log is still as written by `expected`: the head lock
        serialises writers, and this catches one whose lock ran out meanwhile. The
        `dropped` chunks are queued for removal in that same write."""
        write_id = uuidlib.uuid4().hex[:12]
        state = {"summary": {**asdict(summary), "names": sorted(summary.names)},
                 "chunks": chunks, "w": write_id}
        if not self.store.call(self.store.switch_examples,  # leases.EXAMPLES_SWITCH
                               keys=[self._key, self.store.key("gc")],
                               args=[expected, json.dumps(state), write_id, time.time(),
                                     *(dropped or [])]):
            self.store.forget_objects(uploaded, f"head '{self.uuid}': the refused upload "
                                                "of examples")
            raise ConflictError(f"head '{self.uuid}': its examples were changed by another "
                                "call meanwhile; nothing was stored: try again")
