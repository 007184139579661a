"""Training data: SnipsDataLoader formats and labels, splits, batches, CustomDataLoader."""
from __future__ import annotations

import json

import pytest
import torch

from ph.config.components import UserCode
from ph.training.data import CustomDataLoader, DataContext, SnipsDataLoader, TensorBatches
from ph.errors import BadInputError, ConfigError
from ph.modeling.processors import HashingEncoder, PersonalizedHeadPreProcessor

DIM = 32
KEY = "Trainer.dataloader.args.train_json"


def context(n_classes=None, labels=None, **kw) -> DataContext:
    return DataContext(preprocessor=PersonalizedHeadPreProcessor(embedding_length=DIM),
                       n_classes=n_classes, labels=labels, **kw)


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def load(path, n_classes=None, labels=None, **args):
    args = {"batch_size": 4, "shuffle": False, **args}
    return SnipsDataLoader(str(path), context=context(n_classes, labels), **args).load()


def all_examples(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(batches))
    return torch.cat(xs), torch.cat(ys)


def rows_of(x: torch.Tensor) -> list[tuple]:
    return [tuple(round(v, 5) for v in row) for row in x.reshape(len(x), -1).tolist()]


def pairs_by_first_value(x: torch.Tensor, y: torch.Tensor) -> dict:
    return {round(x[i].reshape(-1)[0].item(), 5): y[i].item() for i in range(len(x))}


# --- formats ------------------------------------------------------------------------------

def test_label_lists_format_with_string_labels(tmp_path):
    data = {"order_food": ["order a pizza", "get me sushi"],
            "get_weather": ["weather in Paris", "will it rain", "is it hot"]}
    out = load(write(tmp_path / "t.json", data), n_classes=4)
    assert out.n_train == 5 and out.n_valid == 0 and out.valid is None
    assert out.labels == ["get_weather", "order_food"]  # sorted
    x, y = all_examples(out.train)
    assert x.shape == (5, 1, DIM)
    assert y.dtype == torch.long
    enc = HashingEncoder(DIM).encode(["order a pizza"])[0]
    row = next(i for i in range(5) if torch.equal(x[i, 0], enc))
    assert y[row].item() == out.labels.index("order_food")
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1]


def test_records_format_with_text_and_int_labels(tmp_path):
    data = [{"text": "hello there", "label": 0}, {"text": "order pizza", "label": 2},
            {"text": "play Bach", "label": 1}]
    out = load(write(tmp_path / "t.json", data), n_classes=3)
    assert out.labels is None
    x, y = all_examples(out.train)
    enc = HashingEncoder(DIM).encode(["hello there", "order pizza", "play Bach"])
    pairs = {rows_of(x[i])[0]: y[i].item() for i in range(3)}
    assert pairs == {rows_of(enc[0:1])[0]: 0, rows_of(enc[1:2])[0]: 2, rows_of(enc[2:3])[0]: 1}


def test_records_format_with_input_ids_vectors(tmp_path):
    data = [{"input_ids": [[0.1] * DIM], "label": 1}, {"input_ids": [[0.3] * DIM], "label": 0}]
    out = load(write(tmp_path / "t.json", data), n_classes=2)
    x, y = all_examples(out.train)
    assert x.shape == (2, 1, DIM)
    assert pairs_by_first_value(x, y) == {0.1: 1, 0.3: 0}


def test_pandas_columns_format_input_ids_wins_over_text(tmp_path):
    data = {"text": {"0": "ignored words", "1": "also ignored"},
            "label": {"0": 5, "1": 2},
            "input_ids": {"0": [[0.1] * DIM], "1": [[0.7] * DIM]}}
    out = load(write(tmp_path / "t.json", data), n_classes=8)
    x, y = all_examples(out.train)
    assert x.shape == (2, 1, DIM)
    assert torch.equal(x[:, 0, :1].expand(2, DIM), x[:, 0])  # constant rows: not text vectors
    assert pairs_by_first_value(x, y) == {0.1: 5, 0.7: 2}


