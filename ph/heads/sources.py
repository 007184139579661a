"""A head's config and what it draws on beyond itself, read and checked in one place:
config files, user Python files, the starting weights and encoder model folder, and
the other paths a stored config names.

Every path goes through the caller's PathPolicy and, when it comes from a stored config,
through the stored config's path limits too (see ph.heads.policy), so creating a head,
creating a child and configuring a training all apply the same rules.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ..config.components import UserCode
from ..config.schema import dig, load_config
from ..errors import ConfigError
from ..modeling.encoders import model_path
from .children import merge_trainer_only
from .policy import PathPolicy, check_stored_path
from .validate import validate_config

CODE_SPECS = (("Model",), ("Inference", "preprocess"), ("Inference", "postprocess"),
              ("Trainer", "dataloader"))
MODEL_FOLDER = "Inference.preprocess.args.encoder_args.model"


class ConfigSources:
    """Reads configs and user code through `policy` and keeps user code in `store`."""

    def __init__(self, store, policy: PathPolicy):
        self.store = store
        self.policy = policy

    def read_config(self, config: Any, key: str) -> dict:
        """A config from a dict or a file path (checked against the path policy)."""
        if isinstance(config, (str, os.PathLike)):
            return load_config(self.policy.resolve(config, key), name=str(config))
        if config is not None and not isinstance(config, Mapping):
            raise ConfigError(f"{key}: must be a config dict or the path of a YAML file, "
                              f"got {type(config).__name__}")
        return load_config(config)

    def checked(self, config: Mapping, python_digest: str | None, limits: list | None,
                source: str) -> tuple[dict, UserCode, dict]:
        """(full config, its user code, the code's ids in the store) of a config that names
        its own model: its user code collected and its model folder checked before
        validation loads either."""
        code, code_ids = self.collect_code(config, python_digest, limits)
        self.check_model_folder(config, limits)
        return validate_config(config, code, source=source), code, code_ids

    def with_trainer(self, record: dict, overrides: Mapping, doing: str, why: str,
                     source: str) -> dict:
        """The config of the head `record` with a new Trainer from `overrides`, validated
        against the head's user code: what a child and a training may change. A dataloader
        that changes to user code needs the policy's leave to run it.

        Args:
            doing, why: for the message when overrides touch Model or Inference
                (see `merge_trainer_only`).
            source: who the config is for, in messages.
        """
        base = record["config"]
        merged = merge_trainer_only(base, overrides, doing, why)
        dataloader = merged["Trainer"]["dataloader"]
        if dataloader != base["Trainer"]["dataloader"] and uses_code(dataloader):
            self.policy.check_code("Trainer.dataloader")
        return validate_config({**base, "Trainer": merged["Trainer"]}, self.code_of(record),
                               source=source)

    def collect_code(self, config: Mapping, python_digest: str | None,
                     limits: list | None = None) -> tuple[UserCode, dict]:
        """User sources the config refers to, read once (policy checked) and stored by content."""
        refs = {}
        for path in CODE_SPECS:
            spec = dig(config, path)
            if uses_code(spec):
                refs.setdefault((spec.get("args") or {}).get("python_file") or "", ".".join(path))
        if not refs:
            return UserCode(), {}
        self.policy.check_code(f"{next(iter(refs.values()))}.type")
        ids = {}
        for python_file, where in refs.items():
            if python_digest:
                ids[python_file] = python_digest
            elif python_file:
                file = self.resolve_stored(python_file, f"{where}.args.python_file", limits)
                if not file.is_file():
                    raise ConfigError(f"{where}.args.python_file: '{python_file}' not found "
                                      f"(looked at {file})")
                ids[python_file] = self.store.save_code(file.read_text(encoding="utf-8"))
        return self._user_code(ids), ids

    def code_of(self, record: dict) -> UserCode:
        """The user code a head's record names, as stored when the head was created."""
        return self._user_code(record.get("code", {}))

    def _user_code(self, ids: Mapping[str, str]) -> UserCode:
        return UserCode({k: self.store.load_code(v) for k, v in ids.items()})

    def check_model_folder(self, config: Mapping, limits: list | None = None,
                           policy: PathPolicy | None = None) -> None:
        """An encoder model folder is a path like any other: the policy decides, before
        validation loads it."""
        folder = model_path(dig(config, ("Inference", "preprocess", "args")))
        if folder is not None:
            self.resolve_stored(folder, MODEL_FOLDER, limits, policy)

    def check_stored_model_folder(self, record: dict) -> None:
        """Before a head's encoder loads its model folder, a relative path names a folder in
        this process's working folder: it too must lie inside the record's limits."""
        if record.get("path_limits"):
            self.check_model_folder(record["config"], record["path_limits"], PathPolicy())

    def resolve_stored(self, path: str, key: str, limits: list | None,
                       policy: PathPolicy | None = None) -> Path:
        """A path from a config: allowed by `policy` (this caller's by default) and inside
        the folders of every restricted caller that stored the config (see ph.paths)."""
        full = (policy or self.policy).resolve(path, key)
        check_stored_path(full, limits, key)
        return full


def uses_code(spec: Any) -> bool:
    """Whether a component spec runs user Python (a Custom type or a python_file)."""
    return isinstance(spec, Mapping) and (str(spec.get("type", "")).startswith("Custom")
                                          or "python_file" in (spec.get("args") or {}))
