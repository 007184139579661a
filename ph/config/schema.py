"""Head configs: load from YAML or dict, fill defaults, deep-merge overrides, check shape.

A config has three sections, `Inference`, `Model` and `Trainer` (pytorch-template
style). This module checks the *shape* of a config (keys, value types); whether the
named components exist and accept their args is checked by `ph.components`.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..errors import ConfigError, did_you_mean

# The seed config (configs/default.yaml) plus the keys ph adds (device, dtype, seed, resume,
# keep_checkpoints: a seed run of 100 epochs would otherwise leave 100 checkpoints).
DEFAULT_CONFIG: dict = {
    "Inference": {
        "preprocess": {"type": "PersonalizedHeadPreProcessor", "args": {}},
        "postprocess": {"type": "PersonalizedHeadPostProcessor", "args": {"to_list": True}},
        "weights": "",
        "device": "auto",
        "dtype": "float32",
    },
    "Model": {
        "type": "PersonalizedHead",
        "args": {
            "batch_first": True,
            "embedding_length": 768,
            "n_classes": 10,
            "ph_ff_dim": 512,
            "ph_nhead": 8,
            "ph_nlayers": 1,
        },
    },
    "Trainer": {
        "name": "PersonalizedHeadTrainer",
        "n_gpu": 1,
        "seed": 0,
        "dataloader": {
            "type": "SnipsDataLoader",
            "args": {
                "batch_size": 32,
                "num_workers": 1,
                "shuffle": True,
                "train_json": "train.json",
                "validation_split": 0.2,
            },
        },
        "loss": "nll_loss",
        "metrics": ["accuracy", "top_k_acc"],
        "optimizer": {"type": "Adam", "args": {"amsgrad": True, "lr": 0.001, "weight_decay": 0}},
        "lr_scheduler": {"type": "StepLR", "args": {"gamma": 0.1, "step_size": 50}},
        "trainer": {
            "early_stop": 10,
            "epochs": 100,
            "monitor": "min val_loss",
            "save_dir": "saved/",
            "save_period": 1,
            "tensorboard": True,
            "verbosity": 2,
            "resume": "",
            "keep_checkpoints": 1,
        },
    },
}

# Trainer.incremental is optional and not filled in by default, so the configs of heads
# stored before it existed stay equal to new ones (create_head compares them).
INCREMENTAL_DEFAULTS = {"replay_ratio": 2.0, "replay_max": 1000}
COMPONENT_KEYS = ("type", "args")
SECTION_KEYS = {
    "Inference": {"preprocess", "postprocess", "weights", "device", "dtype"},
    "Model": set(COMPONENT_KEYS),
    "Trainer": {"name", "n_gpu", "seed", "dataloader", "loss", "metrics", "optimizer",
                "lr_scheduler", "trainer", "incremental"},
}
LOOP_KEYS = set(DEFAULT_CONFIG["Trainer"]["trainer"])
DTYPES = ("float32", "bfloat16", "float16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def load_config(source: str | os.PathLike | Mapping | None, name: str | None = None) -> dict:
    """Return a new config dict from a YAML/JSON file path, a dict, or None (empty).

    `name` is how the caller wrote the path (for messages).

    Raises:
        ConfigError: the file is missing, is not valid YAML, or is not a mapping.
    """
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    path = Path(source)
    source = name or source
    if not path.is_file():
        raise ConfigError(f"config file '{source}' not found (looked at {path.resolve()}); "
                          "pass the path of a YAML file or a config dict")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"'{source}' is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"'{source}' must hold a mapping with sections "
                          f"Inference, Model, Trainer; got a {type(data).__name__}")
    return data


def deep_merge(base: Mapping, overrides: Mapping | None) -> dict:
    """Return `base` with `overrides` merged in; neither input is mutated.

    Only the keys given change. A component spec (a mapping with `type`) whose type
    differs from the base's replaces the base spec whole: another type's args would
    not fit it.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in (overrides or {}).items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping) and not _type_changed(old, value):
            merged[key] = deep_merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _type_changed(old: Mapping, new: Mapping) -> bool:
    return "type" in new and "type" in old and new["type"] != old["type"]


