"""A head's stored examples: added, listed and deleted (HeadExamples), and the checks
new examples pass before they are stored (input size, label kinds, classes and limits;
the whole call is checked before anything is stored).

Why here and not in the store: the checks need the head's model and pre-processor
(input size, classes); the store only keeps examples, whatever backend it uses.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from numbers import Number
from typing import Any, Mapping

from ..training.data import parse_records
from ..errors import BadInputError, ConfigError, ConflictError, NotFoundError, TooLargeError
from ..stores import check_uuid
from ..stores.example_files import ExampleLimits, LogSummary, label_kind
from .children import follows_parent
from .loader import HeadLoader
from .runs import TrainingGuard

KIND_WORDS = {"index": "class indices", "name": "class names", "vector": "vectors"}
REPLACED_TRIES = 3  # add_examples: a head replaced while its examples were checked is checked again


class HeadExamples:
    """The examples stored with each head in `store`, within `limits`."""

    def __init__(self, store, loader: HeadLoader, guard: TrainingGuard, limits: ExampleLimits):
        self.store = store
        self.loader = loader
        self.guard = guard
        self.limits = limits

    def add(self, uuid: str, examples: Any) -> int:
        """The head's pre-processor is built outside its lock (that may be slow); the
        examples are checked and stored under the lock, against the head as it is then,
        and the pre-processor built again if the head was replaced meanwhile."""
        record = self.store.read(check_uuid(uuid))
        for _ in range(REPLACED_TRIES):
            dataloader = record["config"]["Trainer"]["dataloader"]["type"]
            if dataloader != "SnipsDataLoader":
                raise ConfigError(f"head '{uuid}' trains with Trainer.dataloader {dataloader}, "
                                  "which reads its own Dataset; stored examples need "
                                  "SnipsDataLoader")
            preprocessor = self.loader.preprocessor(record)
            with self.store.lock(uuid):
                current = self.store.read(uuid)
                if current["created"] == record["created"]:
                    stored = self.store.examples(uuid)
                    facts = HeadFacts.of(uuid, current["config"], self._labels(current),
                                         preprocessor)
                    rows = check_examples(examples, facts, stored.summary(), self.limits)
                    return stored.append(rows).count
            record = current
        raise ConflictError(f"head '{uuid}' was replaced again and again while the examples were "
                            "checked; call add_examples again")

    def _labels(self, record: dict) -> list | None:
        """The label map the head's next training starts from: its parent's while it
        follows its parent (an untrained child or add-in), else its own."""
        parent = follows_parent(record)
        if parent is None:
            return record.get("labels")
        with contextlib.suppress(NotFoundError):
            return self.store.read(parent).get("labels")
        return None

    def list(self, uuid: str, offset: int = 0, limit: int = 100) -> list[dict]:
        self.store.signature(check_uuid(uuid))  # raises if the head does not exist
        check_page(offset, limit, self.limits.per_call, "examples")
        return self.store.examples(uuid).read(offset, limit)

    def delete(self, uuid: str, ids: list | None = None) -> dict:
        """Refused while the head trains: the run may be reading them, and would publish
        what it learnt from them."""
        self.store.signature(check_uuid(uuid))
        if ids is not None:
            if not isinstance(ids, (list, tuple)) or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise BadInputError(f"ids: must be a list of example ids (whole numbers, as "
                                    f"list_examples shows them) or null for all, got {ids!r:.80}")
            ids = set(ids)
        with self.store.lock(uuid):
            self.guard.check_idle(uuid, "delete_examples")
            stored = self.store.examples(uuid)
            deleted = stored.delete(ids)
            return {"uuid": uuid, "deleted": deleted, "examples": stored.summary().count}


def check_page(offset: Any, limit: Any, most: int, what: str) -> None:
    """A page of a listing (examples, uuids): whole numbers, at most `most` per call."""
    for name, value in (("offset", offset), ("limit", limit)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadInputError(f"{name}: must be a whole number >= 0, got {value!r}")
    if limit > most:
        raise BadInputError(f"limit: at most {most} {what} per call, got {limit}; page with offset")


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
