"""Add-in heads (a user's small add-in over a frozen shared head): an untrained add-in is its
parent, training changes only the add-in and pins the parent's revision, the add-in keeps
its answers when the parent moves on until it is rebased, parents with add-ins stay, bad
add-ins store nothing, lora/bias export into the plain parent model, and many add-ins
train together as each would alone (ph.heads.addin_heads, ph.heads.together)."""
from __future__ import annotations

import random
import shutil
import time

import pytest
import torch

from helpers.heads import small_config, tiny_custom_config, training_held, wait_job
from ph.errors import (BadInputError, ConfigError, ConflictError, PermissionDeniedError,
                       PHError)
from ph.heads.policy import PathPolicy
from ph.heads.service import HeadRegistry
from ph.modeling.engine import build_model

TEXTS = ["I want to order a pizza", "will it rain in Lima", "play some Bach", "wake me at 6",
         "hello there", "good morning"]
GREETINGS = [{"text": t, "label": "greet"} for t in
             ("hello there", "hi friend", "good morning", "hey you", "hello again")]
LR = {"Trainer": {"optimizer": {"args": {"lr": 0.01}}}}
ADDIN = {"Trainer": {"optimizer": {"args": {"lr": 0.02}}, "trainer": {"epochs": 15}}}


def scored_config(**loop) -> dict:
    """A small head that answers label names and class probabilities (to compare closely)."""
    config = small_config(**loop)
    config["Inference"] = {"postprocess": {"type": "PersonalizedHeadPostProcessor",
                                           "args": {"return_label": True, "return_scores": True}}}
    return config


def scores(answers) -> torch.Tensor:
    return torch.tensor([a["scores"] for a in answers])


def same_answers(a, b, atol=1e-5) -> bool:
    return ([x["prediction"] for x in a] == [x["prediction"] for x in b]
            and torch.allclose(scores(a), scores(b), atol=atol, rtol=0))


def weights(registry, uid) -> dict:
    return registry.store.read_weights(uid, registry.store.read(uid))


def same_weights(a: dict, b: dict, atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if atol == 0 else torch.allclose(a[k], b[k], atol=atol, rtol=0)
        for k in a)


def make_shared(registry):
    """A trained shared head 'shared' (on train.json) answering with scores. A new head
    draws its own seed (its first weights) from Python's random module: seeded here, so
    a test sees the same heads in every run (one assertion failed in about one run in
    ten, for some first weights)."""
    random.seed(0)
    registry.create_head("shared", scored_config())
    registry.train("shared")
    return registry


def trained_addin(registry, uid, addin="lora", examples=GREETINGS, config=ADDIN) -> dict:
    """An add-in on 'shared' trained incrementally on `examples`; its run's summary."""
    registry.create_head(uid, config, parent="shared", addin=addin)
    registry.add_examples(uid, examples)
    return registry.train(uid, incremental=True)


@pytest.fixture
def shared(registry, train_json):
    return make_shared(registry)


@pytest.fixture
def any_shared(any_registry, train_json):
    """`shared` on each store backend (`any_registry`)."""
    return make_shared(any_registry)


def test_an_untrained_addin_answers_as_its_parent_and_check_head_describes_it(any_shared):
    reg = any_shared
    reg.create_head("u", parent="shared", addin={"type": "lora", "args": {"rank": 1}})
    assert same_answers(reg.predict("u", TEXTS), reg.predict("shared", TEXTS), atol=0)
    info = reg.check_head("u")["addin"]
    assert (info["type"], info["rank"], info["own_output"]) == ("lora", 1, False)
    assert info["targets"] and all(isinstance(t, str) for t in info["targets"])
    assert (info["parent"], info["parent_revision"], info["parent_current_revision"]) == \
        ("shared", None, 1)
    assert info["behind_parent"] is False
    model = build_model(reg.get_config("shared"), reg.sources.code_of(reg.store.read("shared")))
    modules = dict(model.named_modules())
    expected = 4 * sum(modules[t].in_features + modules[t].out_features for t in info["targets"])
    parent_bytes = sum(v.numel() * v.element_size() for v in weights(reg, "shared").values())
    assert info["bytes"] == expected and 0 < info["bytes"] < 0.02 * parent_bytes
    assert reg.store.read("u")["weights"] is None  # nothing of its own yet


