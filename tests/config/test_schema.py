"""ph.config.schema: loading configs, filling defaults, deep-merging overrides, shape checks."""
from __future__ import annotations

import copy

import pytest

from helpers.paths import ROOT
from ph.config.schema import (DEFAULT_CONFIG, check_shape, config_diff, deep_merge, load_config,
                       parse_monitor, with_defaults)
from ph.errors import ConfigError

DEFAULT_YAML = ROOT / "configs" / "default.yaml"
# Keys ph adds to the seed config; configs/default.yaml (the seed) does not have them.
PH_ADDED_KEYS = {"Inference.device", "Inference.dtype", "Trainer.seed",
                 "Trainer.trainer.resume", "Trainer.trainer.keep_checkpoints"}


def leaves(config, prefix=""):
    """{dotted.key.path: value} of every non-mapping value (empty mappings count as leaves)."""
    out = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            out.update(leaves(value, path))
        else:
            out[path] = value
    return out


def shape_problems(overrides):
    return check_shape(with_defaults(overrides))


def problem_at(problems, path):
    """The one problem whose key path is `path`."""
    found = [p for p in problems if p.split(":")[0] == path]
    assert len(found) == 1, f"expected one problem at {path}, got {problems}"
    return found[0]


# --- load_config -------------------------------------------------------------------------

def test_load_config_reads_a_yaml_file(tmp_path):
    path = tmp_path / "head.yaml"
    path.write_text("Model:\n  type: PHVector2Vector\n  args: {input_dim: 4}\n")
    assert load_config(path) == {"Model": {"type": "PHVector2Vector", "args": {"input_dim": 4}}}
    assert load_config(str(path)) == load_config(path)


def test_load_config_reads_a_json_file(tmp_path):
    path = tmp_path / "head.json"
    path.write_text('{"Trainer": {"loss": "mse_loss"}}')
    assert load_config(path) == {"Trainer": {"loss": "mse_loss"}}


def test_load_config_from_a_dict_returns_an_independent_deep_copy():
    source = {"Model": {"args": {"n_classes": 3}}}
    loaded = load_config(source)
    assert loaded == source
    loaded["Model"]["args"]["n_classes"] = 99
    assert source == {"Model": {"args": {"n_classes": 3}}}


