"""What a head learns from: new examples checked against the head before they are
stored, and the examples a training run uses (all of them, or for an incremental run
the new ones plus a replay sample of older ones).

Why here and not in the store: the checks need the head's model and pre-processor
(input size, classes), and the choice of examples is a training policy; the store only
keeps examples, whatever backend it uses.
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from numbers import Number
from typing import Any, Callable, Mapping

from .config import INCREMENTAL_DEFAULTS, incremental_problems
from .data import parse_records
from .errors import BadInputError, ConfigError, TooLargeError
from .example_log import ExampleLimits, LogSummary, label_kind

KIND_WORDS = {"index": "class indices", "name": "class names", "vector": "vectors"}


@dataclass
class HeadFacts:
    """What new examples must agree with: the head's input size and classes."""

    uuid: str
    dim: int | None = None          # vector length the pre-processor takes (None: unknown)
    takes_text: bool = True
    n_classes: int | None = None    # a classifier's class count
    output_dim: int | None = None   # a vector-to-vector head's target length
    labels: list | None = None      # the head's label map

    @classmethod
    def of(cls, uuid: str, config: Mapping, labels: list | None, preprocessor: Any) -> "HeadFacts":
        args = config["Model"].get("args") or {}
        dim = getattr(preprocessor, "dim", None)
        known = dim is not None  # a built-in vector pre-processor: its input rules are known
        return cls(uuid, dim if known else None,
                   hasattr(preprocessor, "encoder") or not known,
                   args.get("n_classes") if isinstance(args.get("n_classes"), int) else None,
                   args.get("output_dim") if isinstance(args.get("output_dim"), int) else None,
                   labels)


def check_examples(examples: Any, head: HeadFacts, stored: LogSummary,
                   limits: ExampleLimits) -> list[dict]:
    """The rows to store for an add_examples call, or an error naming the bad record.

    The whole call is checked before anything is stored.
    """
    records = parse_records(examples, "examples")
    if len(records) > limits.per_call:
        raise TooLargeError(f"examples: {len(records)} examples in one call; at most "
                            f"{limits.per_call} per call are accepted. Send them in several calls "
                            "(the operator can raise PH_MAX_EXAMPLES_PER_CALL)")
    if stored.count + len(records) > limits.per_head:
        raise TooLargeError(f"head '{head.uuid}' holds {stored.count} examples; adding "
                            f"{len(records)} would pass its limit of {limits.per_head}. Delete "
                            "some (delete_examples) or ask the operator to raise "
                            "PH_MAX_EXAMPLES_PER_HEAD")
    rows = [{"label": label, key: _checked_input(key, value, i, head)}
            for i, (key, value, label) in enumerate(records)]
    _check_labels([r["label"] for r in rows], head, stored)
    return rows


def _checked_input(key: str, value: Any, index: int, head: HeadFacts) -> Any:
    where = f"examples record {index}"
    if key == "text":
        if not isinstance(value, str) or not value.strip():
            raise BadInputError(f"{where}: 'text' must be a non-empty string, got {value!r:.60}")
        if not head.takes_text:
            raise BadInputError(f"{where}: this head takes vectors of {head.dim} numbers, not "
                                "text; send 'input_ids' (or 'embedding') instead")
        return value
    vector = value
    if isinstance(vector, list) and len(vector) == 1 and isinstance(vector[0], list):
        vector = vector[0]  # [[...]] as in the pandas-style layout
    if not isinstance(vector, list) or not vector or not all(
            isinstance(v, Number) and not isinstance(v, bool) for v in vector):
        raise BadInputError(f"{where}: '{key}' must be a list of numbers, got {value!r:.60}")
    if not all(math.isfinite(v) for v in vector):
        raise BadInputError(f"{where}: '{key}' holds NaN or infinity; use finite numbers")
    if head.dim is not None and len(vector) != head.dim:
        raise BadInputError(f"{where}: '{key}' has {len(vector)} numbers; this head takes vectors "
                            f"of {head.dim} numbers")
    return vector


def _check_labels(labels: list, head: HeadFacts, stored: LogSummary) -> None:
    first = None
    for i, label in enumerate(labels):
        kind = label_kind(label)
        if kind is None:
            raise BadInputError(f"examples record {i}: label {label!r:.60} must be a class index, "
                                "a class name or a list of numbers")
        expected = first or stored.label_kind
        if expected and kind != expected:
            had = "this call's first record has" if first else \
                f"the head's {stored.count} stored examples have"
            raise BadInputError(f"examples record {i}: label {label!r:.60} is one of the "
                                f"{KIND_WORDS[kind]}, but {had} {KIND_WORDS[expected]}; use one "
                                "kind of label per head")
        first = first or kind
        _check_label(label, kind, i, head, stored)
    if first == "name" and head.n_classes:
        names = set(head.labels or []) | stored.names | set(labels)
        if len(names) > head.n_classes:
            raise BadInputError(f"examples: with these labels head '{head.uuid}' would have "
                                f"{len(names)} classes but its model has n_classes="
                                f"{head.n_classes}; new labels: "
                                f"{', '.join(sorted(set(labels) - set(head.labels or []) - stored.names)[:8])}. "
                                "Create the head with a larger Model.args.n_classes")


def _check_label(label: Any, kind: str, i: int, head: HeadFacts, stored: LogSummary) -> None:
    where = f"examples record {i}"
    if kind == "vector":
        if head.n_classes and not head.output_dim:
            raise BadInputError(f"{where}: label is a vector, but this head is a classifier of "
                                f"{head.n_classes} classes; give a class name or index")
        size = head.output_dim or stored.vector_len
        if size and len(label) != size:
            raise BadInputError(f"{where}: label has {len(label)} numbers; this head's targets "
                                f"have {size}")
        return
    if head.output_dim and not head.n_classes:
        raise BadInputError(f"{where}: label {label!r:.60} is not a vector, but this head predicts "
                            f"vectors of {head.output_dim} numbers")
    if kind == "index":
        if head.labels:
            raise BadInputError(f"{where}: label {label} is a class index, but this head's classes "
                                f"have names ({', '.join(map(str, head.labels[:8]))}); give the name")
        if label < 0 or (head.n_classes and label >= head.n_classes):
            raise BadInputError(f"{where}: label {label} is outside 0..{(head.n_classes or 1) - 1} "
                                f"(Model.args.n_classes={head.n_classes})")


# --- choosing what a run trains on -----------------------------------------------------
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