def test_training_an_addin_changes_only_the_addin_and_pins_the_parents_revision(any_shared):
    reg = any_shared
    parent_record, parent_weights = reg.store.read("shared"), weights(reg, "shared")
    raw = None if reg.store.distributed else \
        (reg.store.head_dir("shared") / parent_record["weights"]).read_bytes()
    before = reg.predict("shared", TEXTS)
    summary = trained_addin(reg, "u")
    assert summary["updated"] and summary["revision"] == 1
    assert summary["examples"]["new"] == len(GREETINGS) and summary["examples"]["inherited"] > 0
    assert reg.store.read("shared") == parent_record
    assert same_weights(weights(reg, "shared"), parent_weights)
    if raw is not None:
        assert (reg.store.head_dir("shared") / parent_record["weights"]).read_bytes() == raw
    assert same_answers(reg.predict("shared", TEXTS), before, atol=0)
    record = reg.store.read("u")
    assert record["parent_revision"] == 1 and record["base"]
    assert same_weights(reg.store.load_snapshot(record["base"]), parent_weights)
    own = weights(reg, "u")
    assert own and all(":" in k for k in own)  # the add-in's tensors only, no parent copy
    assert any(k.endswith(":B") and own[k].abs().max() > 0 for k in own)  # it learnt
    info = reg.check_head("u")
    assert info["trained"] and info["labels"][-1] == "greet"
    assert info["addin"]["parent_revision"] == 1 and info["addin"]["behind_parent"] is False
    assert reg.predict("u", "hello there")["prediction"] == "greet"


def test_an_addin_keeps_its_answers_when_the_parent_trains_again_until_it_is_rebased(shared):
    trained_addin(shared, "u")
    shared.create_head("fresh", parent="shared", addin="lora")  # untrained: never behind
    mine, base = shared.predict("u", TEXTS), shared.store.read("u")["base"]
    parent_before = shared.predict("shared", TEXTS)
    shared.train("shared", LR)
    assert not same_answers(shared.predict("shared", TEXTS), parent_before)
    assert same_answers(shared.predict("u", TEXTS), mine)
    info = shared.check_head("u")["addin"]
    assert (info["parent_revision"], info["parent_current_revision"], info["behind_parent"]) == \
        (1, 2, True)
    assert shared.addins_behind("shared") == ["u"]
    summary = shared.train("u", rebase=True)
    assert summary["updated"] and summary["revision"] == 2
    info = shared.check_head("u")["addin"]
    assert (info["parent_revision"], info["behind_parent"]) == (2, False)
    assert shared.store.read("u")["base"] != base
    assert not same_answers(shared.predict("u", TEXTS), mine)  # served on the new parent
    assert shared.addins_behind("shared") == []
    assert shared.predict("u", "hello there")["prediction"] == "greet"


def test_rebase_addins_moves_every_addin_that_is_behind(fresh_api, train_json):
    import ph.api
    make_shared(fresh_api)
    for uid in ("a", "b"):
        trained_addin(fresh_api, uid)
    fresh_api.create_head("fresh", parent="shared", addin="bias")
    fresh_api.train("shared", LR)
    assert fresh_api.addins_behind("shared") == ["a", "b"]
    result = ph.api.rebase_addins("shared", background=False)
    assert result["parent"] == "shared" and result["revision"] == 2
    assert sorted(result["heads"]) == ["a", "b"]
    assert all(s["updated"] and s["revision"] == 2 for s in result["heads"].values())
    assert fresh_api.addins_behind("shared") == []
    assert fresh_api.check_head("a")["addin"]["parent_revision"] == 2


def test_a_restarted_registry_answers_the_same_for_an_addin(shared):
    trained_addin(shared, "u")
    shared.train("shared", LR)  # the add-in now answers from its snapshot of revision 1
    mine = shared.predict("u", TEXTS)
    restarted = HeadRegistry(shared.store.root)
    assert same_answers(restarted.predict("u", TEXTS), mine)
    assert restarted.predict_many([("u", TEXTS)]) == [restarted.predict("u", TEXTS)]
    assert restarted.check_head("u")["addin"]["behind_parent"] is True


