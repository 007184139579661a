"""Training many users' add-ins in one go (ph.training.together does the lockstep).

`train_together` takes add-in heads, holds each one's training lock, prepares each run
as a run of its own would be (its examples, replay, seed, Trainer config), and fits the
runs against the same parent weights and add-in layout together: one parent pass per
round for all of them. Each head is then published on its own; a head that is busy, has
nothing to learn, or fails (bad data, a non-finite loss) gets its own error or note, and
the others go on.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import BadInputError, PHError, as_ph_error
from ..modeling.addins import FrozenBase, joint_addin_forward
from ..modeling.engine import make_model
from ..training.together import LockstepTrainer, fit_together
from ..training.trainer import prepare_training
from .addin_heads import addin_spec
from .runs import Run, TrainingRuns

log = logging.getLogger("ph.registry")
MAX_TOGETHER = 128


@dataclass
class Each:
    """Per head of a group run: its validated config (else its stored one with the
    caller's `config` merged in), its stop event and its epoch callback (a background
    group job's)."""

    configs: dict[str, dict] = field(default_factory=dict)
    config: Any = None
    stops: dict[str, threading.Event] = field(default_factory=dict)
    on_epoch: Callable[[str, dict], None] | None = None
    job_id: str | None = None


def train_together(runs: TrainingRuns, uuids: list[str], incremental: bool = True,
                   rebase: bool = False, auto_update: bool = True,
                   each: Each | None = None) -> dict[str, Any]:
    """uuid -> its run's summary, or the PHError that ended it (see the module doc)."""
    each = each or Each()
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        prepared: list[Run] = []
        for uuid in dict.fromkeys(uuids):
            try:
                record = runs.store.read(uuid)
                if not record.get("addin"):
                    raise BadInputError(f"head '{uuid}' is not an add-in; train it with train_head")
                config = each.configs.get(uuid) or runs.training_config(record, each.config, incremental)
                stack.enter_context(runs.guard.training(uuid, each.job_id))
                run = runs.prepare_run(uuid, config, incremental, rebase)
            except Exception as exc:  # noqa: BLE001  (this head's own failure)
                results[uuid] = as_ph_error(exc, f"training head '{uuid}'")
                continue
            if run.done is not None:
                results[uuid] = run.done
            else:
                prepared.append(run)
        for group in _groups(prepared):
            results.update(_fit_group(runs, group, auto_update, each))
    return {uuid: results[uuid] for uuid in dict.fromkeys(uuids)}


def _groups(prepared: list[Run]) -> list[list[Run]]:
    """Runs that can share a parent pass: same parent weights, model and add-in layout
    (at most MAX_TOGETHER in one lockstep: each run has a thread)."""
    groups: dict[tuple, list[Run]] = {}
    for run in prepared:
        base = run.start.base
        spec = addin_spec(run.config, run.start.record["addin"], run.code)
        key = (run.start.record["parent"], base.digest or f"revision {base.revision}",
               spec.layout(), json.dumps(run.config["Model"], sort_keys=True),
               run.config["Trainer"]["n_gpu"])
        groups.setdefault(key, []).append(run)
    return [group[i:i + MAX_TOGETHER] for group in groups.values()
            for i in range(0, len(group), MAX_TOGETHER)]


def _fit_group(runs: TrainingRuns, group: list[Run], auto_update: bool,
               each: Each) -> dict[str, Any]:
    first = group[0]
    frozen = FrozenBase(make_model(first.config, first.code, first.start.base.state),
                        first.config["Model"].get("args") or {})
    results: dict[str, Any] = {}
    trainers, kept = [], []
    with torch.random.fork_rng(devices=[]):
        for run in group:
            try:
                model = runs.model_for(run.start, run.code, run.config, frozen)
                on_epoch = functools.partial(each.on_epoch, run.uuid) if each.on_epoch else None
                trainers.append(prepare_training(run.config, model, runs.data_context(run),
                                                 run.uuid, runs.policy.resolve,
                                                 each.stops.get(run.uuid), on_epoch,
                                                 trainer_class=LockstepTrainer))
                kept.append(run)
            except Exception as exc:  # noqa: BLE001
                results[run.uuid] = as_ph_error(exc, f"training head '{run.uuid}'")
    for run, outcome in zip(kept, fit_together(trainers, joint_addin_forward)):
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            summary = runs.finish_run(run, outcome, auto_update)
            summary["trained_with"] = len(kept)
            results[run.uuid] = summary
        except Exception as exc:  # noqa: BLE001
            results[run.uuid] = exc if isinstance(exc, PHError) else \
                as_ph_error(exc, f"training head '{run.uuid}'")
    return results
