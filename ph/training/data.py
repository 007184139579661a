"""Training data: the intent-data loader (SnipsDataLoader), user Datasets
(CustomDataLoader), validation splits and the label map kept with a head."""
from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass, field
from numbers import Number
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, random_split

from ..config.components import DATALOADERS, UserCode, bind, construct
from ..config.schema import is_int
from ..errors import BadInputError, ConfigError

log = logging.getLogger("ph.data")
ARGS = "Trainer.dataloader.args"
FORMATS = ("{label: [utterance, ...]}, a list of {\"text\" (or \"input_ids\"/\"embedding\"), "
           "\"label\"} records, or pandas-style columns {\"label\": {row: ...}, \"input_ids\" "
           "(or \"embedding\"/\"text\"): {row: ...}}")


@dataclass
class DataContext:
    """What a loader needs from the head: injected by ph, never set in a config."""

    code: UserCode = field(default_factory=UserCode)
    preprocessor: Any = None
    labels: list | None = None
    n_classes: int | None = None
    seed: int = 0
    resolve_path: Callable[[str, str], Path] = lambda p, key: Path(p)
    examples: tuple[list, list] | None = None  # (inputs, labels) stored with the head
    replay: tuple[list, list, int] | None = None  # (inputs, labels, rows drawn per epoch)
    # entered while the examples are encoded: their stored embeddings (heads.stored_embeddings)
    stored_embeddings: ContextManager = field(default_factory=contextlib.nullcontext)


@dataclass
class TrainingData:
    """Batches for one training run, and the label map they were encoded with."""

    train: Iterable
    valid: Iterable | None
    n_train: int
    n_valid: int
    labels: list | None = None