def test_a_parent_with_addins_cannot_be_deleted_or_replaced_until_they_go(shared):
    trained_addin(shared, "u")
    shared.create_head("fresh", parent="shared", addin="lora")
    for action in (lambda: shared.delete_head("shared"),
                   lambda: shared.create_head("shared", scored_config(epochs=9), replace=True)):
        with pytest.raises(ConflictError, match=r"cannot be (deleted|replaced): 2 add-in head\(s\) "
                                                r"are trained on it \('fresh', 'u'\)"):
            action()
    assert shared.check_head("shared")["revision"] == 1
    assert shared.predict("u", "hello there")["prediction"] == "greet"
    shared.delete_head("u")
    with pytest.raises(ConflictError, match=r"1 add-in head\(s\).*'fresh'"):
        shared.delete_head("shared")
    shared.delete_head("fresh")
    assert shared.delete_head("shared")
    assert shared.list_heads() == []


@pytest.fixture
def parents(shared):
    """'shared', a trained add-in 'mine' on it, and 'custom', a user-code (Tiny) head."""
    trained_addin(shared, "mine")
    shared.create_head("custom", tiny_custom_config(shared))
    return shared


@pytest.mark.parametrize("parent, addin, error, match", [
    ("shared", {"type": "lora", "args": {"targets": ["linear3"]}}, ConfigError,
     r"addin.args.targets: 'linear3' names no module of PersonalizedHead \(did you mean "
     r"'linear2'\?\)"),
    ("shared", {"type": "lora", "args": {"rank": 0}}, ConfigError,
     "addin.args.rank: must be a whole number >= 1, got 0"),
    ("shared", {"type": "lora", "args": {"rank": 65}}, ConfigError,
     r"addin.args.rank: 65 is larger than target .* allows \(64\)"),
    ("shared", "lorra", ConfigError,
     r"addin.type: 'lorra' is not an add-in kind \(did you mean 'lora'\?\)"),
    ("shared", {"type": "lora", "args": {"rnk": 2}}, ConfigError,
     r"addin.args.rnk: unknown argument \(did you mean 'rank'\?\)"),
    ("mine", "lora", BadInputError, "head 'mine' is itself an add-in.*Use parent='shared'"),
    ("mine", None, BadInputError, "head 'mine' is an add-in; children start from a whole head"),
    ("custom", {"type": "lora", "args": {"targets": ["fc"]}}, ConfigError,
     "addin.args.targets: 'fc' names no module of Tiny"),
    (None, "lora", BadInputError, "addin: an add-in sits on a shared head; name it with parent"),
], ids=["unknown-target", "rank-0", "rank-too-large", "unknown-kind", "unknown-arg",
        "addin-of-addin", "child-of-addin", "custom-model-target", "addin-without-parent"])
def test_a_bad_addin_is_refused_naming_the_key_and_nothing_is_stored(parents, parent, addin,
                                                                     error, match):
    heads = parents.list_heads()
    with pytest.raises(error, match=match):
        parents.create_head("new", parent=parent, addin=addin)
    assert parents.list_heads() == heads
    assert parents.check_head("new") == {"uuid": "new", "exists": False}
    assert parents.store.followers("shared") == ["mine"]


def test_export_folds_a_lora_into_weights_that_a_plain_parent_model_loads(shared, workdir):
    trained_addin(shared, "u", {"type": "lora", "args": {"own_output": True}})
    result = shared.export_weights("u", "exports/u.pt")
    assert result["parent_revision"] == 1 and result["revision"] == 1
    saved = torch.load(workdir / "exports" / "u.pt", weights_only=True)
    assert set(saved) == {"state_dict", "labels"}
    assert saved["labels"] == shared.check_head("u")["labels"]
    model = build_model(shared.get_config("shared"), shared.sources.code_of(shared.store.read("u")))
    model.load_state_dict(saved["state_dict"])  # strict: exactly the parent's keys
    assert saved["state_dict"].keys() == weights(shared, "shared").keys()
    shared.create_head("plain", scored_config())  # a plain head of the parent's model
    shared.load_weights("plain", "exports/u.pt")
    mine = shared.predict("u", TEXTS)
    assert same_answers(shared.predict("plain", TEXTS), mine)
    assert not same_answers(shared.predict("shared", TEXTS), mine)


