"""Weight history, in both stores: a head keeps its last PH_WEIGHT_HISTORY published
revisions, lists them, and rolls back to one atomically (served as the next revision,
undoable); weights that fall out of the history leave storage; a roll-back is refused
while the head trains and for a revision not kept. And a run's files: best_model.pt
without optimizer state, checkpoints with it, saved/ a few head sizes per run."""
from __future__ import annotations

import pytest
import torch

from helpers.heads import small_config, write_json
from helpers.intent_data import make_split
from ph.errors import BadInputError, ConflictError, NotFoundError

TEXTS = ["order a pizza", "will it rain tomorrow", "play some jazz", "wake me at 7"]


@pytest.fixture
def data(workdir):
    train, _ = make_split(seed=1, per_intent=6)
    return str(write_json(workdir / "train.json", train))


def train(registry, data, seed: int) -> dict:
    return registry.train("h", {"Trainer": {"seed": seed, "dataloader": {"args": {"train_json": data}},
                                            "trainer": {"epochs": 2}}})


def stored_weights(store) -> set[str]:
    """Every weights file or object of head 'h' in storage."""
    if getattr(store, "distributed", False):
        return {n for n in store.objects.list("heads/h/") if "/weights-" in n}
    return {p.name for p in (store.root / "h").glob("weights-*.pt")}


def test_a_head_keeps_its_last_revisions_and_rolls_back_to_one(any_registry, data):
    registry = any_registry
    registry.create_head("h", small_config())
    answers = {}
    for seed in (1, 2, 3, 4):
        revision = train(registry, data, seed)["revision"]
        answers[revision] = registry.predict("h", TEXTS)
    assert [r["revision"] for r in registry.list_revisions("h")] == [4, 3, 2]  # 3 kept
    assert [r["current"] for r in registry.list_revisions("h")] == [True, False, False]
    assert len(stored_weights(registry.store)) == 3  # revision 1's weights are gone

    rolled = registry.rollback_head("h", 2)
    assert rolled == {"uuid": "h", "revision": 5, "rolled_back_to": 2,
                      "labels": registry.check_head("h")["labels"]}
    assert registry.predict("h", TEXTS) == answers[2]
    assert [r["revision"] for r in registry.list_revisions("h")] == [5, 4, 3]
    assert registry.list_revisions("h")[0]["rolled_back_to"] == 2
    registry.rollback_head("h", 4)  # undo: revision 4 was kept when 5 replaced it
    assert registry.predict("h", TEXTS) == answers[4]
    assert len(stored_weights(registry.store)) == 3


def test_a_fresh_registry_serves_the_rolled_back_weights(any_registry, data, workdir, any_store):
    from ph.heads.service import HeadRegistry
    any_registry.create_head("h", small_config())
    train(any_registry, data, 1)
    before = any_registry.predict("h", TEXTS)
    train(any_registry, data, 7)
    any_registry.rollback_head("h", 1)
    other = HeadRegistry(workdir / "other", store=any_store) if any_store else \
        HeadRegistry(any_registry.store.root)
    assert other.predict("h", TEXTS) == before


def test_rolling_back_to_a_revision_not_kept_says_which_are(registry, data):
    registry.create_head("h", small_config())
    train(registry, data, 1)
    train(registry, data, 2)
    with pytest.raises(NotFoundError, match=r"no revision 7 .*kept: 1; current: 2"):
        registry.rollback_head("h", 7)
    with pytest.raises(BadInputError, match="whole number"):
        registry.rollback_head("h", "1")
    assert registry.check_head("h")["revision"] == 2


def test_a_history_of_one_keeps_only_the_current_weights(registry, data, monkeypatch):
    monkeypatch.setenv("PH_WEIGHT_HISTORY", "1")
    registry.create_head("h", small_config())
    train(registry, data, 1)
    train(registry, data, 2)
    assert [r["revision"] for r in registry.list_revisions("h")] == [2]
    assert stored_weights(registry.store) == {"weights-2.pt"}


def test_a_training_head_refuses_a_roll_back(registry, data):
    registry.create_head("h", small_config())
    train(registry, data, 1)
    train(registry, data, 2)
    with registry.store.training("h"):  # as a run holds it
        with pytest.raises(ConflictError, match="training"):
            registry.rollback_head("h", 1)


def test_a_run_keeps_weights_only_in_best_model_and_a_few_head_sizes(registry, data, workdir):
    registry.create_head("h", small_config())
    summary = registry.train("h", {"Trainer": {"dataloader": {"args": {"train_json": data}},
                                               "trainer": {"epochs": 6, "save_dir": "saved",
                                                           "save_period": 1}}})
    folder = workdir / "saved" / "models" / "PersonalizedHeadTrainer" / "h"
    assert sorted(p.name for p in folder.iterdir()) == ["best_model.pt", "checkpoint-epoch6.pt"]
    best = torch.load(folder / "best_model.pt", weights_only=True)
    assert "optimizer" not in best and "lr_scheduler" not in best and best["state_dict"]
    assert "optimizer" in torch.load(folder / "checkpoint-epoch6.pt", weights_only=True)
    head_bytes = (folder / "best_model.pt").stat().st_size
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 5 * head_bytes
    resumed = registry.train("h", {"Trainer": {"dataloader": {"args": {"train_json": data}},
                                               "trainer": {"epochs": 8, "save_dir": "saved2",
                                                           "resume": str(folder / "best_model.pt")}}})
    assert resumed["epochs_run"] == 8 - summary["best_epoch"]  # weights only: resumes all the same


def test_a_roll_back_to_weights_that_are_gone_is_refused_and_changes_nothing(registry, data):
    from ph.errors import WeightsError
    registry.create_head("h", small_config())
    train(registry, data, 1)
    train(registry, data, 2)
    (registry.store.root / "h" / "weights-1.pt").unlink()  # e.g. removed by hand
    with pytest.raises(WeightsError, match="revision 1 are gone"):
        registry.rollback_head("h", 1)
    assert registry.check_head("h")["revision"] == 2 and registry.predict("h", TEXTS)