def test_pandas_columns_format_with_text_only(tmp_path):
    data = {"text": {"0": "order a pizza", "1": "weather in Lima"}, "label": {"0": "a", "1": "b"}}
    out = load(write(tmp_path / "t.json", data), n_classes=2)
    x, y = all_examples(out.train)
    assert out.labels == ["a", "b"]
    enc = HashingEncoder(DIM).encode(["order a pizza", "weather in Lima"])
    for i in range(2):
        assert torch.equal(x[i, 0], enc[y[i].item()])


def test_pandas_columns_with_label_rows_missing_input_is_bad_input(tmp_path):
    data = {"text": {"0": "hi"}, "label": {"0": 1, "7": 2}}
    with pytest.raises(BadInputError) as err:
        load(write(tmp_path / "t.json", data), n_classes=3)
    assert "'7'" in str(err.value) and "text" in str(err.value)


# --- labels ----------------------------------------------------------------------------------

def test_known_string_labels_keep_their_index_and_new_ones_are_appended(tmp_path):
    data = [{"text": "a", "label": "zeta"}, {"text": "b", "label": "beta"},
            {"text": "c", "label": "alpha"}, {"text": "d", "label": "gamma"}]
    out = load(write(tmp_path / "t.json", data), n_classes=5, labels=["zeta", "gamma"])
    assert out.labels == ["zeta", "gamma", "alpha", "beta"]
    x, y = all_examples(out.train)
    enc = HashingEncoder(DIM).encode(["a", "b", "c", "d"])
    got = {rows_of(x[i])[0]: y[i].item() for i in range(4)}
    assert got == {rows_of(enc[i:i + 1])[0]: want for i, want in enumerate([0, 3, 2, 1])}


def test_vector_labels_are_float_targets(tmp_path):
    data = [{"text": "one", "label": [0.5, 1.5]}, {"text": "two", "label": [2, 3]}]
    out = load(write(tmp_path / "t.json", data))
    _, y = all_examples(out.train)
    assert y.dtype == torch.float32
    assert sorted(y.tolist()) == [[0.5, 1.5], [2.0, 3.0]]
    assert out.labels is None


def test_vector_labels_of_different_lengths_are_bad_input(tmp_path):
    data = [{"text": "one", "label": [0.5, 1.5]}, {"text": "two", "label": [2.0]}]
    with pytest.raises(BadInputError) as err:
        load(write(tmp_path / "t.json", data))
    assert KEY in str(err.value)


def test_int_label_outside_n_classes_names_label_and_n_classes(tmp_path):
    data = [{"text": "a", "label": 0}, {"text": "b", "label": 7}]
    with pytest.raises(BadInputError) as err:
        load(write(tmp_path / "t.json", data), n_classes=4)
    msg = str(err.value)
    assert "label 7" in msg and "n_classes=4" in msg and "0..3" in msg and "example 1" in msg


def test_negative_int_label_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="label -1"):
        load(write(tmp_path / "t.json", [{"text": "a", "label": -1}]), n_classes=4)


def test_more_distinct_string_labels_than_n_classes_is_bad_input(tmp_path):
    data = {"a": ["x"], "b": ["y"], "c": ["z"]}
    with pytest.raises(BadInputError) as err:
        load(write(tmp_path / "t.json", data), n_classes=2)
    msg = str(err.value)
    assert "3 distinct labels" in msg and "n_classes=2" in msg


def test_mixed_label_kinds_are_bad_input_naming_the_kinds(tmp_path):
    data = [{"text": "a", "label": 1}, {"text": "b", "label": "two"}]
    with pytest.raises(BadInputError) as err:
        load(write(tmp_path / "t.json", data), n_classes=4)
    msg = str(err.value)
    assert "int" in msg and "str" in msg and "all class indices" in msg


def test_bool_labels_are_not_class_indices(tmp_path):
    with pytest.raises(BadInputError, match="bool"):
        load(write(tmp_path / "t.json", [{"text": "a", "label": True}]), n_classes=4)


# --- validation split ------------------------------------------------------------------------

