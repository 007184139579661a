"""Embeddings kept on this machine's disk per encoder identity, so that no process here
encodes a text twice: a training job finds its stored examples' embeddings from earlier
runs (and the server's) and loads no encoder at all when every text is there.

One SQLite file per encoder identity (the hash of its model files, backend, quantization
and library versions: two models of one name never share rows) in the cache folder,
written in WAL mode so that the server and training jobs read and write it at once.
Rows are (sha256 of the text, float32 vector); a row that cannot be read is dropped.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

import torch

log = logging.getLogger("ph.encoders")
LOOKUP_CHUNK = 500  # SQLite's default limit of bound variables is 999


class EmbeddingStore:
    """text -> vector of one encoder, on disk."""

    def __init__(self, path: Path, dim: int):
        self.path, self.dim = path, dim
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS rows (key BLOB PRIMARY KEY, vec BLOB NOT NULL)")

    def get(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The texts found, with their vectors (a store that fails to read finds none)."""
        keys = {text_key(t): t for t in texts}
        found: dict[str, torch.Tensor] = {}
        try:
            db = self._db()
            items = list(keys)
            for start in range(0, len(items), LOOKUP_CHUNK):
                chunk = items[start:start + LOOKUP_CHUNK]
                rows = db.execute(f"SELECT key, vec FROM rows WHERE key IN ({','.join('?' * len(chunk))})",
                                  chunk).fetchall()
                for key, vec in rows:
                    if len(vec) == 4 * self.dim:
                        found[keys[key]] = torch.frombuffer(bytearray(vec), dtype=torch.float32)
        except sqlite3.Error as exc:
            log.warning("embedding store %s unreadable (%s): encoding instead", self.path, exc)
        return found

    def put(self, rows: dict[str, torch.Tensor]) -> None:
        if not rows:
            return
        try:
            with self._db() as db:
                db.executemany("INSERT OR IGNORE INTO rows (key, vec) VALUES (?, ?)",
                               [(text_key(t), v.to(torch.float32).contiguous().numpy().tobytes())
                                for t, v in rows.items()])
        except sqlite3.Error as exc:
            log.warning("embedding store %s not written (%s)", self.path, exc)

    def count(self) -> int:
        with contextlib.suppress(sqlite3.Error):
            return self._db().execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        return 0

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:  # one connection per thread: sqlite3 connections are not shared
            db = sqlite3.connect(self.path, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a lost row is only encoded again
            self._local.db = db
        return db


def text_key(text: str) -> bytes:
    """A text's row key (32 bytes): the embedding store's and the heads' packs'."""
    return hashlib.sha256(text.encode("utf-8")).digest()
