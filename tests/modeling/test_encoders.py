"""Text encoders (ph/modeling/encoders.py) with the real all-MiniLM-L6-v2 model, installed by the
`encoder` extra: unpacked once, loaded once per process and shared, nothing downloaded.

The model loads in about 6 s, so one registry with MiniLM heads is shared by the module.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

import ph.api
from helpers.intent_data import as_label_lists, make_split
from helpers.jaseci_harness import JacCase, in_dir
from ph.modeling.encoders import (PACKAGED_MODELS, SentenceTransformersEncoder, PackagedModel,
                         loaded_encoders, make_encoder, unpack_model)
from ph.errors import ConfigError, PermissionDeniedError
from ph.heads.policy import PathPolicy
from ph.heads.service import HeadRegistry

MINILM = PACKAGED_MODELS["all-MiniLM-L6-v2"]
ENCODER = {"encoder": "sentence_transformers", "encoder_args": {"model": "all-MiniLM-L6-v2"}}


def minilm_config(**model_args) -> dict:
    """A small head behind MiniLM; embedding_length is left to follow the encoder."""
    return {
        "Inference": {"preprocess": {"args": dict(ENCODER)}, "device": "cpu"},
        "Model": {"args": {"n_classes": 8, "ph_ff_dim": 64, "ph_nhead": 4, **model_args}},
        "Trainer": {"n_gpu": 0,
                    "trainer": {"epochs": 6, "save_period": 100, "tensorboard": False,
                                "verbosity": 0, "early_stop": 0, "monitor": "off"},
                    "dataloader": {"args": {"batch_size": 16, "num_workers": 0,
                                            "validation_split": 0}}},
    }


@pytest.fixture(scope="module")
def heads(tmp_path_factory, cache, intents):
    """A registry holding two MiniLM heads ('a' trained on the intent data, 'b' not)."""
    folder = tmp_path_factory.mktemp("minilm")
    (folder / "train.json").write_text(json.dumps(
        {label: [r["text"] for r in intents[0] if r["label"] == label]
         for label in sorted({r["label"] for r in intents[0]})}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        registry = HeadRegistry(folder / "heads")
        registry.create_head("a", minilm_config())
        registry.create_head("b", minilm_config())
        yield registry


# --- unpacking: once, atomically ---------------------------------------------------------

def test_minilm_is_unpacked_once_into_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PH_CACHE_DIR", str(tmp_path))
    folder = unpack_model(MINILM)
    version = folder.name
    assert folder == tmp_path / "models" / "all-MiniLM-L6-v2" / version
    assert (folder / "modules.json").is_file() and (folder / "model.safetensors").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert unpack_model(MINILM) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not unpacked again
    assert [p.name for p in folder.parent.iterdir()] == [version]  # no temp folder left


def test_unpacking_at_once_leaves_one_complete_folder(tmp_path, monkeypatch):
    """Two unpackers race on an empty cache (threads here; processes take the same path:
    there is no in-process lock): each unpacks into its own temp folder and renames it
    into place; the loser gives its copy up. Both get the complete folder."""
    monkeypatch.setenv("PH_CACHE_DIR", str(tmp_path))
    found = []
    errors = in_threads(lambda: found.append(unpack_model(MINILM)), 2)
    assert not errors and len(found) == 2 and found[0] == found[1]
    folder = found[0]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    assert (folder / "model.safetensors").stat().st_size > 80_000_000


def test_missing_model_package_is_config_error_saying_how_to_install():
    absent = PackagedModel("some-model", "ph_no_such_package", "no-such-model-package",
                           "model.zip", 384)
    with pytest.raises(ConfigError) as err:
        unpack_model(absent)
    msg = str(err.value)
    assert "no-such-model-package" in msg and "not installed" in msg
    assert "-e '.[encoder]'" in msg


def test_missing_sentence_transformers_is_config_error_saying_how_to_install(monkeypatch, cache):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
    with pytest.raises(ConfigError) as err:
        SentenceTransformersEncoder("all-MiniLM-L6-v2")
    msg = str(err.value)
    assert "sentence-transformers package" in msg
    assert "-e '.[encoder]'" in msg and "encoder: hashing" in msg


# --- loading: offline, once per process --------------------------------------------------

def test_model_loads_and_encodes_with_the_network_refused(monkeypatch, cache):
    """With every socket refusing to connect, the model loads (a new instance, not the
    shared one) and encodes: nothing is fetched. ph sets HF_HUB_OFFLINE itself."""
    def refuse(*args, **kwargs):
        raise OSError("network use in a test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    encoder = SentenceTransformersEncoder("all-MiniLM-L6-v2")
    assert tuple(encoder.encode(["order a pizza", "wake me up at 7"]).shape) == (2, 384)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_heads_share_one_encoder_loaded_once_per_process(heads):
    a, b = heads.loaded("a").engine, heads.loaded("b").engine
    assert a.preprocessor.encoder is b.preprocessor.encoder
    shared = [k for k in loaded_encoders() if k[0] == "sentence_transformers"
              and json.loads(k[1]).get("model") == "all-MiniLM-L6-v2"]
    assert len(shared) == 1
    assert make_encoder("sentence_transformers", {"model": "all-MiniLM-L6-v2"}, 384) \
        is a.preprocessor.encoder


def test_shared_encoder_gives_the_same_vectors_from_many_threads(heads):
    encoder = heads.loaded("a").engine.preprocessor.encoder
    texts = [f"play some music number {i}" for i in range(6)]
    expected = encoder.encode(texts)
    results = []
    assert not in_threads(lambda: results.extend(encoder.encode(texts) for _ in range(3)), 4)
    assert len(results) == 12 and all(torch.allclose(r, expected, atol=1e-5) for r in results)


def test_encoder_is_frozen(heads):
    encoder = heads.loaded("a").engine.preprocessor.encoder
    assert not any(p.requires_grad for p in encoder.model.parameters())
    assert not encoder.model.training


# --- configs ------------------------------------------------------------------------------

def test_embedding_length_follows_the_encoder(heads):
    assert heads.get_config("a")["Model"]["args"]["embedding_length"] == 384
    engine = heads.loaded("a").engine
    assert engine.model.embedding_length == 384
    assert engine.preprocessor.process("order a pizza").shape == (1, 1, 384)


def test_embedding_length_that_does_not_fit_the_encoder_says_how_to_fix(heads):
    with pytest.raises(ConfigError) as err:
        heads.create_head("wrong", minilm_config(embedding_length=768))
    msg = str(err.value)
    assert "Model.args.embedding_length" in msg and "384" in msg
    assert "leave embedding_length out" in msg
    assert "wrong" not in heads.list_heads()


def test_unknown_model_name_is_config_error_listing_accepted_models(heads):
    config = minilm_config()
    config["Inference"]["preprocess"]["args"]["encoder_args"] = {"model": "all-MiniLM-L6-v3"}
    with pytest.raises(ConfigError) as err:
        heads.create_head("typo", config)
    msg = str(err.value)
    assert "Inference.preprocess.args.encoder_args.model" in msg
    assert "did you mean 'all-MiniLM-L6-v2'" in msg
    assert "local sentence-transformers model folder" in msg and "Nothing is downloaded" in msg


def test_unknown_encoder_argument_lists_accepted_ones(heads):
    config = minilm_config()
    config["Inference"]["preprocess"]["args"]["encoder_args"] = {"modle": "all-MiniLM-L6-v2"}
    with pytest.raises(ConfigError) as err:
        heads.create_head("typo", config)
    msg = str(err.value)
    assert "encoder_args" in msg and "did you mean 'model'" in msg


def test_model_folder_that_does_not_exist_is_config_error(heads, tmp_path):
    config = minilm_config()
    config["Inference"]["preprocess"]["args"]["encoder_args"] = {"model": str(tmp_path / "none")}
    with pytest.raises(ConfigError, match="no model folder at"):
        heads.create_head("nofolder", config)


def test_model_folder_is_refused_by_a_server_that_allows_no_paths(tmp_path, heads):
    server = HeadRegistry(tmp_path / "heads", policy=PathPolicy.restricted([]))
    config = minilm_config()
    config["Inference"]["preprocess"]["args"]["encoder_args"] = {"model": "/opt/models/x"}
    with pytest.raises(PermissionDeniedError, match="--allow-path"):
        server.create_head("remote", config)
    with pytest.raises(PermissionDeniedError):
        server.create_head_list(config)
    assert server.list_heads() == []
    assert server.create_head("named", minilm_config()) == "named"  # a name is no path


def test_model_folder_inside_an_allowed_folder_loads(tmp_path, cache, heads):
    """A local model folder (here: the unpacked MiniLM) works by path when the policy
    allows it; its dimension is read from the model."""
    folder = unpack_model(MINILM)
    server = HeadRegistry(tmp_path / "heads", policy=PathPolicy.restricted([cache]))
    config = minilm_config()
    config["Inference"]["preprocess"]["args"]["encoder_args"] = {"model": str(folder)}
    server.create_head("by-path", config)
    assert server.get_config("by-path")["Model"]["args"]["embedding_length"] == 384
    assert isinstance(server.predict("by-path", "order a pizza"), int)


# --- one pipeline: predict and train ------------------------------------------------------

def test_minilm_head_trains_and_generalises_to_unseen_templates(heads, intents):
    held_out = intents[1]
    before = heads.predict("a", "I want to order a pizza")
    assert isinstance(before, int) and 0 <= before < 8
    encoder = heads.loaded("a").engine.preprocessor.encoder
    weight = next(encoder.model.parameters()).clone()
    summary = heads.train("a")
    assert summary["updated"] is True
    labels = heads.check_head("a")["labels"]
    preds = heads.predict("a", [r["text"] for r in held_out])
    accuracy = sum(labels[p] == r["label"] for p, r in zip(preds, held_out)) / len(held_out)
    assert accuracy >= 0.9, accuracy
    assert torch.equal(next(encoder.model.parameters()), weight)  # the encoder stayed frozen
    assert heads.loaded("a").engine.preprocessor.encoder is encoder


def test_stacked_pass_encodes_the_texts_of_all_heads_in_one_call(heads, monkeypatch):
    texts = ["book a flight to Lima", "set an alarm for noon", "play some Bach"]
    requests = [(uuid, text) for uuid in ("a", "b") for text in texts]
    alone = [heads.predict(uuid, text) for uuid, text in requests]
    encoder = heads.loaded("a").engine.preprocessor.encoder
    calls = []
    inner = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda batch: calls.append(len(batch)) or inner(batch))
    assert heads.predict_many(requests) == alone
    assert calls == [6]
    scores = heads.predict_many([("a", texts[0]), ("b", texts[0]), ("a", [0.0] * 384)])
    assert calls == [6, 2] and all(isinstance(s, int) for s in scores)


# --- through a Jaseci walker ---------------------------------------------------------------

@pytest.mark.slow  # the Jaseci runtime
class TestMiniLMHeadThroughWalkers(JacCase):
    """A JAC program names the encoder in a config dict; no path anywhere."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.old_cwd = in_dir(self.tmp)
        self.old_cache = os.environ.get("PH_CACHE_DIR")
        os.environ["PH_CACHE_DIR"] = str(self.tmp / "cache")
        train, self.held_out = make_split(seed=0)
        (self.tmp / "train.json").write_text(json.dumps(as_label_lists(train)))
        ph.api.setup(heads_dir=str(self.tmp / "heads"))
        super().setUp()

    def tearDown(self):
        super().tearDown()
        in_dir(self.old_cwd)
        if self.old_cache is None:
            os.environ.pop("PH_CACHE_DIR", None)
        else:
            os.environ["PH_CACHE_DIR"] = self.old_cache
        ph.api._registry = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_walker_creates_trains_and_asks_a_minilm_head(self):
        assert self.ok("create", uuid="user1", config=minilm_config()) == ["user1"]
        summary = self.ok("train", uuid="user1", overrides={})[0]
        assert summary["updated"] is True
        preds = self.ok("predict", uuid="user1", data=[r["text"] for r in self.held_out])[0]
        _, check, config = self.ok("inspect", uuid="user1")
        assert config["Model"]["args"]["embedding_length"] == 384
        hits = sum(check["labels"][p] == r["label"] for p, r in zip(preds, self.held_out))
        assert hits / len(self.held_out) >= 0.9

    def test_walker_naming_an_unknown_model_fails_with_the_accepted_names(self):
        config = minilm_config()
        config["Inference"]["preprocess"]["args"]["encoder_args"] = {"model": "MiniLM"}
        errors = self.fails("create", "unknown model 'MiniLM'", uuid="user2", config=config)
        assert "all-MiniLM-L6-v2" in errors


def in_threads(work, n: int) -> list[Exception]:
    """Run `work` in n threads at once; returns what they raised."""
    errors: list[Exception] = []

    def run():
        try:
            work()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