def test_an_adapter_is_not_exported_and_a_restricted_caller_exports_only_inside_its_folders(
        shared, workdir):
    trained_addin(shared, "ad", "adapter")
    with pytest.raises(ConfigError, match="adapter add-in cannot be merged into its parent's "
                                          "weights.*Export works for lora and bias"):
        shared.export_weights("ad", "ad.pt")
    assert not (workdir / "ad.pt").exists()
    trained_addin(shared, "lo", "bias")
    (workdir / "allowed").mkdir()
    restricted = HeadRegistry(shared.store.root,
                              policy=PathPolicy.restricted([workdir / "allowed"]))
    with pytest.raises(PermissionDeniedError, match="weights_file.*outside the folders"):
        restricted.export_weights("lo", str(workdir / "elsewhere" / "lo.pt"))
    assert not (workdir / "elsewhere").exists()
    restricted.export_weights("lo", "allowed/lo.pt")
    assert (workdir / "allowed" / "lo.pt").exists()


def test_load_weights_is_refused_for_an_addin_trained_or_not(shared, workdir):
    torch.save(weights(shared, "shared"), workdir / "w.pt")
    trained_addin(shared, "u")
    shared.create_head("fresh", parent="shared", addin="lora")
    for uid in ("u", "fresh"):
        record = shared.store.read(uid)
        with pytest.raises(BadInputError, match=f"head '{uid}' is an add-in on 'shared'.*"
                                                "load_weights cannot set them"):
            shared.load_weights(uid, "w.pt")
        assert shared.store.read(uid) == record


def test_addins_trained_together_equal_each_ones_separate_run(shared, workdir):
    examples = {"a1": GREETINGS,
                "a2": [{"text": t, "label": "bye"} for t in ("see you", "goodbye", "bye now")],
                "a3": [{"text": "fetch me a taxi", "label": "book_flight"},
                       {"text": "a cab to the airport", "label": "book_flight"}]}
    for uid, mine in examples.items():
        shared.create_head(uid, ADDIN, parent="shared", addin="lora")
        shared.add_examples(uid, mine)
    shutil.copytree(shared.store.root, workdir / "copy")
    alone = HeadRegistry(workdir / "copy")
    results = shared.train_together(list(examples))
    for uid in examples:
        summary = results[uid]
        assert not isinstance(summary, PHError), summary
        assert summary["updated"] and summary["trained_with"] == 3
        separate = alone.train(uid, incremental=True)
        assert separate["updated"] and "trained_with" not in separate
        assert same_weights(weights(shared, uid), weights(alone, uid), atol=1e-4)
        other = "a2" if uid == "a1" else "a1"
        assert not same_weights(weights(shared, uid), weights(shared, other))  # its own run
        assert same_answers(shared.predict(uid, TEXTS), alone.predict(uid, TEXTS), atol=1e-4)
        assert shared.store.read(uid)["parent_revision"] == 1


def test_a_head_that_cannot_train_together_fails_alone_and_the_others_train(shared, workdir):
    (workdir / "blocked").write_text("a file where its run's save_dir should be")
    configs = {"ok": ADDIN, "busy": ADDIN, "idle": ADDIN,
               "broken": {"Trainer": {"trainer": {"save_dir": "blocked"}}}}
    for uid, config in configs.items():
        shared.create_head(uid, config, parent="shared", addin="lora")
        if uid != "idle":
            shared.add_examples(uid, GREETINGS)
    with training_held(shared, "busy"):
        results = shared.train_together(["ok", "shared", "busy", "broken", "idle"])
    assert list(results) == ["ok", "shared", "busy", "broken", "idle"]
    assert results["ok"]["updated"] and results["ok"]["trained_with"] in (1, 2)
    assert isinstance(results["shared"], BadInputError)
    assert "'shared' is not an add-in" in str(results["shared"])
    assert isinstance(results["busy"], ConflictError) and "already training" in str(results["busy"])
    assert isinstance(results["broken"], PHError) and "blocked" in str(results["broken"])
    assert results["idle"]["updated"] is False  # nothing stored: nothing to learn
    assert shared.check_head("ok")["trained"]
    assert shared.predict("ok", "hello there")["prediction"] == "greet"
    assert not shared.check_head("broken")["trained"] and not shared.check_head("idle")["trained"]
    assert shared.check_head("shared")["revision"] == 1