def with_defaults(config: Mapping) -> dict:
    """The config with every optional key filled from DEFAULT_CONFIG."""
    return deep_merge(DEFAULT_CONFIG, config)


def config_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """Human-readable key paths where two configs differ (for conflict messages)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        diffs = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                diffs.append(f"{sub} added")
            elif key not in new:
                diffs.append(f"{sub} removed")
            else:
                diffs.extend(config_diff(old[key], new[key], sub))
        return diffs
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def check_shape(config: Any) -> list[str]:
    """Every shape problem of a defaults-filled config (unknown keys, wrong value types).

    Each problem starts with its key path, so callers can skip deeper checks of a part
    whose shape is already wrong.
    """
    if not isinstance(config, Mapping):
        return [f"a config must be a mapping with sections Inference, Model, Trainer; "
                f"got {type(config).__name__}"]
    problems = _unknown_keys(config, SECTION_KEYS, "")
    for section in SECTION_KEYS:
        value = config.get(section)
        if not isinstance(value, Mapping):
            problems.append(f"{section}: must be a mapping, got {value!r}")
            continue
        if section != "Model":  # check_component reports the Model section's own keys
            problems += _unknown_keys(value, SECTION_KEYS[section], section)
        problems += _SECTION_CHECKS[section](value)
    return problems


def _check_model(model: Mapping) -> list[str]:
    return check_component(model, "Model")


def _check_inference(inference: Mapping) -> list[str]:
    problems = []
    for key in ("preprocess", "postprocess"):
        problems += check_component(inference.get(key), f"Inference.{key}")
    problems += _check(inference, "weights", "Inference", lambda v: v is None or isinstance(v, str),
                       "a weights file path or ''")
    problems += _check(inference, "device", "Inference",
                       lambda v: isinstance(v, str) and bool(_DEVICE.fullmatch(v)),
                       "one of auto, cpu, cuda, cuda:N, mps")
    problems += _check(inference, "dtype", "Inference", lambda v: v in DTYPES,
                       f"one of {', '.join(DTYPES)}")
    return problems


def _check_trainer(trainer: Mapping) -> list[str]:
    problems = []
    for key in ("dataloader", "optimizer"):
        problems += check_component(trainer.get(key), f"Trainer.{key}")
    if trainer.get("lr_scheduler") not in (None, {}):
        problems += check_component(trainer["lr_scheduler"], "Trainer.lr_scheduler")
    problems += _check(trainer, "name", "Trainer",
                       lambda v: isinstance(v, str) and bool(_SAFE_NAME.fullmatch(v)),
                       "a name of letters, digits, '.', '_' or '-' (it becomes a folder name)")
    problems += _check(trainer, "n_gpu", "Trainer", _is_count, "a whole number >= 0")
    problems += _check(trainer, "seed", "Trainer", is_int, "a whole number")
    problems += _check(trainer, "loss", "Trainer", lambda v: isinstance(v, str), "a loss name")
    problems += _check(trainer, "metrics", "Trainer",
                       lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v),
                       "a list of metric names")
    problems += incremental_problems(trainer.get("incremental"))
    loop = trainer.get("trainer")
    if not isinstance(loop, Mapping):
        return problems + [f"Trainer.trainer: must be a mapping, got {loop!r}"]
    problems += _unknown_keys(loop, LOOP_KEYS, "Trainer.trainer")
    path = "Trainer.trainer"
    problems += _check(loop, "epochs", path, lambda v: is_int(v) and v >= 1, "a whole number >= 1")
    problems += _check(loop, "early_stop", path, is_int, "a whole number (<= 0 turns it off)")
    problems += _check(loop, "save_period", path, lambda v: is_int(v) and v >= 1,
                       "a whole number >= 1")
    problems += _check(loop, "keep_checkpoints", path, _is_count,
                       "a whole number >= 0 (0 keeps every checkpoint)")
    problems += _check(loop, "verbosity", path, lambda v: v in (0, 1, 2), "0, 1 or 2")
    problems += _check(loop, "tensorboard", path, lambda v: isinstance(v, bool), "true or false")
    problems += _check(loop, "save_dir", path, lambda v: isinstance(v, str) and v != "",
                       "a folder path")
    problems += _check(loop, "resume", path, lambda v: v is None or isinstance(v, str),
                       "a checkpoint path or ''")
    problems += _check(loop, "monitor", path, lambda v: parse_monitor(v) is not None,
                       "'off', 'min <metric>' or 'max <metric>', e.g. 'min val_loss'")
    return problems


def incremental_problems(given: Any) -> list[str]:
    """Shape problems of a Trainer.incremental mapping."""
    if given is None:
        return []
    if not isinstance(given, Mapping):
        return [f"Trainer.incremental: must be a mapping with replay_ratio and replay_max, "
                f"got {given!r}"]
    problems = [f"Trainer.incremental.{k}: unknown key; accepted: replay_max, replay_ratio"
                for k in given if k not in INCREMENTAL_DEFAULTS]
    ratio, most = given.get("replay_ratio", 2.0), given.get("replay_max", 1000)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 100:
        problems.append(f"Trainer.incremental.replay_ratio: must be a number from 0 to 100 (old "
                        f"examples replayed per new one), got {ratio!r}")
    if isinstance(most, bool) or not isinstance(most, int) or most < 0:
        problems.append(f"Trainer.incremental.replay_max: must be a whole number >= 0, got {most!r}")
    return problems


_SECTION_CHECKS = {"Inference": _check_inference, "Model": _check_model,
                   "Trainer": _check_trainer}


def check_component(spec: Any, path: str) -> list[str]:
    """Shape problems of a `{type, args}` spec."""
    if not isinstance(spec, Mapping):
        return [f"{path}: must be a mapping with 'type' and 'args', got {spec!r}"]
    problems = _unknown_keys(spec, set(COMPONENT_KEYS), path)
    if not isinstance(spec.get("type"), str) or not spec.get("type"):
        problems.append(f"{path}.type: must be a component name, got {spec.get('type')!r}")
    if not isinstance(spec.get("args", {}) or {}, Mapping):
        problems.append(f"{path}.args: must be a mapping of constructor arguments, "
                        f"got {spec.get('args')!r}")
    return problems


def component_args(spec: Mapping) -> dict:
    """The `args` of a component spec as a new dict (`args: null` counts as empty)."""
    return dict(spec.get("args") or {})


def parse_monitor(value: Any) -> tuple[str, str] | None:
    """('min'|'max'|'off', metric) from a monitor string, or None if it is malformed."""
    if not isinstance(value, str):
        return None
    parts = value.split()
    if parts == ["off"]:
        return ("off", "")
    if len(parts) == 2 and parts[0] in ("min", "max"):
        return (parts[0], parts[1])
    return None


def _unknown_keys(mapping: Mapping, known: set, path: str) -> list[str]:
    prefix = f"{path}." if path else ""
    return [f"{prefix}{key}: unknown key{did_you_mean(key, known)}; "
            f"accepted: {', '.join(sorted(known))}"
            for key in mapping if key not in known]


def _check(mapping: Mapping, key: str, path: str, ok, expected: str) -> list[str]:
    if key in mapping and not ok(mapping[key]):
        return [f"{path}.{key}: must be {expected}, got {mapping[key]!r}"]
    return []


def is_int(value: Any) -> bool:
    """A whole number (True and False are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return is_int(value) and value >= 0


def dig(mapping: Any, path: tuple) -> Any:
    """The value at `path` (a tuple of keys) in nested mappings; None where one is missing."""
    for key in path:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping
