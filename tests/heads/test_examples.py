"""Examples stored with a head: checked whole before storing, limits, training on them
(alone, with a train_json, in a background job), incremental training that keeps the old
labels, and kill -9 during training leaving examples and weights intact."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from helpers.heads import small_config, wait_job
from helpers.intent_data import as_label_lists
from ph.errors import BadInputError, ConfigError, TooLargeError
from ph.stores.example_files import ExampleLimits
from ph.training.plan import plan_examples
from ph.heads.service import HeadRegistry

NEW = "book_restaurant"


def text_config(**loop) -> dict:
    """Big enough to tell the intents apart on held-out utterances, still a second to train."""
    config = small_config(**loop)
    config["Model"]["args"].update(embedding_length=256, ph_ff_dim=128)
    config["Trainer"]["lr_scheduler"] = None
    return config


def accuracy(registry, uuid, rows) -> float:
    labels = registry.check_head(uuid)["labels"]
    predictions = registry.predict(uuid, [r["text"] for r in rows])
    return sum(labels[p] == r["label"] for p, r in zip(predictions, rows)) / len(rows)


@pytest.fixture
def head(registry):
    registry.create_head("u", small_config())
    return "u"


@pytest.fixture
def any_head(any_registry):
    """`head` on each store backend (`any_registry`)."""
    any_registry.create_head("u", small_config())
    return "u"


@pytest.mark.parametrize("examples, match", [
    ([{"text": "ok", "label": 1}, {"text": "x", "label": 9}], "record 1: label 9 is outside 0..7"),
    ([{"text": "ok", "label": [1.0, 2.0]}], "record 0: label is a vector, but this head is a classifier"),
])
def test_labels_must_fit_the_classifier(registry, head, examples, match):
    with pytest.raises(BadInputError, match=match.replace("[", r"\[")):
        registry.add_examples(head, examples)
    assert registry.check_head(head)["examples"] == 0


@pytest.mark.parametrize("examples, match", [
    ([{"text": "ok", "label": "a"}, {"text": "x", "label": 3}], "record 1: label 3 is one of the class indices"),
    ([{"text": "ok", "label": "a"}, {"input_ids": [0.1] * 5, "label": "a"}], "record 1: 'input_ids' has 5 numbers; this head takes vectors of 64"),
    ([{"text": "ok", "label": "a"}, {"embedding": [0.1, "x"], "label": "a"}], "record 1: 'embedding' must be a list of numbers"),
    ([{"text": "", "label": "a"}], "record 0: 'text' must be a non-empty string"),
    ([{"text": "ok", "label": "a"}, {"label": "b"}], "record 1 has no 'text'"),
    ({str(i): ["x"] for i in range(8)}, "would have 9 classes but its model has n_classes=8"),
    ("order pizza", "unknown layout"),
])
def test_a_bad_call_names_the_record_and_stores_nothing(registry, head, examples, match):
    registry.add_examples(head, [{"text": "first", "label": "a"}])
    with pytest.raises(BadInputError, match=match.replace("(", r"\(").replace("[", r"\[")):
        registry.add_examples(head, examples)
    assert [r["text"] for r in registry.list_examples(head)] == ["first"]


def test_labels_must_agree_with_the_examples_already_stored(any_registry, any_head):
    any_registry.add_examples(any_head, {"greet": ["hi", "hello"]})
    with pytest.raises(BadInputError, match="record 0.*the head's 2 stored examples have class names"):
        any_registry.add_examples(any_head, [{"text": "yo", "label": 1}])


def test_vector_heads_take_vectors_of_their_size_with_vector_targets(registry):
    registry.create_head("v", {"Model": {"type": "PHVector2Vector",
                                         "args": {"input_dim": 4, "output_dim": 2}},
                               "Inference": {"preprocess": {"type": "V2VPreProcessor"},
                                             "postprocess": {"type": "V2VPostProcessor"}}})
    with pytest.raises(BadInputError, match="predicts vectors of 2 numbers"):
        registry.add_examples("v", [{"input_ids": [1, 2, 3, 4], "label": 1}])
    assert registry.add_examples("v", [{"input_ids": [[1, 2, 3, 4]], "label": [0.5, 1]}]) == 1
    for bad, match in (([{"text": "hi", "label": [0, 1]}], "takes vectors of 4 numbers, not text"),
                       ([{"input_ids": [1, 2, 3, 4], "label": [1, 2, 3]}], "targets have 2"),
                       ([{"input_ids": [1, 2, 3, 4], "label": 1}], "stored examples have vectors")):
        with pytest.raises(BadInputError, match=match):
            registry.add_examples("v", bad)
    assert registry.list_examples("v")[0]["input_ids"] == [1, 2, 3, 4]  # stored flat


def test_limits_per_call_and_per_head_are_clear_and_store_nothing(workdir):
    registry = HeadRegistry(workdir / "heads", limits=ExampleLimits(per_call=3, per_head=4))
    registry.create_head("u", small_config())
    with pytest.raises(TooLargeError, match="4 examples in one call; at most 3.*PH_MAX_EXAMPLES_PER_CALL"):
        registry.add_examples("u", {"a": ["1", "2", "3", "4"]})
    assert registry.add_examples("u", {"a": ["1", "2", "3"]}) == 3
    with pytest.raises(TooLargeError, match="holds 3 examples; adding 2 would pass its limit of 4"):
        registry.add_examples("u", {"a": ["4", "5"]})
    assert registry.check_head("u")["examples"] == 3
    with pytest.raises(BadInputError, match="at most 3 examples per call"):
        registry.list_examples("u", 0, 10)


def test_train_head_without_train_json_trains_on_the_stored_examples(any_registry, intents,
                                                                    workdir):
    any_registry.create_head("u", text_config())
    assert not (workdir / "train.json").exists()
    any_registry.add_examples("u", as_label_lists(intents[0]))
    summary = any_registry.train("u")
    assert summary["updated"] and summary["examples"] == {"stored": len(intents[0])}
    assert summary["n_train"] + summary["n_valid"] == len(intents[0])
    assert any_registry.check_head("u")["examples_seen"] == len(intents[0])


def test_with_a_train_json_it_trains_on_both_and_the_label_map_only_grows(registry, train_json,
                                                                          intents):
    registry.create_head("u", text_config())
    registry.train("u")  # the config's train.json, as before examples existed
    before = registry.check_head("u")["labels"]
    registry.add_examples("u", {"greet": ["hi there", "hello", "good morning", "hey"]})
    summary = registry.train("u", {"Trainer": {"dataloader": {"args": {"train_json": "train.json"}}}})
    assert summary["n_train"] + summary["n_valid"] == len(intents[0]) + 4
    after = registry.check_head("u")["labels"]
    assert after == before + ["greet"]
    summary = registry.train("u")  # no train_json given: the stored examples only
    assert summary["n_train"] + summary["n_valid"] == 4
    assert registry.check_head("u")["labels"] == after


def test_without_examples_or_train_json_the_error_says_how_to_add_data(registry, head):
    with pytest.raises(BadInputError, match="add_examples"):
        registry.train(head, {"Trainer": {"dataloader": {"args": {"train_json": None}}}})
    with pytest.raises(BadInputError, match="not found.*add_examples"):
        registry.train(head)


@pytest.mark.slow  # a job process
def test_a_background_job_trains_on_the_stored_examples(fresh_api, intents):
    import ph
    ph.create_head(uuid="bg", config=small_config(epochs=2))
    ph.add_examples("bg", as_label_lists(intents[0]))
    ph.train_head("bg")
    ph.add_examples("bg", {"greet": ["hi", "hello"]})
    done = wait_job(ph.train_status, ph.train_head("bg", background=True, incremental=True)["job_id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["summary"]["examples"]["new"] == 2 and done["summary"]["revision"] == 2
    assert "greet" in ph.check_head("bg")["labels"]


def test_incremental_training_learns_a_new_label_and_keeps_the_old_ones(any_registry, intents):
    train, held = intents
    old = [r for r in train if r["label"] != NEW]
    new = [r for r in train if r["label"] == NEW][:20]
    held_old = [r for r in held if r["label"] != NEW]
    held_new = [r for r in held if r["label"] == NEW]
    random.seed(0)  # the head's initial weights (the thresholds hold with margin for others)
    any_registry.create_head("u", text_config(epochs=15))
    any_registry.add_examples("u", old)
    any_registry.train("u")
    old_before = accuracy(any_registry, "u", held_old)
    assert old_before >= 0.8
    any_registry.add_examples("u", new)
    summary = any_registry.train("u", incremental=True)
    info = summary["examples"]
    assert info["new"] == 20 and info["replayed_per_epoch"] == 40 and info["older"] == len(old)
    assert summary["n_train"] + summary["n_valid"] <= 60  # grows with the new examples only
    assert accuracy(any_registry, "u", held_new) >= 0.7
    assert accuracy(any_registry, "u", held_old) >= old_before - 0.1
    assert any_registry.train("u", incremental=True)["updated"] is False  # nothing new since


def test_naive_fine_tuning_forgets_what_replay_keeps(registry, intents):
    train, held = intents
    held_old = [r for r in held if r["label"] != NEW]
    random.seed(0)
    registry.create_head("u", text_config(epochs=15))
    registry.add_examples("u", [r for r in train if r["label"] != NEW])
    registry.train("u")
    before = accuracy(registry, "u", held_old)
    registry.add_examples("u", [r for r in train if r["label"] == NEW][:20])
    registry.train("u", {"Trainer": {"incremental": {"replay_ratio": 0}}}, incremental=True)
    assert accuracy(registry, "u", held_old) < before - 0.15


def stored_data_sets(store) -> list[str]:
    """The training data sets a store holds (files of the folder, objects of the bucket)."""
    if not getattr(store, "distributed", False):
        return sorted(p.name for p in (store.root / "_data").iterdir())
    return sorted(store.objects.list("data/"))


def test_a_childs_incremental_run_replays_its_parents_data_stored_once(any_registry, intents,
                                                                        workdir):
    train, held = intents
    old = [r for r in train if r["label"] != NEW]
    held_old = [r for r in held if r["label"] != NEW]
    (workdir / "train.json").write_text(json.dumps(as_label_lists(old)))
    random.seed(0)
    any_registry.create_head("shared", text_config(epochs=15))
    any_registry.train("shared")  # on train.json: stored by content for later replay
    before = accuracy(any_registry, "shared", held_old)
    assert before >= 0.8
    new = [r for r in train if r["label"] == NEW][:10]
    for uid, ratio in (("alice", 2.0), ("bob", 2.0), ("naive", 0.0)):
        any_registry.create_head(uid, parent="shared")
        any_registry.add_examples(uid, new)
        summary = any_registry.train(uid, {"Trainer": {"incremental": {"replay_ratio": ratio}}},
                                     incremental=True)
        if ratio:
            assert summary["examples"]["inherited"] == len(old) and "warning" not in summary
            assert accuracy(any_registry, uid, held_old) >= before - 0.05, uid
            assert accuracy(any_registry, uid, [r for r in held if r["label"] == NEW]) >= 0.6
    assert accuracy(any_registry, "naive", held_old) < before - 0.15  # what replay prevents
    names = {tuple(any_registry.store.read(u)["trained_on"]) for u in ("shared", "alice", "bob")}
    assert len(names) == 1 and len(stored_data_sets(any_registry.store)) == 1  # no copy per user


def test_an_incremental_run_with_nothing_to_replay_says_it_may_forget(registry, intents, caplog):
    train, _ = intents
    registry.create_head("u", text_config(epochs=2))
    registry.add_examples("u", [r for r in train if r["label"] != NEW][:40])
    registry.train("u")
    registry.delete_examples("u")  # what the weights learnt from is gone
    registry.add_examples("u", [r for r in train if r["label"] == NEW][:5])
    summary = registry.train("u", incremental=True)
    assert "nothing to replay" in summary["warning"] and summary["examples"]["older"] == 0
    assert any("nothing to replay" in r.getMessage() for r in caplog.records)


def test_incremental_runs_use_stored_examples_only(registry, head, train_json):
    with pytest.raises(ConfigError, match="incremental run trains on the head's stored examples only"):
        registry.train(head, {"Trainer": {"dataloader": {"args": {"train_json": "train.json"}}}},
                       incremental=True)
    with pytest.raises(ConfigError, match="replay_ratio: must be a number"):
        registry.train(head, {"Trainer": {"incremental": {"replay_ratio": "all"}}}, incremental=True)


def test_replay_pool_is_class_balanced_and_bounded_by_what_the_run_draws():
    rows = [{"id": i + 1, "label": "big" if i < 90 else "rare", "text": str(i)} for i in range(100)]
    rows += [{"id": 101 + i, "label": "new", "text": f"n{i}"} for i in range(3)]
    plan = plan_examples(rows, 100, True, {"incremental": {"replay_ratio": 2},
                                           "trainer": {"epochs": 2}}, seed=0)
    assert plan.labels == ["new"] * 3 and plan.replay_per_epoch == 6
    assert len(plan.replay_labels) == 12 and plan.replay_labels.count("rare") == 6
    assert plan.seen_up_to == 103
    everything = plan_examples(rows, 100, False, {}, seed=0)
    assert len(everything.inputs) == 103 and everything.replay is None


TRAINER = """
import sys
from ph.heads.service import HeadRegistry
HeadRegistry(sys.argv[1]).train("k", {"Trainer": {"trainer": {"epochs": 100000, "save_period": 1}}})
"""


@pytest.mark.slow  # a child process trains and is killed
def test_kill_9_during_training_leaves_examples_and_weights_intact(registry, intents, workdir):
    registry.create_head("k", small_config(epochs=2))
    registry.add_examples("k", as_label_lists(intents[0]))
    registry.train("k")
    registry.add_examples("k", {"greet": ["hi", "hello"]})
    before = registry.predict("k", ["hi", "order a pizza"])
    examples = registry.list_examples("k", 0, 1000)
    proc = subprocess.Popen([sys.executable, "-c", TRAINER, str(workdir / "heads")], cwd=workdir)
    log = workdir / "saved" / "log" / "PersonalizedHeadTrainer" / "k" / "train.log"
    lines = len(log.read_text().splitlines())
    deadline = time.time() + 120
    while len(log.read_text().splitlines()) < lines + 2:  # a checkpoint is being written
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fresh = HeadRegistry(workdir / "heads")
    assert fresh.list_examples("k", 0, 1000) == examples
    info = fresh.check_head("k")
    assert info["revision"] == 1 and not info["training"] and "greet" not in info["labels"]
    assert fresh.predict("k", ["hi", "order a pizza"]) == before
    assert fresh.train("k", incremental=True)["examples"]["new"] == 2  # and training works again
    assert json.loads((workdir / "heads" / "k" / "head.json").read_text())["examples_seen"] == \
        len(examples)