def ten_records(tmp_path):
    return write(tmp_path / "t.json", [{"input_ids": [float(i)] * DIM, "label": i % 3}
                                       for i in range(10)])


def test_validation_split_as_fraction(tmp_path):
    out = load(ten_records(tmp_path), n_classes=3, validation_split=0.3)
    assert (out.n_train, out.n_valid) == (7, 3)
    xt, _ = all_examples(out.train)
    xv, _ = all_examples(out.valid)
    assert len(xt) == 7 and len(xv) == 3
    assert sorted(rows_of(xt) + rows_of(xv)) == sorted(rows_of(torch.arange(10.0)
                                                               .repeat_interleave(DIM)
                                                               .view(10, DIM)))


def test_validation_split_as_count(tmp_path):
    out = load(ten_records(tmp_path), n_classes=3, validation_split=4)
    assert (out.n_train, out.n_valid) == (6, 4)
    assert len(all_examples(out.valid)[0]) == 4


def test_validation_split_zero_gives_no_valid_set(tmp_path):
    out = load(ten_records(tmp_path), n_classes=3, validation_split=0)
    assert (out.n_train, out.n_valid, out.valid) == (10, 0, None)


@pytest.mark.parametrize("split", [10, 25, 0.99])
def test_validation_split_leaving_no_training_data_is_bad_input(tmp_path, split):
    with pytest.raises(BadInputError) as err:
        load(ten_records(tmp_path), n_classes=3, validation_split=split)
    msg = str(err.value)
    assert "validation_split" in msg and "has 10" in msg


def test_split_is_reproducible_from_seed(tmp_path):
    path = ten_records(tmp_path)
    a = SnipsDataLoader(str(path), batch_size=4, shuffle=False, validation_split=3,
                        context=context(3, seed=1)).load()
    b = SnipsDataLoader(str(path), batch_size=4, shuffle=False, validation_split=3,
                        context=context(3, seed=1)).load()
    assert rows_of(all_examples(a.valid)[0]) == rows_of(all_examples(b.valid)[0])


# --- TensorBatches ------------------------------------------------------------------------

def test_tensor_batches_cover_every_example_once_per_epoch():
    x = torch.arange(23.0).view(23, 1)
    batches = TensorBatches(x, torch.arange(23), 5, True, torch.Generator().manual_seed(0))
    assert len(batches) == 5
    for _ in range(3):
        seen = [b for b in batches]
        assert [len(bx) for bx, _ in seen] == [5, 5, 5, 5, 3]
        xs = torch.cat([bx for bx, _ in seen]).view(-1).long().tolist()
        ys = torch.cat([by for _, by in seen]).tolist()
        assert sorted(xs) == list(range(23))
        assert xs == ys  # inputs stay paired with their targets


def test_tensor_batches_reshuffle_between_epochs():
    x = torch.arange(50.0).view(50, 1)
    batches = TensorBatches(x, torch.arange(50), 8, True, torch.Generator().manual_seed(0))
    epoch1 = torch.cat([bx for bx, _ in batches]).view(-1).tolist()
    epoch2 = torch.cat([bx for bx, _ in batches]).view(-1).tolist()
    assert epoch1 != epoch2
    assert epoch1 != list(range(50))
    assert sorted(epoch1) == sorted(epoch2) == list(map(float, range(50)))


def test_tensor_batches_keep_order_without_shuffle():
    x = torch.arange(10.0).view(10, 1)
    batches = TensorBatches(x, torch.arange(10), 3, False, torch.Generator().manual_seed(0))
    for _ in range(2):
        assert torch.cat([bx for bx, _ in batches]).view(-1).tolist() == list(map(float, range(10)))


# --- file errors ------------------------------------------------------------------------------

def test_missing_train_json_names_the_key_and_the_path(tmp_path):
    path = tmp_path / "nope" / "train.json"
    with pytest.raises(BadInputError) as err:
        load(path, n_classes=3)
    msg = str(err.value)
    assert KEY in msg and str(path) in msg and "not found" in msg


