"""LocalStore's blobs by content (base.Blobs): user Python sources and training data sets,
each a file under the heads folder (the layout: ph.stores.local), written once, atomically.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import WeightsError
from .base import content_id, dataset_bytes, dataset_rows, snapshot_bytes, snapshot_state
from .fileio import atomic_write_bytes


class LocalBlobs:
    """base.Blobs for LocalStore, which gives `root` (the heads folder)."""

    root: Path

    def save_code(self, source: str) -> str:
        """Store a user source by content; returns its digest."""
        digest = content_id(source.encode("utf-8"))
        path = self.root / "_code" / f"{digest}.py"
        if not path.exists():
            atomic_write_bytes(path, source.encode("utf-8"))
        return digest

    def load_code(self, digest: str) -> str:
        path = self.root / "_code" / f"{digest}.py"
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise WeightsError(f"user code {digest} is missing from {path.parent}; create the "
                               "head list (or head) again with its source") from None

    def save_dataset(self, rows: list[dict]) -> str:
        """Store a training data set by content (once, whoever trains on it); returns its id."""
        data = dataset_bytes(rows)
        digest = content_id(data)
        path = self.root / "_data" / f"{digest}.jsonl"
        if not path.exists():
            atomic_write_bytes(path, data)
        return digest

    def load_dataset(self, digest: str) -> list[dict]:
        """The rows of a stored data set. Raises FileNotFoundError if it is gone."""
        return dataset_rows((self.root / "_data" / f"{digest}.jsonl").read_bytes())

    def save_snapshot(self, state: dict) -> str:
        """Store a parent's weights by content (see base.Blobs); returns their id."""
        data = snapshot_bytes(state)
        digest = content_id(data)
        path = self.root / "_bases" / f"{digest}.pt"
        if not path.exists():
            atomic_write_bytes(path, data)
        return digest

    def load_snapshot(self, digest: str) -> dict:
        try:
            data = (self.root / "_bases" / f"{digest}.pt").read_bytes()
        except FileNotFoundError:
            data = b""
        return snapshot_state(data, digest)
