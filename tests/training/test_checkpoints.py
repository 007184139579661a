"""Checkpoint snapshots and the background writer."""
from __future__ import annotations

import pytest
import torch

from ph.training.checkpoints import CheckpointWriter, snapshot
from ph.errors import TrainingError


def test_a_snapshot_does_not_change_when_training_changes_its_tensors():
    live = {"w": torch.zeros(3), "nested": {"m": [torch.ones(2)]}, "step": 4}
    copy = snapshot(live)
    live["w"].add_(1)
    live["nested"]["m"][0].mul_(5)
    assert copy["w"].tolist() == [0, 0, 0] and copy["nested"]["m"][0].tolist() == [1, 1]
    assert copy["step"] == 4


def test_the_writer_saves_links_best_and_keeps_only_its_newest(tmp_path):
    writer = CheckpointWriter(tmp_path, keep=2)
    for epoch in (1, 2, 3):
        writer.submit({"epoch": epoch}, epoch, periodic=True, best=epoch == 2)
    writer.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best_model.pt", "checkpoint-epoch2.pt", "checkpoint-epoch3.pt"]
    assert torch.load(tmp_path / "best_model.pt", weights_only=True)["epoch"] == 2


def test_a_failed_write_is_reported_by_wait(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    writer = CheckpointWriter(blocker, keep=0)
    writer.submit({"epoch": 1}, 1, periodic=True, best=False)
    with pytest.raises(TrainingError, match="could not write a checkpoint"):
        writer.wait()
