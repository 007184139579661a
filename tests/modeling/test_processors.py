"""Pre-/post-processors and the offline hashing text encoder (ph/modeling/processors.py)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from ph.errors import BadInputError, ConfigError
from ph.modeling.processors import (ENCODERS, HashingEncoder, PersonalizedHeadPostProcessor,
                           PersonalizedHeadPreProcessor, V2VPostProcessor, V2VPreProcessor)

DIM = 32


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@pytest.fixture(scope="module")
def pre() -> PersonalizedHeadPreProcessor:
    return PersonalizedHeadPreProcessor(embedding_length=DIM)


# --- HashingEncoder ------------------------------------------------------------------------

def test_hashing_encoder_gives_identical_vectors_for_the_same_text():
    enc = HashingEncoder(64)
    a = enc.encode(["book a flight to Paris tomorrow"])
    b = HashingEncoder(64).encode(["book a flight to Paris tomorrow"])
    assert a.shape == (1, 64)
    assert torch.equal(a, b)
    assert a.abs().sum() > 0


def test_hashing_encoder_is_identical_in_a_fresh_process():
    """No per-process hash seed (PYTHONHASHSEED) leaks into the vectors."""
    text = "play some Miles Davis for me"
    here = HashingEncoder(64).encode([text])[0].tolist()
    script = ("import json, sys\nfrom ph.modeling.processors import HashingEncoder\n"
              f"print(json.dumps(HashingEncoder(64).encode([{text!r}])[0].tolist()))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == here


def test_hashing_encoder_rows_are_l2_normalised():
    texts = ["hello", "what is the weather in Tokyo", "a b c d e f g", "Ünïcödé wörds ok"]
    norms = HashingEncoder(DIM).encode(texts).norm(dim=1)
    assert torch.allclose(norms, torch.ones(len(texts)), atol=1e-5)


def test_hashing_encoder_texts_sharing_words_are_closer_than_unrelated_ones():
    enc = HashingEncoder(256)
    a, b, c = enc.encode(["what is the weather in Paris",
                          "what is the weather in Tokyo",
                          "order me a large pepperoni pizza"])
    assert cosine(a, b) > cosine(a, c) + 0.2
    assert cosine(a, b) > 0.4


def test_hashing_encoder_is_case_insensitive():
    enc = HashingEncoder(DIM)
    assert torch.equal(enc.encode(["Play Music"]), enc.encode(["play music"]))


# --- PersonalizedHeadPreProcessor: accepted inputs ----------------------------------------

def test_preprocessor_encodes_one_string_to_batch_of_one(pre):
    out = pre.process("order a pizza")
    assert out.shape == (1, 1, DIM)
    assert torch.equal(out[0, 0], HashingEncoder(DIM).encode(["order a pizza"])[0])
    assert pre.is_single("order a pizza") is True


def test_preprocessor_encodes_a_list_of_strings(pre):
    texts = ["order a pizza", "weather in Lima", "play Bach"]
    out = pre.process(texts)
    assert out.shape == (3, 1, DIM)
    assert torch.equal(out[:, 0], HashingEncoder(DIM).encode(texts))
    assert pre.is_single(texts) is False


def test_preprocessor_accepts_one_vector(pre):
    vec = [float(i) / DIM for i in range(DIM)]
    out = pre.process(vec)
    assert out.shape == (1, 1, DIM)
    assert out[0, 0].tolist() == pytest.approx(vec)
    assert pre.is_single(vec) is True


def test_preprocessor_accepts_integer_vector_as_floats(pre):
    out = pre.process([1] * DIM)
    assert out.dtype == torch.float32 and out.shape == (1, 1, DIM)


def test_preprocessor_accepts_a_list_of_vectors(pre):
    vecs = [[0.1] * DIM, [0.2] * DIM]
    out = pre.process(vecs)
    assert out.shape == (2, 1, DIM)
    assert out[1, 0, 0].item() == pytest.approx(0.2)
    assert pre.is_single(vecs) is False


def test_preprocessor_accepts_single_token_sequences_inside_a_list(pre):
    """`[[floats]]` per item, as pandas-style data stores one sentence embedding."""
    data = [[[0.5] * DIM], [[0.25] * DIM]]
    out = pre.process(data)
    assert out.shape == (2, 1, DIM)
    assert out[0, 0].tolist() == pytest.approx([0.5] * DIM)
    assert out[1, 0].tolist() == pytest.approx([0.25] * DIM)
    assert pre.is_single(data) is False


def test_preprocessor_accepts_2d_tensor_as_batch(pre):
    t = torch.randn(4, DIM, dtype=torch.float64)
    out = pre.process(t)
    assert out.shape == (4, 1, DIM) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0], t.float())
    assert pre.is_single(t) is False


def test_preprocessor_accepts_1d_tensor_as_single(pre):
    t = torch.randn(DIM)
    out = pre.process(t)
    assert out.shape == (1, 1, DIM)
    assert pre.is_single(t) is True


def test_preprocessor_accepts_tensor_already_in_model_shape(pre):
    """A [B, 1, E] tensor is the same data as the `[[floats]]` list form, which is accepted."""
    t = torch.randn(2, 1, DIM)
    assert pre.process(t.tolist()).shape == (2, 1, DIM)
    out = pre.process(t)
    assert out.shape == (2, 1, DIM)
    assert torch.allclose(out, t)


def test_preprocessor_error_for_multi_token_tensor_does_not_blame_the_vector_size(pre):
    with pytest.raises(BadInputError) as err:
        pre.process(torch.zeros(2, 3, DIM))
    # the width is right; saying "a vector of 32 numbers cannot be used" contradicts itself
    assert f"a vector of {DIM} numbers cannot be used" not in str(err.value)


def test_preprocessor_rejects_scalar_tensor_with_bad_input(pre):
    """A 0-d tensor is as unusable as a plain number, which gives BadInputError."""
    with pytest.raises(BadInputError):
        pre.process(3.0)
    with pytest.raises(BadInputError):
        pre.process(torch.tensor(3.0))


def test_preprocessor_uses_embedding_length_as_dimension():
    pre16 = PersonalizedHeadPreProcessor(embedding_length=16)
    assert pre16.process("hi there").shape == (1, 1, 16)
    assert pre16.process([0.0] * 16).shape == (1, 1, 16)
    with pytest.raises(BadInputError):
        pre16.process([0.0] * DIM)


def test_preprocessor_is_single_false_for_empty_list_and_dict(pre):
    assert pre.is_single([]) is False
    assert pre.is_single({"a": 1}) is False


# --- PersonalizedHeadPreProcessor: errors ---------------------------------------------------

def test_preprocessor_rejects_vector_of_wrong_size_naming_expected_size(pre):
    with pytest.raises(BadInputError) as err:
        pre.process([0.1] * (DIM - 1))
    msg = str(err.value)
    assert f"{DIM - 1} numbers" in msg and f"vectors of {DIM} numbers" in msg
    assert "a string, a list of strings" in msg


def test_preprocessor_rejects_empty_list(pre):
    with pytest.raises(BadInputError) as err:
        pre.process([])
    assert "empty list" in str(err.value)
    assert "a string, a list of strings" in str(err.value)


def test_preprocessor_rejects_dict_naming_what_was_expected(pre):
    with pytest.raises(BadInputError) as err:
        pre.process({"text": "hello"})
    msg = str(err.value)
    assert "expected a string, a list of strings" in msg
    assert "dict" in msg


def test_preprocessor_rejects_vectors_of_mixed_lengths(pre):
    with pytest.raises(BadInputError) as err:
        pre.process([[0.1] * DIM, [0.1] * (DIM + 2)])
    msg = str(err.value)
    assert "different lengths" in msg and str(DIM) in msg and str(DIM + 2) in msg


def test_preprocessor_rejects_nan(pre):
    vec = [0.0] * DIM
    vec[3] = float("nan")
    with pytest.raises(BadInputError) as err:
        pre.process(vec)
    assert "NaN" in str(err.value)


def test_preprocessor_rejects_infinity_in_tensor(pre):
    t = torch.zeros(2, DIM)
    t[1, 0] = math.inf
    with pytest.raises(BadInputError, match="finite"):
        pre.process(t)


def test_preprocessor_rejects_mix_of_strings_and_numbers(pre):
    with pytest.raises(BadInputError) as err:
        pre.process(["hello", 1.0])
    assert "float" in str(err.value) and "str" in str(err.value)


def test_preprocessor_rejects_list_of_non_numeric_vectors(pre):
    with pytest.raises(BadInputError, match="list of numbers"):
        pre.process([["a"] * DIM])


def test_unknown_encoder_is_config_error_listing_known_encoders():
    with pytest.raises(ConfigError) as err:
        PersonalizedHeadPreProcessor(embedding_length=DIM, encoder="hashin")
    msg = str(err.value)
    assert "Inference.preprocess.args.encoder" in msg
    assert "hashin" in msg
    for name in ENCODERS.names():
        assert name in msg
    assert "did you mean 'hashing'" in msg


# --- PersonalizedHeadPostProcessor ---------------------------------------------------------

def log_probs(rows: list[list[float]]) -> torch.Tensor:
    return torch.log_softmax(torch.tensor(rows), dim=-1)


def test_postprocessor_default_returns_list_of_ints():
    out = PersonalizedHeadPostProcessor().process(log_probs([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]]))
    assert out == [1, 0]
    assert all(type(v) is int for v in out)


def test_postprocessor_to_list_false_returns_tensor():
    out = PersonalizedHeadPostProcessor(to_list=False).process(log_probs([[0.0, 3.0], [2.0, 0.0]]))
    assert isinstance(out, torch.Tensor)
    assert out.tolist() == [1, 0]


def test_postprocessor_return_label_maps_through_labels():
    post = PersonalizedHeadPostProcessor(return_label=True)
    post.labels = ["greet", "order", "weather"]
    assert post.process(log_probs([[0.0, 0.0, 4.0], [4.0, 0.0, 0.0]])) == ["weather", "greet"]


def test_postprocessor_return_label_falls_back_to_index_without_labels():
    post = PersonalizedHeadPostProcessor(return_label=True)
    assert post.labels is None
    assert post.process(log_probs([[0.0, 0.0, 4.0]])) == [2]


def test_postprocessor_return_label_falls_back_to_index_beyond_label_map():
    post = PersonalizedHeadPostProcessor(return_label=True)
    post.labels = ["a", "b"]
    assert post.process(log_probs([[0.0, 0.0, 4.0], [0.0, 4.0, 0.0]])) == [2, "b"]


def test_postprocessor_return_scores_gives_prediction_and_probabilities():
    post = PersonalizedHeadPostProcessor(return_scores=True)
    out = post.process(log_probs([[0.0, 2.0, 1.0], [3.0, 0.5, 0.1]]))
    assert [set(item) for item in out] == [{"prediction", "scores"}] * 2
    assert [item["prediction"] for item in out] == [1, 0]
    for item in out:
        assert len(item["scores"]) == 3
        assert sum(item["scores"]) == pytest.approx(1.0, abs=1e-5)
        assert all(0.0 <= s <= 1.0 for s in item["scores"])
        assert max(range(3), key=lambda i: item["scores"][i]) == item["prediction"]


def test_postprocessor_return_scores_with_labels():
    post = PersonalizedHeadPostProcessor(return_label=True, return_scores=True)
    post.labels = ["x", "y"]
    out = post.process(log_probs([[0.0, 2.0]]))
    assert out[0]["prediction"] == "y"
    assert out[0]["scores"][1] > out[0]["scores"][0]


def test_postprocessor_scores_of_bfloat16_output_are_plain_floats():
    post = PersonalizedHeadPostProcessor(return_scores=True)
    out = post.process(log_probs([[0.0, 2.0]]).to(torch.bfloat16))
    assert all(type(s) is float for s in out[0]["scores"])


# --- V2V processors ------------------------------------------------------------------------

def test_v2v_preprocessor_gives_batch_by_input_dim():
    pre = V2VPreProcessor(input_dim=8)
    assert pre.process([0.5] * 8).shape == (1, 8)
    assert pre.process([[0.5] * 8, [1.0] * 8]).shape == (2, 8)
    assert pre.process(torch.ones(3, 8)).shape == (3, 8)
    assert pre.is_single([0.5] * 8) is True
    assert pre.is_single([[0.5] * 8]) is False


def test_v2v_preprocessor_rejects_text_and_wrong_size():
    pre = V2VPreProcessor(input_dim=8)
    with pytest.raises(BadInputError) as err:
        pre.process("some text")
    assert "a vector of 8 numbers" in str(err.value)
    with pytest.raises(BadInputError, match="vectors of 8 numbers"):
        pre.process([0.1] * 7)
    with pytest.raises(BadInputError):
        pre.process([])


def test_v2v_postprocessor_returns_lists_of_floats_or_tensor():
    out = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.bfloat16)
    assert V2VPostProcessor().process(out) == [[1.0, 2.0], [3.0, 4.0]]
    raw = V2VPostProcessor(to_list=False).process(out)
    assert raw is out