def test_invalid_json_is_bad_input(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"a": ["x",')
    with pytest.raises(BadInputError) as err:
        load(path, n_classes=3)
    assert "not valid JSON" in str(err.value) and KEY in str(err.value)


@pytest.mark.parametrize("data", [{"a": "not a list"}, 42, {"a": [1, 2]}, "text"])
def test_unknown_layout_is_bad_input_listing_the_formats(tmp_path, data):
    with pytest.raises(BadInputError) as err:
        load(write(tmp_path / "t.json", data), n_classes=3)
    msg = str(err.value)
    assert "unknown layout" in msg and "{label: [utterance, ...]}" in msg


@pytest.mark.parametrize("data", [[], {}])
def test_empty_data_is_bad_input(tmp_path, data):
    with pytest.raises(BadInputError, match="holds no examples"):
        load(write(tmp_path / "t.json", data), n_classes=3)


def test_record_without_label_names_its_index(tmp_path):
    data = [{"text": "a", "label": 0}, {"text": "b"}]
    with pytest.raises(BadInputError, match="record 1"):
        load(write(tmp_path / "t.json", data), n_classes=3)


def test_bad_vector_in_data_is_bad_input_naming_the_file(tmp_path):
    data = [{"input_ids": [[0.1] * (DIM - 1)], "label": 0}]
    with pytest.raises(BadInputError) as err:
        load(write(tmp_path / "t.json", data), n_classes=3)
    assert KEY in str(err.value) and "t.json" in str(err.value)


def test_train_json_is_resolved_through_the_context(tmp_path):
    write(tmp_path / "real.json", {"a": ["hello"], "b": ["bye"]})
    seen = []

    def resolve(path, key):
        seen.append((path, key))
        return tmp_path / "real.json"

    ctx = context(2, resolve_path=resolve)
    out = SnipsDataLoader("alias.json", batch_size=2, shuffle=False, context=ctx).load()
    assert seen == [("alias.json", KEY)]
    assert out.n_train == 2


# --- loader arguments -----------------------------------------------------------------------

def test_bad_loader_args_are_listed_together():
    with pytest.raises(ConfigError) as err:
        SnipsDataLoader("t.json", batch_size=0, shuffle="yes", validation_split=1.5,
                        num_workers=-1)
    problems = err.value.problems
    assert len(problems) == 4
    msg = str(err.value)
    for key, value in (("batch_size", "0"), ("shuffle", "'yes'"), ("validation_split", "1.5"),
                       ("num_workers", "-1")):
        assert f"Trainer.dataloader.args.{key}" in msg
        assert value in msg


@pytest.mark.parametrize("split", [-1, 1.5, 1.0, -0.1, "0.2", True, float("nan")])
def test_invalid_validation_split_is_config_error(split):
    with pytest.raises(ConfigError) as err:
        SnipsDataLoader("t.json", validation_split=split)
    assert "validation_split" in str(err.value)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, "8", True])
def test_invalid_batch_size_is_config_error(batch_size):
    with pytest.raises(ConfigError, match="batch_size"):
        SnipsDataLoader("t.json", batch_size=batch_size)


@pytest.mark.parametrize("train_json", [5, ["t.json"], True])
def test_train_json_must_be_a_path_string_or_null(train_json):
    with pytest.raises(ConfigError, match="train_json"):
        SnipsDataLoader(train_json)


@pytest.mark.parametrize("train_json", ["", None])
def test_no_train_json_and_no_stored_examples_says_how_to_add_data(train_json):
    loader = SnipsDataLoader(train_json, context=DataContext(preprocessor=object()))
    with pytest.raises(BadInputError, match="add_examples"):
        loader.load()


