"""Check a whole head config before anything runs: shape, component names, constructor
arguments, optimizer/scheduler values and the monitored metric, all problems at once."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import torch

from ..config.components import LOSSES, METRICS, MODELS, UserCode, UserComponent, problems_of
from ..config.schema import check_shape, dig, parse_monitor, with_defaults
from ..training.data import DataContext
from ..modeling.encoders import encoder_dim
from ..modeling.engine import build_model, build_processors
from ..errors import ConfigError
from ..training.trainer import build_loader, build_optimizer, build_scheduler

_validated: dict[str, dict] = {}  # digest of (config, code) -> filled config


def validate_config(config: Any, code: UserCode | None = None, source: str | None = None) -> dict:
    """Return `config` with defaults filled, or raise one ConfigError listing every problem.

    Nothing is trained or loaded from disk; built-in models are built on the meta device
    so the check costs no memory.
    """
    code = code or UserCode()
    if not isinstance(config, Mapping):
        raise ConfigError(f"a config must be a mapping with sections Inference, Model, Trainer; "
                          f"got {type(config).__name__}", source)
    full = _follow_encoder(config, with_defaults(config))
    try:
        key = _digest(full, code)
    except (TypeError, ValueError):
        raise ConfigError("values must be plain YAML/JSON types (text, numbers, true/false, "
                          "lists, mappings); quote dates and other special values", source) from None
    if key in _validated:
        return json.loads(json.dumps(_validated[key]))
    problems = check_shape(full)
    broken = _Broken(problems)
    if not broken("Model"):
        problems += problems_of(lambda: _check_model(full, code))
    if not broken("Model", "Inference.preprocess", "Inference.postprocess"):
        problems += problems_of(lambda: build_processors(full, code))
    if "Trainer" not in broken.paths:
        problems += _trainer_problems(full["Trainer"], code, broken)
    if problems:
        raise ConfigError(problems, source)
    if len(_validated) >= 512:
        _validated.pop(next(iter(_validated)))
    _validated[key] = full
    return json.loads(json.dumps(full))


def _follow_encoder(given: Mapping, full: dict) -> dict:
    """`full` with Model.args.embedding_length set to the size of the vectors the
    pre-processor's encoder makes (384 for all-MiniLM-L6-v2), when the user left it out:
    the default (768) only fits the hashing encoder, which takes any size."""
    model_args = dig(given, ("Model", "args"))
    pre_args = dig(full, ("Inference", "preprocess", "args"))
    full_args = dig(full, ("Model", "args"))
    if (isinstance(model_args, Mapping) and "embedding_length" in model_args) \
            or not isinstance(pre_args, Mapping) or "embedding_length" in pre_args \
            or not isinstance(full_args, dict) or "embedding_length" not in full_args:
        return full
    dim = encoder_dim(pre_args.get("encoder"), pre_args.get("encoder_args"))
    if dim is not None:
        full_args["embedding_length"] = dim
    return full


class _Broken:
    """Which key paths already have shape problems (their deeper checks would only crash)."""

    def __init__(self, problems: list[str]):
        self.paths = {p.split(":")[0] for p in problems}

    def __call__(self, *paths: str) -> bool:
        """True if a path, one of its parents or one of its children is broken."""
        return any(b == p or b.startswith(p + ".") or p.startswith(b + ".")
                   for b in self.paths for p in paths)


def _check_model(config: Mapping, code: UserCode) -> None:
    if isinstance(MODELS.get(config["Model"]["type"], "Model.type"), UserComponent):
        build_model(config, code)  # user code may not run on the meta device
    else:
        with torch.device("meta"):
            build_model(config, code)


def _trainer_problems(trainer: Mapping, code: UserCode, broken: _Broken) -> list[str]:
    problems = []
    if not broken("Trainer.dataloader"):
        problems += problems_of(lambda: build_loader(trainer["dataloader"], DataContext(code=code)))
    if not broken("Trainer.loss"):
        problems += problems_of(lambda: LOSSES.get(trainer["loss"], "Trainer.loss"))
    if not broken("Trainer.metrics"):
        for i, name in enumerate(trainer["metrics"]):
            problems += problems_of(lambda: METRICS.get(name, f"Trainer.metrics[{i}]"))
    optimizer: list = []
    if not broken("Trainer.optimizer"):
        problems += problems_of(lambda: optimizer.append(
            build_optimizer(trainer["optimizer"], [torch.nn.Parameter(torch.zeros(1))])))
    if optimizer and not broken("Trainer.lr_scheduler"):
        problems += problems_of(lambda: build_scheduler(trainer["lr_scheduler"], optimizer[0]))
    if not broken("Trainer.trainer.monitor", "Trainer.metrics"):
        mode, metric = parse_monitor(trainer["trainer"]["monitor"])
        known = ["loss"] + [m for m in trainer["metrics"] if m in METRICS]
        if mode != "off" and metric.removeprefix("val_") not in known:
            choices = ", ".join(f"{p}{m}" for p in ("", "val_") for m in known)
            problems.append(f"Trainer.trainer.monitor: '{metric}' is not a logged metric; "
                            f"choose one of {choices}, or 'off'")
    return problems


def _digest(config: Mapping, code: UserCode) -> str:
    blob = json.dumps([config, code.sources], sort_keys=True, allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
