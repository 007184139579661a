"""HeadRegistry: create, predict, train, reload, delete; persistence and isolation."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helpers.heads import small_config, training_held, write_json
from helpers.paths import ROOT
from helpers.stores import stored_example_bytes
import ph.stores.local as local_store  # the module object the stores here use
from ph.config.schema import deep_merge, load_config
from ph.errors import (BadInputError, ConfigError, ConflictError, HeadNotFoundError,
                       PermissionDeniedError, TrainingError, WeightsError)
from ph.heads.policy import PathPolicy
from ph.heads.service import HeadRegistry

TEXTS = ["I want to order a pizza", "will it rain in Lima", "play some Bach", "wake me at 6"]


def train_alice(registry) -> str:
    registry.create_head_list(small_config())
    uid = registry.create_head("alice")
    registry.train(uid)
    return uid


@pytest.fixture
def trained(registry, train_json):
    return train_alice(registry)


@pytest.fixture
def trained_any(any_registry, train_json):
    """`trained` on each store backend (`any_registry`)."""
    return train_alice(any_registry)


def weight_files(registry, uid):
    return sorted(p.name for p in registry.store.head_dir(uid).glob("weights-*.pt"))


def test_create_without_uuid_returns_a_new_uuid4(any_registry):
    uid = any_registry.create_head(config=small_config())
    assert len(uid) == 36 and uid.count("-") == 4
    assert any_registry.list_heads() == [uid]


def test_training_switches_the_head_to_new_weights(any_registry, train_json):
    any_registry.create_head_list(small_config(epochs=4))
    uid = any_registry.create_head("alice")
    summary = any_registry.train(uid)
    assert summary["updated"] and summary["revision"] == 1
    info = any_registry.check_head(uid)
    assert info["trained"] and info["revision"] == 1 and info["runs"] == 1
    assert info["labels"] == sorted(info["labels"]) and "order_food" in info["labels"]
    after = any_registry.predict(uid, TEXTS)
    assert [info["labels"][p] for p in after][:2] == ["order_food", "get_weather"]
    assert any_registry.predict(uid, TEXTS[0]) == after[0]


def test_train_without_auto_update_leaves_the_head_as_it_was(any_registry, train_json):
    uid = any_registry.create_head("bob", small_config())
    before = any_registry.predict(uid, TEXTS)
    summary = any_registry.train(uid, auto_update=False)
    assert not summary["updated"]
    assert any_registry.check_head(uid)["revision"] == 0
    assert any_registry.predict(uid, TEXTS) == before


def test_create_again_with_the_same_config_keeps_trained_weights(any_registry, trained_any):
    predictions = any_registry.predict(trained_any, TEXTS)
    assert any_registry.create_head("alice") == "alice"
    assert any_registry.check_head("alice")["revision"] == 1
    assert any_registry.predict("alice", TEXTS) == predictions


def test_create_again_with_another_config_is_a_conflict_that_says_how_to_fix(any_registry,
                                                                             trained_any):
    with pytest.raises(ConflictError) as err:
        any_registry.create_head("alice", {"Model": {"args": {"n_classes": 9}}})
    message = str(err.value)
    assert "Model.args.n_classes: 8 -> 9" in message and "delete_head" in message and "replace" in message
    assert any_registry.check_head("alice")["revision"] == 1
    any_registry.create_head("alice", {"Model": {"args": {"n_classes": 9}}}, replace=True)
    assert any_registry.check_head("alice")["revision"] == 0
    assert any_registry.get_config("alice")["Model"]["args"]["n_classes"] == 9


def test_replace_starts_a_head_over_even_with_the_same_config(any_registry, trained_any):
    assert any_registry.create_head("alice", replace=True) == "alice"
    info = any_registry.check_head("alice")
    assert info["revision"] == 0 and not info["trained"]



def test_a_replace_that_fails_at_the_switch_keeps_the_old_head_whole(registry, trained,
                                                                     monkeypatch):
    label = registry.check_head(trained)["labels"][0]
    registry.add_examples(trained, {label: ["my own words"]})
    before = registry.predict(trained, TEXTS)

    def crash(a, b):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(local_store, "exchange_paths", crash)
    with pytest.raises(OSError):
        registry.create_head(trained, small_config(), replace=True)
    other = HeadRegistry(registry.store.root)
    assert other.predict(trained, TEXTS) == before == registry.predict(trained, TEXTS)
    assert other.check_head(trained)["revision"] == 1 and other.check_head(trained)["examples"] == 1
    monkeypatch.undo()
    registry.create_head(trained, small_config(), replace=True)
    info = other.check_head(trained)
    assert (info["revision"], info["examples"], info["trained"]) == (0, 0, False)
    assert weight_files(registry, trained) == []

def test_a_new_process_finds_every_head_and_predicts_the_same(registry, trained, workdir):
    untrained = registry.create_head("carol")
    expected = {uid: registry.predict(uid, TEXTS) for uid in (trained, untrained)}
    script = ("import json, sys; from ph.heads.service import HeadRegistry; r = HeadRegistry('heads'); "
              f"print(json.dumps({{u: r.predict(u, {TEXTS!r}) for u in r.list_heads()}}))")
    out = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout) == expected


def test_overrides_never_leak_into_the_head_list_or_other_heads(any_registry, train_json):
    any_registry.create_head_list(small_config())
    any_registry.create_head("a", {"Model": {"args": {"n_classes": 6}}})
    any_registry.create_head("b")
    assert any_registry.get_config("b")["Model"]["args"]["n_classes"] == 8
    assert any_registry.store.read_head_list()["config"]["Model"]["args"]["n_classes"] == 8
    any_registry.train("a", {"Trainer": {"trainer": {"epochs": 1}}})
    assert any_registry.get_config("a")["Trainer"]["trainer"]["epochs"] == 3
    assert any_registry.get_config("b")["Trainer"]["trainer"]["epochs"] == 3


@pytest.mark.parametrize("overrides, match", [
    ({"Model": {"args": {"ph_ff_dim": 32}}}, "cannot change Model"),
    ({"Inference": {"dtype": "bfloat16"}}, "cannot change Inference"),
    ({"Trainr": {"trainer": {"epochs": 1}}}, "did you mean 'Trainer'"),
])
def test_training_overrides_may_only_change_the_trainer(registry, trained, overrides, match):
    with pytest.raises(ConfigError, match=match):
        registry.train(trained, overrides)
    assert registry.check_head(trained)["revision"] == 1


@pytest.mark.parametrize("overrides, error, match", [
    ({"Trainer": {"dataloader": {"args": {"train_json": "missing.json"}}}}, BadInputError, "not found"),
    ({"Trainer": {"dataloader": {"args": {"train_json": "outside.json"}}}}, BadInputError, "outside 0..7"),
    ({"Trainer": {"optimizer": {"type": "SGD", "args": {"lr": 1e38}}}}, TrainingError, "lower"),
    ({"Trainer": {"trainer": {"epochs": "ten"}}}, ConfigError, "epochs"),
])
def test_failed_training_leaves_weights_and_files_untouched(registry, trained, workdir,
                                                            overrides, error, match):
    write_json(workdir / "outside.json", [{"text": "hello", "label": 8}])
    predictions, files = registry.predict(trained, TEXTS), weight_files(registry, trained)
    with pytest.raises(error, match=match):
        registry.train(trained, overrides)
    assert registry.check_head(trained)["revision"] == 1
    assert weight_files(registry, trained) == files == ["weights-1.pt"]
    assert registry.predict(trained, TEXTS) == predictions
    assert registry.train(trained)["revision"] == 2  # and the next run works


def test_load_weights_from_best_model_reproduces_the_trained_head(any_registry, trained_any,
                                                                  workdir):
    best = workdir / "saved/models/PersonalizedHeadTrainer/alice/best_model.pt"
    twin = any_registry.create_head("twin", small_config())
    any_registry.load_weights(twin, str(best))
    assert any_registry.predict(twin, TEXTS) == any_registry.predict(trained_any, TEXTS)
    assert any_registry.check_head(twin)["labels"] == any_registry.check_head(trained_any)["labels"]


def test_bad_weights_file_is_refused_and_the_head_keeps_its_weights(any_registry, trained_any,
                                                                    workdir):
    torch.save({"fc.weight": torch.zeros(2, 2)}, workdir / "wrong.pt")
    predictions = any_registry.predict(trained_any, TEXTS)
    for path in ("wrong.pt", "nope.pt"):
        with pytest.raises(WeightsError):
            any_registry.load_weights(trained_any, path)
    assert any_registry.predict(trained_any, TEXTS) == predictions
    assert any_registry.check_head(trained_any)["revision"] == 1


def test_starting_weights_from_the_config_are_loaded_at_create(any_registry, trained_any, workdir):
    best = "saved/models/PersonalizedHeadTrainer/alice/best_model.pt"
    uid = any_registry.create_head("warm", {**small_config(), "Inference": {"weights": best}})
    assert any_registry.check_head(uid)["revision"] == 1
    assert any_registry.predict(uid, TEXTS) == any_registry.predict(trained_any, TEXTS)


def test_delete_removes_the_head_for_every_registry(registry, trained, workdir):
    other = HeadRegistry(workdir / "heads")
    assert other.predict(trained, TEXTS[0]) == registry.predict(trained, TEXTS[0])
    assert registry.delete_head(trained)
    assert registry.list_heads() == []
    for r in (registry, other):
        with pytest.raises(HeadNotFoundError, match="no head with uuid 'alice'"):
            r.predict(trained, TEXTS[0])


def test_two_registries_on_one_folder_see_each_others_changes(registry, train_json, workdir):
    other = HeadRegistry(workdir / "heads")
    uid = registry.create_head("shared", small_config(epochs=4))
    before = other.predict(uid, TEXTS)
    registry.train(uid)
    assert other.check_head(uid)["revision"] == 1
    after = other.predict(uid, TEXTS)
    assert after == registry.predict(uid, TEXTS) and after != before
    assert other.cache.peek(uid).revision == 1


def test_a_second_training_of_the_same_head_is_refused_while_one_runs(any_registry, train_json):
    uid = any_registry.create_head("busy", small_config(epochs=2))
    with training_held(any_registry, uid) as errors:
        assert any_registry.check_head(uid)["training"]
        with pytest.raises(ConflictError, match="already training"):
            any_registry.train(uid)
    assert not any_registry.check_head(uid)["training"]
    assert not errors and any_registry.check_head(uid)["revision"] == 1


def test_memory_budget_evicts_least_recently_used_heads_that_reload_unchanged(workdir):
    probe = HeadRegistry(workdir / "probe")
    one_head = probe.loaded(probe.create_head("p", small_config())).nbytes
    registry = HeadRegistry(workdir / "heads", memory_budget=2 * one_head)
    uids = [registry.create_head(f"u{i}", small_config()) for i in range(4)]
    first = {uid: registry.predict(uid, TEXTS) for uid in uids}
    stats = registry.stats()
    assert stats["evictions"] >= 2 and stats["bytes_held"] <= 2 * one_head
    assert {uid: registry.predict(uid, TEXTS) for uid in uids} == first


def test_restricted_policy_refuses_paths_outside_allowed_folders_and_code(workdir):
    (workdir / "allowed").mkdir()
    registry = HeadRegistry(workdir / "heads", PathPolicy.restricted([workdir / "allowed"]))
    with pytest.raises(PermissionDeniedError, match="outside the folders"):
        registry.create_head("x", str(workdir / "config.yaml"))
    with pytest.raises(PermissionDeniedError, match="--allow-code"):
        registry.create_head_list({}, python="print('hi')")
    custom = load_config(ROOT / "jac_examples/custom_model/config.yaml")
    with pytest.raises(PermissionDeniedError, match="does not run user Python"):
        registry.create_head("y", custom)


def test_a_failed_create_leaves_nothing_behind(registry):
    for bad, error in (({"Model": {"type": "Nope"}}, ConfigError),
                       ({"Inference": {"weights": "missing.pt"}}, WeightsError)):
        with pytest.raises(error):
            registry.create_head("x", {**small_config(), **bad})
        assert registry.list_heads() == [] and not (registry.store.root / "x").exists()
    assert list((registry.store.root / "_tmp").iterdir()) == []
    assert registry.create_head("x", small_config()) == "x"


def test_restricted_policy_covers_every_path_in_a_training_config(workdir, train_json):
    registry = HeadRegistry(workdir / "heads", PathPolicy.restricted([workdir]))
    uid = registry.create_head("r", small_config())
    for overrides in ({"Trainer": {"trainer": {"resume": "/etc/passwd"}}},
                      {"Trainer": {"trainer": {"save_dir": "/tmp/elsewhere"}}},
                      {"Trainer": {"dataloader": {"args": {"train_json": "/etc/hosts"}}}}):
        with pytest.raises(PermissionDeniedError, match="outside the folders"):
            registry.train(uid, overrides)
    assert registry.train(uid)["updated"]  # paths inside the allowed folder are fine



# --- who may store which paths (ph.paths): a remote client's config stays within its folders

@pytest.fixture
def remote_and_app(workdir):
    """A server's registry that allows only ./remote, and the in-process app's (any path)."""
    (workdir / "remote").mkdir()
    return (HeadRegistry(workdir / "heads", PathPolicy.restricted([workdir / "remote"])),
            HeadRegistry(workdir / "heads"))


def with_paths(train_json, save_dir) -> dict:
    return deep_merge(small_config(), {"Trainer": {"dataloader": {"args": {"train_json": str(train_json)}},
                                                   "trainer": {"save_dir": str(save_dir)}}})


def test_paths_a_remote_client_stored_are_refused_to_the_app_outside_the_clients_folders(
        remote_and_app, workdir, train_json):
    from ph.heads.jobs import start_job
    remote, app = remote_and_app
    remote.create_head("planted", with_paths(train_json, workdir / "remote" / "saved"))
    for train in (lambda: app.train("planted"), lambda: start_job(app, "planted")):
        with pytest.raises(PermissionDeniedError, match=r"train_json: '.*train.json' comes from a "
                                                        r"config that a restricted caller"):
            train()
    assert app.training_job("planted") is None  # refused before a job was accepted
    override = {"Trainer": {"dataloader": {"args": {"train_json": str(train_json)}}}}
    assert app.train("planted", override)["updated"]  # a path the app names itself is its own
    (workdir / "remote" / "train.json").write_text(train_json.read_text())
    remote.create_head("inside", with_paths("remote/train.json", "remote/saved"))
    assert app.train("inside")["updated"]
    app.create_head("own", with_paths(train_json, workdir / "saved"))
    assert app.train("own")["updated"]  # the app's own config: no limits


def test_a_remote_head_list_limits_the_heads_and_children_made_from_it(remote_and_app, workdir,
                                                                       train_json):
    remote, app = remote_and_app
    remote.create_head_list({**small_config(), "Inference": {"weights": str(workdir / "w.pt")}})
    with pytest.raises(PermissionDeniedError, match="Inference.weights: .* restricted caller"):
        app.create_head("from-list")
    remote.create_head_list(small_config())
    app.create_head("from-list")
    app.create_head("kid", parent="from-list")
    for uid in ("from-list", "kid"):
        assert app.store.read(uid)["path_limits"] == [[str(workdir / "remote")]]
        with pytest.raises(PermissionDeniedError, match="train_json: .* restricted caller"):
            app.train(uid)
    app.create_head_list(small_config())
    app.create_head("free")
    assert app.store.read("free")["path_limits"] == [] and app.train("free")["updated"]


def test_a_model_folder_from_a_remote_config_is_checked_where_the_head_loads(remote_and_app,
                                                                            train_json):
    """A relative folder the server checked in its own working folder names another
    folder in the app's: the app checks it against the server's folders before loading."""
    remote, app = remote_and_app
    remote.create_head("enc", small_config())
    record = app.store.read("enc")
    record["config"]["Inference"]["preprocess"]["args"].update(
        encoder="sentence_transformers", encoder_args={"model": "./models/m"})
    app.store.write("enc", record)  # as the server stored it, from its folder ./remote
    own_paths = {"Trainer": {"dataloader": {"args": {"train_json": str(train_json)}},
                             "trainer": {"save_dir": "saved"}}}
    for use in (lambda: app.predict("enc", TEXTS), lambda: app.train("enc", own_paths),
                lambda: app.add_examples("enc", {"greet": ["hi"]}),
                lambda: app.create_head("kid", own_paths, parent="enc")):
        with pytest.raises(PermissionDeniedError, match="encoder_args.model: .* restricted caller"):
            use()


def test_no_call_after_create_can_change_the_encoder_model_folder(registry, trained):
    new_model = {"Inference": {"preprocess": {"args": {
        "encoder": "sentence_transformers", "encoder_args": {"model": "/opt/models/x"}}}}}
    with pytest.raises(ConfigError, match="train_head cannot change Inference"):
        registry.train(trained, new_model)
    with pytest.raises(ConfigError, match="cannot change Inference"):
        registry.create_head("kid", new_model, parent=trained)


def test_check_head_of_an_unknown_uuid_says_it_does_not_exist(any_registry):
    assert any_registry.check_head("nobody") == {"uuid": "nobody", "exists": False}
    with pytest.raises(BadInputError, match="is not valid"):
        any_registry.check_head("../x")  # a uuid that cannot exist is still an error


def test_deleting_or_replacing_a_head_removes_its_examples(any_registry):
    any_registry.create_head("gone", small_config())
    any_registry.add_examples("gone", {"greet": ["my secret phrase"]})
    assert any_registry.check_head("gone")["examples"] == 1
    any_registry.delete_head("gone")
    assert b"my secret phrase" not in stored_example_bytes(any_registry.store)
    any_registry.create_head("gone", small_config())
    assert any_registry.list_examples("gone") == []
    assert any_registry.check_head("gone")["examples"] == 0
    any_registry.add_examples("gone", {"greet": ["again"]})
    assert b"again" in stored_example_bytes(any_registry.store)
    any_registry.create_head("gone", small_config(), replace=True)
    assert any_registry.list_examples("gone") == []
    assert stored_example_bytes(any_registry.store) == b""
    with pytest.raises(HeadNotFoundError):
        any_registry.add_examples("nobody", {"greet": ["hi"]})


def test_delete_examples_by_id_or_all(any_registry):
    any_registry.create_head("d", small_config())
    any_registry.add_examples("d", {"a": ["one", "two", "three"]})
    assert any_registry.delete_examples("d", [2, 99]) == {"uuid": "d", "deleted": 1, "examples": 2}
    assert [r["id"] for r in any_registry.list_examples("d")] == [1, 3]
    with pytest.raises(BadInputError, match="ids: must be a list of example ids"):
        any_registry.delete_examples("d", "all")
    assert any_registry.delete_examples("d") == {"uuid": "d", "deleted": 2, "examples": 0}
    assert b"one" not in stored_example_bytes(any_registry.store)
    assert any_registry.add_examples("d", {"a": ["four"]}) == 1
    assert any_registry.list_examples("d")[0]["id"] == 4  # ids are never reused


def test_list_heads_pages_through_every_head_in_order(any_registry):
    uids = [any_registry.create_head(f"u{i:02d}", small_config()) for i in range(7)]
    assert any_registry.list_heads() == uids
    assert any_registry.list_heads(0, 3) + any_registry.list_heads(3, 3) + \
        any_registry.list_heads(6, 3) == uids
    assert any_registry.list_heads(7, 3) == [] and any_registry.list_heads(2, 0) == []
    any_registry.delete_head("u01")
    assert any_registry.list_heads(0, 2) == ["u00", "u02"]
    for offset, limit, match in ((-1, 5, "offset"), (0, "9", "limit"), (0, 10_001, "at most")):
        with pytest.raises(BadInputError, match=match):
            any_registry.list_heads(offset, limit)