def test_stored_examples_train_with_the_file_and_mixed_inputs_keep_their_order(tmp_path):
    pre = PersonalizedHeadPreProcessor(8)
    vector = [0.5] * 8
    context = DataContext(preprocessor=pre, labels=["b"], examples=(["hi", vector], ["b", "c"]))
    data = SnipsDataLoader(str(write(tmp_path / "t.json", {"a": ["yo"]})), shuffle=False,
                           context=context).load()
    assert data.labels == ["b", "a", "c"] and data.n_train == 3
    x, y = next(iter(data.train))
    rows = {label: x[i] for i, label in enumerate(y.tolist())}  # each input kept with its label
    assert torch.equal(rows[2][0], torch.tensor(vector))
    assert torch.equal(rows[0], pre.process("hi")[0]) and torch.equal(rows[1], pre.process("yo")[0])


def test_loader_without_preprocessor_is_config_error(tmp_path):
    path = write(tmp_path / "t.json", {"a": ["x"]})
    with pytest.raises(ConfigError, match="pre-processor"):
        SnipsDataLoader(str(path), context=DataContext(n_classes=2)).load()


# --- CustomDataLoader -------------------------------------------------------------------------

DATASET_SOURCE = '''
import torch
from torch.utils.data import Dataset

class Squares(Dataset):
    def __init__(self, n, dim=4):
        self.n, self.dim = n, dim

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((self.dim,), float(i)), i * i

class Empty(Dataset):
    def __len__(self):
        return 0

    def __getitem__(self, i):
        raise IndexError(i)
'''


def custom_context(seed=0) -> DataContext:
    return DataContext(code=UserCode({"data/squares.py": DATASET_SOURCE}), seed=seed)


def test_custom_loader_builds_user_dataset_with_extra_args_and_splits_it():
    loader = CustomDataLoader(python_file="data/squares.py", module_name="Squares",
                              batch_size=4, shuffle=True, validation_split=0.25, n=12, dim=3,
                              context=custom_context())
    out = loader.load()
    assert (out.n_train, out.n_valid) == (9, 3)
    assert out.labels is None
    train = list(out.train)
    valid = list(out.valid)
    assert [len(y) for _, y in train] == [4, 4, 1]
    assert [len(y) for _, y in valid] == [3]
    x_all = torch.cat([x for x, _ in train + valid])
    y_all = torch.cat([y for _, y in train + valid])
    assert x_all.shape == (12, 3)
    assert sorted(x_all[:, 0].long().tolist()) == list(range(12))
    assert y_all.tolist() == [int(v) ** 2 for v in x_all[:, 0].tolist()]


def test_custom_loader_with_count_split_and_no_split():
    out = CustomDataLoader(python_file="data/squares.py", module_name="Squares", batch_size=5,
                           shuffle=False, validation_split=2, n=7,
                           context=custom_context()).load()
    assert (out.n_train, out.n_valid) == (5, 2)
    out = CustomDataLoader(python_file="data/squares.py", module_name="Squares", batch_size=5,
                           shuffle=False, validation_split=0, n=7,
                           context=custom_context()).load()
    assert (out.n_train, out.n_valid, out.valid) == (7, 0, None)
    assert [len(y) for _, y in out.train] == [5, 2]


def test_custom_loader_rejects_unknown_dataset_args_naming_what_it_accepts():
    with pytest.raises(ConfigError) as err:
        CustomDataLoader(python_file="data/squares.py", module_name="Squares", n=3, dimm=2,
                         context=custom_context())
    msg = str(err.value)
    assert "Squares" in msg and "did you mean 'dim'" in msg


def test_custom_loader_unknown_class_lists_classes_in_file():
    with pytest.raises(ConfigError) as err:
        CustomDataLoader(python_file="data/squares.py", module_name="Square", n=3,
                         context=custom_context())
    msg = str(err.value)
    assert "Squares" in msg and "Empty" in msg


def test_custom_loader_empty_dataset_is_bad_input():
    loader = CustomDataLoader(python_file="data/squares.py", module_name="Empty",
                              context=custom_context())
    with pytest.raises(BadInputError, match="no examples"):
        loader.load()


def test_custom_loader_split_too_big_is_bad_input():
    loader = CustomDataLoader(python_file="data/squares.py", module_name="Squares", n=3,
                              validation_split=3, context=custom_context())
    with pytest.raises(BadInputError, match="leaves no training examples"):
        loader.load()
