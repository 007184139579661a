"""Add-in heads at the heads level: which spec a record's add-in has, what a run of one
starts from, and moving users onto a new parent revision (ph.modeling.addins has the math).

An add-in head is a child (`parent`) whose record has `addin` ({type, args}). Until its
first training it follows its parent like any child (an untrained add-in is the
identity). A run trains only the add-in, against a *pinned* revision of the parent:
the parent's weights of that revision are stored once by content (`base`, a snapshot
in the store) and the record names them with `parent_revision`. The parent may train
on; its add-ins keep answering on the weights they were trained with, never on others,
until the app moves them (`rebase`: an incremental run on the parent's current weights).
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Mapping

import torch

from ..config.components import UserCode
from ..errors import BadInputError, NotFoundError
from ..modeling.addins import AddinSpec, addin_bytes, parse_addin
from ..modeling.engine import build_model, make_model


@dataclass
class AddinBase:
    """The parent weights an add-in run trains against: their snapshot id (None until
    stored), the weights and the parent revision they are."""

    digest: str | None
    state: dict
    revision: int


def addin_spec(config: Mapping, addin: Mapping, code: UserCode) -> AddinSpec:
    """The AddinSpec of a head's stored `addin`, checked against its Model (cached)."""
    key = (json.dumps(config["Model"], sort_keys=True), json.dumps(addin, sort_keys=True),
           tuple(sorted(code.sources.items())))
    spec = _SPECS.get(key)
    if spec is None:
        with torch.device("meta"):
            spec = parse_addin(addin, build_model(config, code))
        if len(_SPECS) >= 256:
            _SPECS.clear()
        _SPECS[key] = spec
    return spec


_SPECS: dict[tuple, AddinSpec] = {}  # building a model, even on meta, costs ~1 ms


def check_addin(value, parent: Mapping, code: UserCode) -> dict:
    """The `addin` argument of create_head checked against the parent; its stored form.

    Raises:
        BadInputError: the parent is itself an add-in.
        ConfigError: see parse_addin.
    """
    if parent.get("addin"):
        raise BadInputError(f"parent: head '{parent['uuid']}' is itself an add-in (on "
                            f"'{parent.get('parent')}'); an add-in must sit on a whole head. "
                            f"Use parent='{parent.get('parent')}'")
    with torch.device("meta"):
        model = build_model(parent["config"], code)
    return parse_addin(value, model).to_dict()


# How an add-in trains unless its create_head config says otherwise: every epoch counts
# (choosing the epoch by the loss on a few held-back rows picked early epochs, which the
# frozen parent makes noisy), more of the parent's data is replayed per new example, and
# a larger step (the add-in starts at zero). With these, lora rank 4 and the adapter came
# within 0.02 of a whole head on bench/addins.py's new-label task (BENCHMARKS.md).
ADDIN_TRAINING = {"trainer": {"monitor": "off"}, "incremental": {"replay_ratio": 4.0},
                  "optimizer": {"args": {"lr": 0.003}}}


def with_addin_training(overrides: Mapping | None) -> dict:
    """create_head's config overrides with ADDIN_TRAINING filled in where they are silent."""
    overrides = json.loads(json.dumps(overrides or {}))
    _fill(overrides.setdefault("Trainer", {}), ADDIN_TRAINING)
    return overrides


def _fill(target: dict, defaults: Mapping) -> None:
    for key, value in defaults.items():
        if isinstance(value, Mapping):
            part = target.setdefault(key, {})
            if isinstance(part, dict):
                _fill(part, value)
        else:
            target.setdefault(key, value)


def refuse_child_of_addin(parent: Mapping) -> None:
    """A plain child copies its parent's weights at its first training; an add-in's
    weights are only a delta, so it cannot be a parent."""
    if parent.get("addin"):
        raise BadInputError(f"parent: head '{parent['uuid']}' is an add-in; children start from "
                            f"a whole head. Use parent='{parent.get('parent')}'")


class AddinBases:
    """What add-in runs train against: the pinned snapshot, or (first run, rebase) the
    parent's weights as they are now. The last few are kept, so that many users' runs on
    one parent load, hash and store its weights once, not once per user."""

    KEEP = 4

    def __init__(self, store):
        self.store = store
        self._kept: dict[tuple, AddinBase] = {}
        self._lock = threading.Lock()

    def get(self, record: Mapping, trained: bool, rebase: bool, code: UserCode) -> AddinBase:
        if trained and not rebase:
            key = ("snapshot", record["base"])
            return self._kept_or(key, lambda: AddinBase(
                record["base"], self.store.load_snapshot(record["base"]), record["parent_revision"]))
        try:
            parent = self.store.read(record["parent"])
        except NotFoundError:
            raise NotFoundError(f"head '{record['uuid']}' is an add-in on '{record['parent']}', "
                                "which no longer exists") from None
        key = ("current", parent["uuid"], parent["created"], parent["revision"])
        return self._kept_or(key, lambda: self._current(record["parent"], code))

    def _current(self, uuid: str, code: UserCode) -> AddinBase:
        parent, state = self.store.read_current(uuid)
        if state is None:  # an untrained parent answers with its seeded weights
            state = make_model(parent["config"], code, None, parent["seed"]).state_dict()
        return AddinBase(None, state, parent["revision"])

    def _kept_or(self, key: tuple, load) -> AddinBase:
        with self._lock:
            base = self._kept.pop(key, None)
        if base is None:
            base = load()
        with self._lock:
            self._kept[key] = base
            while len(self._kept) > self.KEEP:
                self._kept.pop(next(iter(self._kept)))
        return base


def addin_info(record: Mapping, parent: Mapping | None, spec: AddinSpec | None) -> dict:
    """check_head's `addin` entry: kind, rank, bytes, parent and the revision pinned."""
    info = {"type": record["addin"]["type"], "rank": record["addin"]["args"]["rank"],
            "targets": record["addin"]["args"]["targets"],
            "own_output": record["addin"]["args"]["own_output"],
            "parent": record["parent"], "parent_revision": record.get("parent_revision"),
            "parent_current_revision": parent["revision"] if parent else None}
    if spec is not None:
        info["bytes"] = addin_bytes(spec)
    info["behind_parent"] = bool(record.get("weights")) and parent is not None \
        and record.get("parent_revision") != parent["revision"]
    return info
