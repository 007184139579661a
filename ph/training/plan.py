"""Which examples a training run uses: all stored examples, or for an incremental run
the new ones plus a replay sample of older ones (the head's own and what its weights
were trained on). A training policy, so it lives with training; the store only keeps
examples, whatever backend it uses.
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..config.schema import INCREMENTAL_DEFAULTS, incremental_problems
from ..errors import ConfigError


def choose_data(config: dict, named: bool, incremental: bool,
                stored: Callable[[], int]) -> dict:
    """The training config with its data source decided.

    A train_json the call names (`named`) is used together with the stored examples.
    Without one, a head that has stored examples (`stored()` > 0) trains on them only
    (train_json becomes null), and a head without any uses its config's train_json.
    An incremental run uses stored examples only.
    """
    dataloader = config["Trainer"]["dataloader"]
    if dataloader["type"] != "SnipsDataLoader":
        if incremental:
            raise ConfigError(f"train_head(incremental=True) trains on stored examples, which "
                              f"need Trainer.dataloader SnipsDataLoader (this run uses "
                              f"{dataloader['type']})")
        return config
    train_json = (dataloader.get("args") or {}).get("train_json")
    if incremental and named and train_json:
        raise ConfigError(f"Trainer.dataloader.args.train_json: an incremental run trains on "
                          f"the head's stored examples only, not on '{train_json}'; add the "
                          "file's examples with add_examples, or train without incremental")
    if not named and train_json and (incremental or stored()):
        config = copy.deepcopy(config)
        config["Trainer"]["dataloader"]["args"]["train_json"] = None
    return config


@dataclass
class ExamplePlan:
    """The stored examples one run trains on, and the high-water mark it reaches."""

    inputs: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    replay_inputs: list = field(default_factory=list)  # pool of old examples to draw from
    replay_labels: list = field(default_factory=list)
    replay_per_epoch: int = 0
    seen_up_to: int = 0      # the largest example id this run covers
    info: dict = field(default_factory=dict)

    @property
    def nothing_new(self) -> bool:
        return self.info.get("incremental", False) and not self.info.get("new")

    @property
    def replay(self) -> tuple[list, list, int] | None:
        return ((self.replay_inputs, self.replay_labels, self.replay_per_epoch)
                if self.replay_per_epoch else None)


def incremental_settings(trainer: Mapping) -> dict:
    """Trainer.incremental with defaults (replay_ratio, replay_max), checked."""
    given = trainer.get("incremental") or {}
    problems = incremental_problems(given)
    if problems:
        raise ConfigError(problems)
    return {**INCREMENTAL_DEFAULTS, **given}


def plan_examples(rows: list[dict], seen_up_to: int, incremental: bool, trainer: Mapping,
                  seed: int, inherited: list[dict] | None = None) -> ExamplePlan:
    """All stored examples, or for an incremental run those added after `seen_up_to`
    plus replayed older ones.

    Replay: each epoch draws `replay_ratio` old examples per new one (at most
    `replay_max`) afresh from a class-balanced pool of old examples, so over its epochs
    the run revisits many old examples while each epoch costs only about
    (1 + replay_ratio) x new examples. The pool holds no more rows than the run can draw
    (per-epoch draw x epochs), so its encoding cost also follows the new examples.

    Old examples are the head's own stored examples up to `seen_up_to` and the
    `inherited` rows: what the current weights were trained on besides them (the data
    sets of earlier runs, a parent's data and examples; see `replay_sources`).
    """
    last = max((r["id"] for r in rows), default=seen_up_to)
    plan = ExamplePlan(seen_up_to=max(last, seen_up_to))
    if not incremental:
        _fill(plan.inputs, plan.labels, rows)
        plan.info = {"stored": len(rows)}
        return plan
    settings = incremental_settings(trainer)
    new = [r for r in rows if r["id"] > seen_up_to]
    old = [r for r in rows if r["id"] <= seen_up_to] + list(inherited or [])
    per_epoch = min(len(old), settings["replay_max"],
                    math.ceil(settings["replay_ratio"] * len(new)))
    epochs = int((trainer.get("trainer") or {}).get("epochs", 1))
    pool = _balanced_sample(old, min(len(old), per_epoch * max(epochs, 1)),
                            random.Random(seed * 1_000_003 + seen_up_to))
    _fill(plan.inputs, plan.labels, new)
    _fill(plan.replay_inputs, plan.replay_labels, pool)
    plan.replay_per_epoch = per_epoch
    plan.info = {"incremental": True, "new": len(new), "replayed_per_epoch": per_epoch,
                 "replay_pool": len(pool), "older": len(old), "inherited": len(inherited or []),
                 "replay_ratio": settings["replay_ratio"]}
    return plan


NOTHING_TO_REPLAY = (
    "this incremental run has nothing to replay: the head's weights were trained on data ph "
    "did not keep (a train_json file used before ph stored training data, or examples since "
    "deleted), so it learns the new examples alone and may forget its other labels. To keep "
    "them, train the head (or its parent) once with its train_json file, which stores that "
    "data for later runs to replay, or add_examples the old data, or train without "
    "incremental and name the train_json file")


def forgetting_warning(plan: ExamplePlan, knows_something: bool) -> str | None:
    """The warning an incremental run gets when it starts from trained weights but has
    no old examples to replay: it would forget silently otherwise."""
    if plan.info.get("incremental") and knows_something and not plan.info.get("older") \
            and plan.info.get("replay_ratio"):
        return NOTHING_TO_REPLAY
    return None


def _fill(inputs: list, labels: list, rows: list[dict]) -> None:
    for row in rows:
        inputs.append(next(row[k] for k in ("text", "input_ids", "embedding") if k in row))
        labels.append(row["label"])


def _balanced_sample(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    """n rows taken round-robin over labels (each label's rows shuffled), so a label with
    few examples is still replayed."""
    if n <= 0:
        return []
    groups: dict[Any, list] = {}
    for row in rows:
        label = row["label"]
        groups.setdefault(tuple(label) if isinstance(label, list) else label, []).append(row)
    if len(groups) > len(rows) // 2:  # vector targets: (almost) every label differs
        return rng.sample(rows, n)
    queues = [rng.sample(g, len(g)) for _, g in sorted(groups.items(), key=lambda kv: str(kv[0]))]
    out: list[dict] = []
    while len(out) < n:
        for queue in queues:
            if queue and len(out) < n:
                out.append(queue.pop())
    return out
