"""The action functions: argument forms, checks and JSON-able results."""
from __future__ import annotations

import math

import pytest
import torch

import ph
import ph.api
from helpers.heads import small_config
from ph.errors import BadInputError, ConfigError


def test_both_call_forms_of_the_seed_work(fresh_api, workdir):
    (workdir / "config.yaml").write_text("Model:\n  args: {embedding_length: 64, ph_nhead: 2}\n")
    ph.create_head_list(config_file="config.yaml")
    assert ph.create_head(uuid="a") == "a"
    assert ph.create_head("b", {"Model": {"args": {"n_classes": 4}}}) == "b"
    assert ph.get_config("b")["Model"]["args"]["embedding_length"] == 64
    assert ph.list_heads() == ["a", "b"]


def test_config_given_twice_is_refused(fresh_api):
    with pytest.raises(ConfigError, match="not both"):
        ph.create_head(uuid="x", config={}, config_file="c.yaml")


@pytest.mark.parametrize("call", [
    lambda: ph.create_head(uuid="x", replace="false"),
    lambda: ph.train_head("x", background="no"),
    lambda: ph.train_head("x", auto_update=1),
])
def test_flags_must_be_true_or_false(fresh_api, call):
    with pytest.raises(BadInputError, match="must be true or false"):
        call()


def test_predict_many_accepts_pairs_and_objects_and_reports_failures_in_place(fresh_api):
    ph.create_head(uuid="a", config=small_config())
    answers = ph.predict_many([["a", "hi"], {"uuid": "a", "data": ["x", "y"]}, ["nobody", "hi"]])
    assert answers[0] == ph.predict("a", "hi") and answers[1] == ph.predict("a", ["x", "y"])
    assert answers[2]["error"] == "not_found" and "nobody" in answers[2]["message"]
    with pytest.raises(BadInputError, match=r"requests\[0\]"):
        ph.predict_many([["only-uuid"]])
    with pytest.raises(BadInputError, match="must be a list"):
        ph.predict_many("a")


def test_results_are_plain_json_values():
    plain = ph.api.to_plain({"t": torch.tensor([1.5, 2.0]), "n": [float("nan"), math.inf, 3]})
    assert plain == {"t": [1.5, 2.0], "n": [None, None, 3]}


def test_setup_without_arguments_keeps_the_configured_registry(fresh_api):
    assert ph.setup() is fresh_api  # Jaseci calls setup() with no context on every load
    other = ph.setup(heads_dir=str(fresh_api.store.root.parent / "other"))
    assert other is not fresh_api and ph.api.get_registry() is other


def test_memory_budget_sizes_are_read_with_units():
    assert ph.api.parse_bytes("2GB") == 2 * 2**30 and ph.api.parse_bytes("512MiB") == 512 * 2**20
    assert ph.api.parse_bytes(1000) == 1000
    with pytest.raises(ConfigError, match="memory_budget"):
        ph.api.parse_bytes("lots")


def test_seed_aliases_build_the_same_head_as_the_canonical_names(fresh_api, workdir):
    from ph.config.schema import with_defaults
    from ph.modeling.engine import make_model
    canonical = small_config()
    alias = small_config()
    alias["Model"]["type"] = "PHClassifier"
    alias["Inference"] = {"preprocess": {"type": "SnipsPreProcessor"},
                          "postprocess": {"type": "SnipsPostProcessor"}}
    weights = workdir / "start.pt"
    torch.save(make_model(with_defaults(canonical), None, seed=3).state_dict(), weights)
    for uid, config in (("canonical", canonical), ("alias", alias)):
        config.setdefault("Inference", {})["weights"] = str(weights)
        ph.create_head(uuid=uid, config=config)
    texts = ["order a pizza", "will it rain", "play Bach", "wake me at 6", "book a table"]
    assert ph.predict("alias", texts) == ph.predict("canonical", texts)
    assert ph.get_config("alias")["Model"]["type"] == "PHClassifier"