class TensorBatches:
    """Mini-batches over in-memory tensors; a fresh shuffle each epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool,
                 generator: torch.Generator):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.generator = shuffle, generator

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                yield self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]
            else:
                idx = order[start:start + self.batch_size]
                yield self.x[idx], self.y[idx]


class ReplayBatches(TensorBatches):
    """Each epoch: every given row plus a fresh draw of `per_epoch` rows from a replay
    pool, so an incremental run sees many old examples over its epochs while each epoch
    costs only (new + per_epoch) rows."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pool_x: torch.Tensor,
                 pool_y: torch.Tensor, per_epoch: int, batch_size: int, shuffle: bool,
                 generator: torch.Generator):
        super().__init__(x, y, batch_size, shuffle, generator)
        self.pool_x, self.pool_y = pool_x, pool_y
        self.per_epoch = min(per_epoch, len(pool_x))

    def __len__(self) -> int:
        return math.ceil((len(self.x) + self.per_epoch) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pick = torch.randperm(len(self.pool_x), generator=self.generator)[:self.per_epoch]
        yield from TensorBatches(torch.cat([self.x, self.pool_x[pick]]),
                                 torch.cat([self.y, self.pool_y[pick]]), self.batch_size,
                                 self.shuffle, self.generator)


class _LoaderSettings:
    """Arguments shared by the built-in loaders, checked when the head is created."""

    def __init__(self, batch_size: Any, shuffle: Any, validation_split: Any, num_workers: Any):
        problems = []
        if not is_int(batch_size) or batch_size < 1:
            problems.append(f"{ARGS}.batch_size: must be a whole number >= 1, got {batch_size!r}")
        if not isinstance(shuffle, bool):
            problems.append(f"{ARGS}.shuffle: must be true or false, got {shuffle!r}")
        if not _is_split(validation_split):
            problems.append(f"{ARGS}.validation_split: must be a fraction in [0, 1) or a count "
                            f">= 0 of examples, got {validation_split!r}")
        if not is_int(num_workers) or num_workers < 0:
            problems.append(f"{ARGS}.num_workers: must be a whole number >= 0, got {num_workers!r}")
        if problems:
            raise ConfigError(problems)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.validation_split, self.num_workers = validation_split, num_workers

    def valid_count(self, n: int, source: str) -> int:
        split = self.validation_split
        count = split if is_int(split) else int(round(n * split))
        if count >= n:
            raise BadInputError(f"{ARGS}.validation_split: {split!r} leaves no training examples "
                                f"({source} has {n}); use a smaller fraction or count")
        if split and not count:
            log.warning("validation_split=%r of %d examples is 0 examples: no validation set",
                        split, n)
        return count


@DATALOADERS.register("SnipsDataLoader")
class SnipsDataLoader(_LoaderSettings):
    """Intent data from a JSON file, encoded once by the head's own pre-processor.

    Accepts {label: [utterances]}, a list of {text|input_ids|embedding, label} records,
    or pandas-style columns. Labels are class indices, names (kept as the head's label
    map) or vectors (regression targets). The encoded data is held as tensors, so
    `num_workers` has nothing to do here and is ignored.

    The examples stored with the head (add_examples) come in through the context and
    are trained on together with the file; `train_json: null` (or '') means no file,
    only the stored examples.
    """

    def __init__(self, train_json: Any = "train.json", batch_size: int = 32, shuffle: bool = True,
                 validation_split: float | int = 0.0, num_workers: int = 0, *,
                 context: DataContext | None = None):
        super().__init__(batch_size, shuffle, validation_split, num_workers)
        if train_json is not None and not isinstance(train_json, str):
            raise ConfigError(f"{ARGS}.train_json: must be the path of a JSON file (or null for "
                              f"the head's stored examples only), got {train_json!r}")
        self.train_json, self.context = train_json or None, context or DataContext()

    def load(self) -> TrainingData:
        ctx = self.context
        inputs, labels, sources = [], [], []
        if self.train_json:
            path = ctx.resolve_path(self.train_json, f"{ARGS}.train_json")
            inputs, labels = read_examples(path, self.train_json)
            sources.append(f"'{self.train_json}'")
        if ctx.examples and ctx.examples[0]:
            inputs, labels = inputs + list(ctx.examples[0]), labels + list(ctx.examples[1])
            sources.append("the head's stored examples")
        if not inputs:
            raise BadInputError("no training data: this head has no stored examples and "
                                f"{ARGS}.train_json is not set; add examples with "
                                "add_examples(uuid, examples) or name a train_json file")
        name = " and ".join(sources)
        n_main = len(inputs)
        replay = ctx.replay if ctx.replay and ctx.replay[0] and ctx.replay[2] > 0 else None
        if replay:
            inputs, labels = inputs + list(replay[0]), labels + list(replay[1])
        with ctx.stored_embeddings:
            x = _encode(ctx.preprocessor, inputs, name)
        y, label_names = encode_labels(labels, ctx.labels, ctx.n_classes, name)
        n_valid = self.valid_count(n_main, name)
        generator = torch.Generator().manual_seed(ctx.seed)
        order = torch.randperm(n_main, generator=generator)
        valid_idx, train_idx = order[:n_valid], order[n_valid:]
        if replay is None:
            train = TensorBatches(x[train_idx], y[train_idx], self.batch_size, self.shuffle,
                                  generator)
            n_train = len(train_idx)
        else:  # old examples replayed: a share of the pool validates, the rest is drawn from
            pool = n_main + torch.randperm(len(x) - n_main, generator=generator)
            n_pool_valid = min(len(pool) // 2, round(replay[2] * n_valid / n_main))
            valid_idx = torch.cat([valid_idx, pool[:n_pool_valid]])
            pool = pool[n_pool_valid:]
            train = ReplayBatches(x[train_idx], y[train_idx], x[pool], y[pool],
                                  replay[2] - n_pool_valid, self.batch_size, self.shuffle,
                                  generator)
            n_train = len(train_idx) + train.per_epoch
        valid = (TensorBatches(x[valid_idx], y[valid_idx], self.batch_size, False, generator)
                 if len(valid_idx) else None)
        return TrainingData(train, valid, n_train, len(valid_idx), label_names)


@DATALOADERS.register("CustomDataLoader")
class CustomDataLoader(_LoaderSettings):
    """A `torch.utils.data.Dataset` class from the user's Python file.

    `python_file` and `module_name` pick the class; arguments other than the loader's
    own go to the Dataset's constructor. Items are (input, target) pairs.
    """

    def __init__(self, python_file: str | None = None, module_name: str | None = None,
                 batch_size: int = 32, shuffle: bool = True, validation_split: float | int = 0.0,
                 num_workers: int = 0, *, context: DataContext | None = None, **dataset_args: Any):
        super().__init__(batch_size, shuffle, validation_split, num_workers)
        self.context = context or DataContext()
        self.dataset_cls = self.context.code.load_class(python_file, module_name, "Trainer.dataloader")
        bind(self.dataset_cls, dataset_args, "Trainer.dataloader")
        self.dataset_args = dataset_args

    def load(self) -> TrainingData:
        dataset = construct(self.dataset_cls, self.dataset_args, "Trainer.dataloader")
        try:
            n = len(dataset)
        except TypeError:
            raise ConfigError(f"Trainer.dataloader: {self.dataset_cls.__name__} must define __len__ "
                              "(a map-style torch Dataset)") from None
        if n == 0:
            raise BadInputError(f"Trainer.dataloader: {self.dataset_cls.__name__}"
                                f"({self.dataset_args}) holds no examples; check its data folder")
        n_valid = self.valid_count(n, self.dataset_cls.__name__)
        generator = torch.Generator().manual_seed(self.context.seed)
        train_set, valid_set = random_split(dataset, [n - n_valid, n_valid], generator=generator)
        loader = dict(batch_size=self.batch_size, num_workers=self.num_workers)
        train = DataLoader(train_set, shuffle=self.shuffle, generator=generator, **loader)
        valid = DataLoader(valid_set, shuffle=False, **loader) if n_valid else None
        return TrainingData(train, valid, n - n_valid, n_valid, None)


def read_examples(path: Path, name: str) -> tuple[list, list]:
    """(inputs, labels) from a training JSON file in any of the accepted formats."""
    records = read_records(path, name)
    return [value for _, value, _ in records], [label for _, _, label in records]


def read_records(path: Path, name: str) -> list[tuple[str, Any, Any]]:
    """(input key, input, label) per example of a training JSON file."""
    if not path.is_file():
        raise BadInputError(f"{ARGS}.train_json: file '{name}' not found (looked at {path}); "
                            "set train_json to your training data file, or store examples "
                            "with add_examples and train without train_json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{ARGS}.train_json: '{name}' is not valid JSON ({exc})") from None
    return parse_records(data, f"{ARGS}.train_json: '{name}'")


def parse_records(data: Any, where: str) -> list[tuple[str, Any, Any]]:
    """(input key, input, label) per example from any accepted layout (a train_json file's
    content or add_examples' argument); errors start with `where` and name the record."""
    if isinstance(data, list):
        records = [_record(row, i, where) for i, row in enumerate(data)]
    elif isinstance(data, dict) and isinstance(data.get("label"), dict):
        records = _columns(data, where)
    elif isinstance(data, dict) and all(isinstance(v, list) and all(isinstance(u, str) for u in v)
                                        for v in data.values()):
        records = [("text", text, label) for label, texts in data.items() for text in texts]
    else:
        raise BadInputError(f"{where} has an unknown layout; use {FORMATS}")
    if not records:
        raise BadInputError(f"{where} holds no examples; add some")
    return records


def _record(row: Any, index: int, where: str) -> tuple:
    if not isinstance(row, dict) or "label" not in row:
        raise BadInputError(f"{where} record {index} must be an object with "
                            f"'label' and 'text' (or 'input_ids'/'embedding'); got {row!r:.80}")
    for key in ("input_ids", "embedding", "text"):
        if key in row:
            return key, row[key], row["label"]
    raise BadInputError(f"{where} record {index} has no 'text', 'input_ids' "
                        "or 'embedding'")


def _columns(data: dict, where: str) -> list[tuple]:
    column = next((k for k in ("input_ids", "embedding", "text") if isinstance(data.get(k), dict)),
                  None)
    if column is None:
        raise BadInputError(f"{where} has a 'label' column but no "
                            "'input_ids', 'embedding' or 'text' column")
    inputs = data[column]
    missing = [row for row in data["label"] if row not in inputs]
    if missing:
        raise BadInputError(f"{where} rows {missing[:5]} have a label but "
                            f"no {column}")
    return [(column, inputs[row], label) for row, label in data["label"].items()]


def _encode(preprocessor: Any, inputs: list, name: str) -> torch.Tensor:
    """Encode every input with the head's pre-processor (text and vectors alike; a mix
    of both is encoded kind by kind and put back in order)."""
    if preprocessor is None:
        raise ConfigError("Inference.preprocess: SnipsDataLoader needs the head's pre-processor "
                          "to encode its data")
    texts = [i for i, v in enumerate(inputs) if isinstance(v, str)]
    groups = [texts] if len(texts) == len(inputs) else [
        texts, [i for i, v in enumerate(inputs) if not isinstance(v, str)]]
    out = None
    try:
        for group in (g for g in groups if g):
            for start in range(0, len(group), 512):
                rows = group[start:start + 512]
                chunk = preprocessor.process([inputs[i] for i in rows])
                if len(groups) == 1:
                    out = chunk if out is None else torch.cat([out, chunk])
                    continue
                if out is None:
                    out = chunk.new_empty((len(inputs), *chunk.shape[1:]))
                out[rows] = chunk
    except BadInputError as exc:
        raise BadInputError(f"{ARGS}.train_json: {name}: {exc}") from None
    return out


def encode_labels(labels: list, known: list | None, n_classes: int | None,
                  name: str) -> tuple[torch.Tensor, list | None]:
    """Targets tensor and the label map (known names first, new ones appended sorted).

    `name` says where the labels come from in messages (e.g. "'train.json'")."""
    if all(is_int(v) for v in labels):
        bad = [(i, v) for i, v in enumerate(labels) if v < 0 or (n_classes and v >= n_classes)]
        if bad:
            i, v = bad[0]
            raise BadInputError(f"{ARGS}.train_json: {name} example {i} has label {v}, outside "
                                f"0..{(n_classes or 1) - 1} (Model.args.n_classes={n_classes}); "
                                "fix the label or raise n_classes")
        return torch.tensor(labels, dtype=torch.long), known
    if all(isinstance(v, str) for v in labels):
        names = list(known or [])
        names += sorted(set(labels) - set(names))
        if n_classes and len(names) > n_classes:
            raise BadInputError(f"{ARGS}.train_json: {name} has {len(names)} distinct labels "
                                f"({', '.join(map(str, names[:12]))}...) but the model has "
                                f"n_classes={n_classes}; raise Model.args.n_classes")
        index = {label: i for i, label in enumerate(names)}
        return torch.tensor([index[v] for v in labels], dtype=torch.long), names
    if all(isinstance(v, list) and all(isinstance(f, Number) for f in v) for v in labels):
        sizes = sorted({len(v) for v in labels})
        if len(sizes) > 1:
            raise BadInputError(f"{ARGS}.train_json: {name} vector labels have different "
                                f"lengths {sizes[:5]}; every target must have the same length")
        return torch.tensor(labels, dtype=torch.float32), known
    kinds = sorted({type(v).__name__ for v in labels})
    raise BadInputError(f"{ARGS}.train_json: {name} labels must be all class indices, all "
                        f"names or all vectors; found {', '.join(kinds)}")


def _is_split(value: Any) -> bool:
    if is_int(value):
        return value >= 0
    return isinstance(value, float) and 0.0 <= value < 1.0