def test_load_config_of_none_and_of_an_empty_file_is_an_empty_config(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    assert load_config(None) == {}
    assert load_config(empty) == {}


def test_load_config_malformed_yaml_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("Model:\n  type: PersonalizedHead\n  args: {n_classes: 3\nTrainer:\n  loss: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "broken.yaml" in message
    assert "not valid YAML" in message
    assert "at line 4" in message  # where the parser notices the unclosed flow mapping


def test_load_config_bad_indentation_error_names_the_line(tmp_path):
    path = tmp_path / "indent.yaml"
    path.write_text("Trainer:\n  loss: nll_loss\n metrics: [accuracy]\n")
    with pytest.raises(ConfigError, match=r"at line 3, column 2"):
        load_config(path)


def test_load_config_missing_file_error_names_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(missing)
    assert "nope.yaml" in str(err.value)
    assert "not found" in str(err.value)


def test_load_config_of_a_directory_is_a_missing_file_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)


@pytest.mark.parametrize("text, kind", [("- Model\n- Trainer\n", "list"),
                                        ("just a string\n", "str"),
                                        ("42\n", "int")])
def test_load_config_rejects_yaml_that_is_not_a_mapping(tmp_path, text, kind):
    path = tmp_path / "scalar.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "must hold a mapping" in str(err.value)
    assert f"got a {kind}" in str(err.value)


# --- deep_merge / with_defaults ----------------------------------------------------------

def test_deep_merge_changes_only_the_given_keys():
    merged = deep_merge(DEFAULT_CONFIG, {"Trainer": {"trainer": {"epochs": 5}}})
    assert merged["Trainer"]["trainer"]["epochs"] == 5
    changed = {k for k, v in leaves(merged).items() if leaves(DEFAULT_CONFIG)[k] != v}
    assert changed == {"Trainer.trainer.epochs"}
    assert set(leaves(merged)) == set(leaves(DEFAULT_CONFIG))


def test_deep_merge_adds_new_keys_next_to_existing_ones():
    merged = deep_merge({"a": {"b": 1}}, {"a": {"c": 2}, "d": 3})
    assert merged == {"a": {"b": 1, "c": 2}, "d": 3}


def test_deep_merge_never_mutates_its_inputs():
    base = copy.deepcopy(DEFAULT_CONFIG)
    overrides = {"Model": {"args": {"n_classes": 3}}, "Trainer": {"metrics": ["accuracy"]},
                 "Inference": {"preprocess": {"type": "V2VPreProcessor", "args": {"input_dim": 4}}}}
    base_before, overrides_before = copy.deepcopy(base), copy.deepcopy(overrides)
    merged = deep_merge(base, overrides)
    assert base == base_before
    assert overrides == overrides_before
    # the result shares no mutable part with either input
    merged["Model"]["args"]["embedding_length"] = 1
    merged["Trainer"]["metrics"].append("mse")
    merged["Inference"]["preprocess"]["args"]["input_dim"] = 7
    assert base == base_before
    assert overrides == overrides_before


def test_deep_merge_with_no_overrides_is_an_equal_copy():
    merged = deep_merge(DEFAULT_CONFIG, None)
    assert merged == DEFAULT_CONFIG
    merged["Model"]["args"]["n_classes"] = 2
    assert DEFAULT_CONFIG["Model"]["args"]["n_classes"] == 10


def test_deep_merge_replaces_a_component_spec_whole_when_its_type_changes():
    merged = deep_merge(DEFAULT_CONFIG, {"Model": {"type": "PHVector2Vector",
                                                   "args": {"input_dim": 4}}})
    assert merged["Model"] == {"type": "PHVector2Vector", "args": {"input_dim": 4}}
    optimizer = deep_merge(DEFAULT_CONFIG, {"Trainer": {"optimizer": {"type": "SGD",
                                                                      "args": {"lr": 0.1}}}})
    assert optimizer["Trainer"]["optimizer"] == {"type": "SGD", "args": {"lr": 0.1}}  # no amsgrad


def test_deep_merge_type_change_without_args_leaves_no_stale_args():
    merged = deep_merge(DEFAULT_CONFIG, {"Model": {"type": "PHVector2Vector"}})
    assert merged["Model"] == {"type": "PHVector2Vector"}


def test_deep_merge_same_type_merges_the_args():
    merged = deep_merge(DEFAULT_CONFIG, {"Model": {"type": "PersonalizedHead",
                                                   "args": {"n_classes": 3}}})
    assert merged["Model"]["args"] == {**DEFAULT_CONFIG["Model"]["args"], "n_classes": 3}


def test_deep_merge_replaces_lists_instead_of_merging_them():
    merged = deep_merge(DEFAULT_CONFIG, {"Trainer": {"metrics": ["mse"]}})
    assert merged["Trainer"]["metrics"] == ["mse"]


def test_with_defaults_fills_every_key():
    filled = with_defaults({"Model": {"args": {"n_classes": 4}}})
    assert set(leaves(filled)) == set(leaves(DEFAULT_CONFIG))
    assert filled["Model"]["args"]["n_classes"] == 4
    assert with_defaults({}) == DEFAULT_CONFIG
    assert with_defaults({}) is not DEFAULT_CONFIG


def test_default_yaml_with_defaults_equals_default_config():
    assert with_defaults(load_config(DEFAULT_YAML)) == DEFAULT_CONFIG


def test_default_yaml_lacks_only_the_keys_ph_adds():
    yaml_leaves = leaves(load_config(DEFAULT_YAML))
    default_leaves = leaves(DEFAULT_CONFIG)
    # `args: {}` left out of the YAML means the same thing as an empty mapping
    missing = {k for k, v in default_leaves.items() if k not in yaml_leaves and v != {}}
    assert missing == PH_ADDED_KEYS
    assert set(yaml_leaves) <= set(default_leaves)
    assert {k: v for k, v in yaml_leaves.items()} == {k: default_leaves[k] for k in yaml_leaves}


# --- check_shape -------------------------------------------------------------------------

def test_check_shape_accepts_the_default_config():
    assert check_shape(with_defaults({})) == []
    assert check_shape(with_defaults(load_config(DEFAULT_YAML))) == []


def test_check_shape_unknown_top_level_key_hints_the_close_one():
    problem = problem_at(shape_problems({"Modle": {"type": "PersonalizedHead"}}), "Modle")
    assert "unknown key" in problem
    assert "did you mean 'Model'?" in problem
    assert "accepted: Inference, Model, Trainer" in problem


@pytest.mark.parametrize("overrides, path, hint", [
    ({"Trainer": {"trainer": {"epoch": 3}}}, "Trainer.trainer.epoch", "epochs"),
    ({"Trainer": {"metric": ["accuracy"]}}, "Trainer.metric", "metrics"),
    ({"Inference": {"device_name": "cpu"}}, "Inference.device_name", "device"),
    ({"Inference": {"preprocess": {"typ": "V2VPreProcessor"}}}, "Inference.preprocess.typ", "type"),
])
def test_check_shape_unknown_nested_key_hints_the_close_one(overrides, path, hint):
    problem = problem_at(shape_problems(overrides), path)
    assert f"did you mean '{hint}'?" in problem


def test_check_shape_reports_an_unknown_model_key_once_with_a_hint():
    # Model is both a section and a component spec; its unknown keys must not be listed twice.
    problems = shape_problems({"Model": {"arg": {}}})
    assert problems == ["Model.arg: unknown key (did you mean 'args'?); accepted: args, type"]


def test_check_shape_unknown_key_far_from_any_gives_no_hint():
    problem = problem_at(shape_problems({"Trainer": {"zzz": 1}}), "Trainer.zzz")
    assert "did you mean" not in problem
    assert "accepted:" in problem


@pytest.mark.parametrize("section", ["Inference", "Model", "Trainer"])
def test_check_shape_reports_a_section_left_empty_in_yaml(tmp_path, section):
    path = tmp_path / "head.yaml"
    path.write_text(f"{section}:\n")  # `Model:` with nothing under it is None
    problems = check_shape(with_defaults(load_config(path)))
    assert problems == [f"{section}: must be a mapping, got None"]


def test_check_shape_reports_a_nested_mapping_set_to_none():
    problems = shape_problems({"Trainer": {"trainer": None}})
    assert problem_at(problems, "Trainer.trainer") == "Trainer.trainer: must be a mapping, got None"


@pytest.mark.parametrize("overrides, path, expected", [
    ({"Trainer": {"trainer": {"epochs": 0}}}, "Trainer.trainer.epochs", ">= 1"),
    ({"Trainer": {"trainer": {"epochs": 2.5}}}, "Trainer.trainer.epochs", "whole number"),
    ({"Trainer": {"trainer": {"epochs": True}}}, "Trainer.trainer.epochs", "whole number"),
    ({"Trainer": {"trainer": {"monitor": "minimize val_loss"}}}, "Trainer.trainer.monitor",
     "'min <metric>'"),
    ({"Trainer": {"trainer": {"monitor": "min"}}}, "Trainer.trainer.monitor", "'off'"),
    ({"Trainer": {"trainer": {"monitor": 3}}}, "Trainer.trainer.monitor", "'max <metric>'"),
    ({"Trainer": {"trainer": {"verbosity": 3}}}, "Trainer.trainer.verbosity", "0, 1 or 2"),
    ({"Trainer": {"trainer": {"tensorboard": "yes"}}}, "Trainer.trainer.tensorboard", "true or false"),
    ({"Trainer": {"trainer": {"save_dir": ""}}}, "Trainer.trainer.save_dir", "folder path"),
    ({"Trainer": {"trainer": {"keep_checkpoints": -1}}}, "Trainer.trainer.keep_checkpoints", ">= 0"),
    ({"Inference": {"device": "gpu"}}, "Inference.device", "auto, cpu, cuda"),
    ({"Inference": {"device": "cuda:x"}}, "Inference.device", "auto, cpu, cuda"),
    ({"Inference": {"dtype": "float64"}}, "Inference.dtype", "float32, bfloat16, float16"),
    ({"Inference": {"weights": 5}}, "Inference.weights", "weights file path"),
    ({"Trainer": {"metrics": "accuracy"}}, "Trainer.metrics", "a list of metric names"),
    ({"Trainer": {"metrics": ["accuracy", 3]}}, "Trainer.metrics", "a list of metric names"),
    ({"Trainer": {"loss": None}}, "Trainer.loss", "a loss name"),
    ({"Trainer": {"n_gpu": -1}}, "Trainer.n_gpu", ">= 0"),
    ({"Trainer": {"seed": "0"}}, "Trainer.seed", "whole number"),
    ({"Trainer": {"name": "../escape"}}, "Trainer.name", "folder name"),
    ({"Model": {"type": ""}}, "Model.type", "component name"),
    ({"Model": {"args": [1, 2]}}, "Model.args", "mapping of constructor arguments"),
    ({"Trainer": {"optimizer": "Adam"}}, "Trainer.optimizer", "'type' and 'args'"),
    ({"Inference": {"preprocess": None}}, "Inference.preprocess", "'type' and 'args'"),
])
def test_check_shape_reports_wrong_value_types_at_their_key_path(overrides, path, expected):
    problem = problem_at(shape_problems(overrides), path)
    assert expected in problem
    assert "got" in problem


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_check_shape_accepts_valid_devices(device):
    assert shape_problems({"Inference": {"device": device}}) == []


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_check_shape_accepts_valid_dtypes(dtype):
    assert shape_problems({"Inference": {"dtype": dtype}}) == []


def test_check_shape_accepts_no_lr_scheduler():
    assert shape_problems({"Trainer": {"lr_scheduler": None}}) == []


def test_check_shape_lists_every_problem_not_just_the_first():
    problems = shape_problems({"Trainer": {"trainer": {"epochs": 0, "monitor": "best"}},
                               "Inference": {"dtype": "int8"}, "Extra": 1})
    assert {p.split(":")[0] for p in problems} == {
        "Trainer.trainer.epochs", "Trainer.trainer.monitor", "Inference.dtype", "Extra"}


@pytest.mark.parametrize("config", [None, [], "Model: x", 3])
def test_check_shape_of_a_non_mapping_is_one_problem(config):
    problems = check_shape(config)
    assert len(problems) == 1
    assert "must be a mapping" in problems[0]
    assert type(config).__name__ in problems[0]


# --- parse_monitor -----------------------------------------------------------------------

@pytest.mark.parametrize("value, parsed", [
    ("min val_loss", ("min", "val_loss")),
    ("max accuracy", ("max", "accuracy")),
    ("  max   val_top_k_acc ", ("max", "val_top_k_acc")),
    ("off", ("off", "")),
])
def test_parse_monitor_reads_mode_and_metric(value, parsed):
    assert parse_monitor(value) == parsed


@pytest.mark.parametrize("value", ["", "min", "max", "minimize loss", "min val_loss extra",
                                   "off loss", "MIN loss", None, 3, ["min", "loss"]])
def test_parse_monitor_returns_none_for_malformed_values(value):
    assert parse_monitor(value) is None


# --- config_diff -------------------------------------------------------------------------

def test_config_diff_lists_changed_added_and_removed_key_paths():
    old = {"Model": {"args": {"n_classes": 10, "ph_nhead": 8}}, "Trainer": {"loss": "nll_loss"}}
    new = {"Model": {"args": {"n_classes": 5, "dropout": 0.2}}, "Inference": {"dtype": "float16"}}
    assert config_diff(old, new) == [
        "Inference added",
        "Model.args.dropout added",
        "Model.args.n_classes: 10 -> 5",
        "Model.args.ph_nhead removed",
        "Trainer removed",
    ]


def test_config_diff_of_equal_configs_is_empty():
    assert config_diff(DEFAULT_CONFIG, copy.deepcopy(DEFAULT_CONFIG)) == []


def test_config_diff_shows_values_with_repr_and_compares_lists_whole():
    diff = config_diff({"Trainer": {"metrics": ["accuracy"], "name": "a"}},
                       {"Trainer": {"metrics": ["accuracy", "mse"], "name": "b"}})
    assert diff == ["Trainer.metrics: ['accuracy'] -> ['accuracy', 'mse']",
                    "Trainer.name: 'a' -> 'b'"]


def test_config_diff_mapping_replaced_by_a_scalar_is_one_change():
    assert config_diff({"Model": {"type": "X"}}, {"Model": None}) == ["Model: {'type': 'X'} -> None"]