def test_an_untrained_addin_refuses_examples_whose_labels_do_not_fit_its_parents_model(shared):
    shared.create_head("u", parent="shared", addin="lora")  # the parent knows 6 of 8 classes
    with pytest.raises(BadInputError, match="would have 9 classes but its model has n_classes=8"):
        shared.add_examples("u", [{"text": f"text {i}", "label": f"new{i}"} for i in range(3)])
    assert shared.list_examples("u") == []


def wait_until(check, timeout=60):
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_a_background_addin_job_trains_it_and_a_stopped_one_keeps_its_weights(fresh_api,
                                                                               train_json):
    import ph.api
    make_shared(fresh_api)
    ph.api.create_head("u", config=ADDIN, parent="shared", addin="lora")
    before = ph.api.predict("u", TEXTS)
    ph.api.add_examples("u", GREETINGS)
    job = ph.api.train_head(uuid="u", incremental=True, background=True)
    done = wait_job(ph.api.train_status, job["job_id"])
    assert done["state"] == "succeeded", done["error"]
    assert not same_answers(ph.api.predict("u", TEXTS), before)
    assert ph.api.check_head("u")["addin"]["parent_revision"] == 1
    trained, record = weights(fresh_api, "u"), fresh_api.store.read("u")
    mine = ph.api.predict("u", TEXTS)
    ph.api.add_examples("u", [{"text": "howdy partner", "label": "greet"}])
    job = ph.api.train_head(uuid="u", incremental=True, background=True,
                            config={"Trainer": {"trainer": {"epochs": 100_000}}})
    wait_until(lambda: (ph.api.train_status(job["job_id"])["epoch"] or 0) >= 1)  # it runs
    ph.api.stop_training(job["job_id"])
    assert wait_job(ph.api.train_status, job["job_id"])["state"] == "stopped"
    assert fresh_api.store.read("u")["revision"] == record["revision"]
    assert same_weights(weights(fresh_api, "u"), trained)
    assert same_answers(ph.api.predict("u", TEXTS), mine, atol=0)


def test_an_interrupted_addin_run_leaves_the_addin_and_its_parent_as_they_were(shared):
    trained_addin(shared, "u")
    shared.create_head("fresh", parent="shared", addin="lora")
    for uid in ("u", "fresh"):
        shared.add_examples(uid, [{"text": "howdy partner", "label": "greet"}])
    kept = {uid: (shared.store.read(uid), weights(shared, uid), shared.predict(uid, TEXTS))
            for uid in ("shared", "u", "fresh")}

    def boom(_record):
        raise RuntimeError("boom")

    for uid in ("u", "fresh"):
        with pytest.raises(Exception, match="boom"):
            shared.train(uid, incremental=True, on_epoch=boom)
    for uid, (record, state, answers) in kept.items():
        assert shared.store.read(uid) == record
        assert (state is None and weights(shared, uid) is None) or \
            same_weights(weights(shared, uid), state)
        assert same_answers(shared.predict(uid, TEXTS), answers, atol=0)
    assert not shared.check_head("u")["training"]
    assert shared.train("u", incremental=True)["updated"]  # the training lock was let go


def test_an_addin_run_resumes_from_its_own_checkpoint(shared):
    loop = {"epochs": 4, "save_period": 1, "early_stop": 0, "keep_checkpoints": 0}
    shared.create_head("u", {"Trainer": {"trainer": loop}}, parent="shared", addin="lora")
    shared.add_examples("u", GREETINGS)
    first = shared.train("u", incremental=True, auto_update=False)
    checkpoint = first["weights"].replace("best_model.pt", "checkpoint-epoch2.pt")
    assert torch.load(checkpoint, weights_only=True)["state_dict"].keys() \
        == weights_of_addin_keys(shared, "u")
    resumed = shared.train("u", {"Trainer": {"trainer": {"resume": checkpoint}}},
                           incremental=True)
    assert resumed["epochs_run"] == 2 and resumed["last_epoch"] == 4 and resumed["updated"]
    assert same_weights(weights(shared, "shared"), shared.store.load_snapshot(
        shared.store.read("u")["base"]))


def weights_of_addin_keys(registry, uid) -> set:
    """The names of an add-in's tensors (its checkpoint holds these, not the parent's)."""
    from ph.heads.addin_heads import addin_spec
    from ph.modeling.addins import addin_shapes
    record = registry.store.read(uid)
    return set(addin_shapes(addin_spec(record["config"], record["addin"],
                                       registry.runs.sources.code_of(record))))
