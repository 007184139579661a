"""Stored examples keep their embeddings in the head's store, in both stores: a run
encodes only the texts no run encoded before, a run whose texts are all stored loads no
encoder (as a job on another machine would), deleting examples drops them, and a
damaged pack is encoded again, never used. The machine's own embedding caches are off
here, so only the head's store can answer."""
from __future__ import annotations

import json

import pytest
import torch

from helpers.heads import small_config
from ph.heads import stored_embeddings
from ph.modeling import encoders
from ph.modeling.embedding_store import text_key

ENCODER_ARGS = {"model": "all-MiniLM-L6-v2", "batch_size": 17}  # this module's own instance
KEY = ("sentence_transformers", json.dumps(ENCODER_ARGS, sort_keys=True))  # encoders._shared's
GREET = ["hi there", "hello", "good morning", "hey, how are you", "greetings"]
BYE = ["bye", "see you later", "good night", "farewell", "talk to you soon"]


@pytest.fixture(scope="module", autouse=True)
def no_machine_caches():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PH_EMBEDDING_CACHE_BYTES", "0")
        mp.setenv("PH_EMBEDDING_STORE", "0")
        encoders._shared.pop(KEY, None)  # built afresh, with those caches off
        yield
        encoders._shared.pop(KEY, None)


def minilm_config(**loop) -> dict:
    config = small_config(**loop)
    config["Model"]["args"].update(embedding_length=384, n_classes=4)
    config["Inference"] = {"preprocess": {"args": {
        "embedding_length": 384, "encoder": "sentence_transformers", "encoder_args": ENCODER_ARGS}}}
    return config


def encoder():
    return encoders._shared[KEY]


@pytest.fixture
def encoded(monkeypatch):
    """The texts the model itself encodes from now on (what no cache answered)."""
    seen: list[str] = []
    target = encoder()
    real = target._encode
    monkeypatch.setattr(target, "_encode", lambda texts: seen.extend(texts) or real(texts))
    return seen


def rows_in_store(store, uuid) -> dict[bytes, torch.Tensor]:
    rows = {}
    for data in store.embedding_packs(uuid, encoder().identity).values():
        rows.update(stored_embeddings.unpack(data, 384))
    return rows


@pytest.fixture
def trained(any_registry):
    any_registry.create_head("u", minilm_config())
    any_registry.add_examples("u", {"greet": GREET, "bye": BYE})
    any_registry.train("u")
    return any_registry


def test_a_run_stores_its_examples_embeddings_with_the_head(trained):
    rows = rows_in_store(trained.store, "u")
    texts = GREET + BYE
    assert set(rows) == {text_key(t) for t in texts}
    expected = encoder()._encode(texts)
    for text, vector in zip(texts, expected):
        assert torch.allclose(rows[text_key(text)], vector, atol=1e-6)


def test_the_next_run_encodes_only_the_new_examples(trained, encoded):
    trained.add_examples("u", {"greet": ["yo, what's up"], "bye": ["catch you later"]})
    summary = trained.train("u", incremental=True)
    assert summary["updated"] and sorted(encoded) == ["catch you later", "yo, what's up"]
    trained.train("u")  # a whole run: every text is stored now
    assert sorted(encoded) == ["catch you later", "yo, what's up"]
    assert len(rows_in_store(trained.store, "u")) == 12


def test_a_run_whose_texts_are_all_stored_loads_no_encoder(trained, monkeypatch):
    # as a job process on another machine starts: a new encoder, nothing loaded
    monkeypatch.delitem(encoders._shared, KEY)
    summary = trained.train("u", {"Trainer": {"trainer": {"epochs": 1}}})
    assert summary["updated"]
    assert not encoder().stats()["loaded"]


def test_deleting_examples_drops_their_embeddings(trained):
    trained.delete_examples("u", ids=[1])
    assert rows_in_store(trained.store, "u") == {}
    trained.train("u")
    rows = rows_in_store(trained.store, "u")
    assert len(rows) == 9 and text_key(GREET[0]) not in rows


def test_a_damaged_pack_is_encoded_again_and_merged_away(trained, encoded):
    store, identity = trained.store, encoder().identity
    (name, data), = store.embedding_packs("u", identity).items()
    store.save_embedding_pack("u", identity, data[:-4], replaces=[name])  # cut short
    trained.train("u")
    assert sorted(encoded) == sorted(GREET + BYE)
    packs = store.embedding_packs("u", identity)
    assert len(packs) == 1 and len(stored_embeddings.unpack(next(iter(packs.values())), 384)) == 10


def test_packs_are_merged_once_there_are_too_many(trained):
    store = trained.store
    for i in range(stored_embeddings.MAX_PACKS):
        trained.add_examples("u", {"greet": [f"hello number {i}"]})
        trained.train("u", {"Trainer": {"trainer": {"epochs": 1}}}, incremental=True)
    packs = store.embedding_packs("u", encoder().identity)
    assert len(packs) < stored_embeddings.MAX_PACKS
    assert len(rows_in_store(store, "u")) == 10 + stored_embeddings.MAX_PACKS
