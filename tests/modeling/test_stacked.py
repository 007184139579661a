"""One forward pass for many heads: stacked banks and predict_many equal per-head answers."""
from __future__ import annotations

import threading

import pytest
import requests
import torch

from helpers.heads import small_config, tiny_custom_config
from helpers.servers import ph_server
from ph.config.components import UserCode
from ph.modeling.engine import InferenceEngine, make_model
from ph.modeling.stacked import DERIVE_AFTER_USES, _runs
from ph.errors import HeadNotFoundError
from ph.heads.service import HeadRegistry

TEXTS = ["I want to order a pizza", "will it rain in Lima", "play some Bach", "wake me at 6"]


def scores_config(**model_args):
    config = small_config()
    config["Model"]["args"].update(model_args)
    config["Inference"] = {"postprocess": {"args": {"return_scores": True}}}
    return config


def scores(answer):
    return torch.tensor([a["scores"] for a in answer] if isinstance(answer, list) else answer["scores"])


@pytest.fixture
def heads(registry):
    return [registry.create_head(f"h{i}", scores_config()) for i in range(12)]


def test_predict_many_equals_each_heads_own_forward_within_1e_5(registry, heads):
    requests_ = [(uid, TEXTS[i % 4]) for i, uid in enumerate(heads)]
    together = registry.predict_many(requests_)
    for (uid, text), answer in zip(requests_, together):
        alone = registry.predict(uid, text)
        assert answer["prediction"] == alone["prediction"]
        assert (scores(answer) - scores(alone)).abs().max() <= 1e-5


def test_batches_subsets_repeats_and_other_architectures_answer_right(registry, heads):
    other = registry.create_head("wide", scores_config(ph_ff_dim=32))
    requests_ = [(heads[0], TEXTS), (heads[7], TEXTS[1]), (heads[0], TEXTS[2]), (other, TEXTS[3]),
                 (heads[11], [TEXTS[0], TEXTS[1]])]
    for (uid, data), answer in zip(requests_, registry.predict_many(requests_)):
        assert (scores(answer) - scores(registry.predict(uid, data))).abs().max() <= 1e-5


def test_sparse_heads_of_a_large_chunk_answer_as_each_alone(registry):
    uids = [registry.create_head(f"s{i}", scores_config()) for i in range(40)]
    registry.predict_many([(uid, "warm") for uid in uids])  # all loaded: chunks of 8, 8, 16, 32
    picked = [uids[i] for i in (0, 2, 3, 9, 17, 18, 20, 31, 39)]  # runs, gaps of 1, lone heads
    requests_ = [(uid, TEXTS[i % 4]) for i, uid in enumerate(picked)] + [(picked[4], TEXTS)]
    for (uid, data), answer in zip(requests_, registry.predict_many(requests_)):
        assert (scores(answer) - scores(registry.predict(uid, data))).abs().max() <= 1e-5


def test_heads_in_use_get_fused_weights_and_still_answer_as_alone(registry, heads):
    requests_ = [(uid, TEXTS[i % 4]) for i, uid in enumerate(heads[:6])]
    registry.predict_many(requests_ + [(heads[6], "once")])
    slot = lambda uid: registry.cache.peek(uid).extra["slot"]
    assert not slot(heads[0]).derived  # loaded and used once: nothing derived yet
    for _ in range(DERIVE_AFTER_USES):
        answers = registry.predict_many(requests_)
    assert all(slot(uid).derived for uid in heads[:6]) and not slot(heads[6]).derived
    for (uid, text), answer in zip(requests_, answers):
        assert (scores(answer) - scores(registry.predict(uid, text))).abs().max() <= 1e-5
    mixed = [(heads[0], TEXTS[0]), (heads[6], TEXTS[1]), (heads[1], TEXTS[2])]  # fused and not
    for (uid, text), answer in zip(mixed, registry.predict_many(mixed)):
        assert (scores(answer) - scores(registry.predict(uid, text))).abs().max() <= 1e-5


def test_runs_bridge_gaps_of_one_slot_and_split_wider_ones():
    assert list(_runs([0, 2, 3, 9, 10, 14])) == [(0, 3), (9, 10), (14, 14)]
    assert list(_runs([5])) == [(5, 5)]


def test_a_failing_request_gets_its_error_and_the_others_answer(registry, heads):
    results = registry.predict_many([(heads[0], "hi"), ("nobody", "hi"), (heads[1], [1.0])])
    assert isinstance(results[0], dict)
    assert isinstance(results[1], HeadNotFoundError)
    assert "vectors of 64 numbers" in str(results[2])


def test_heads_of_one_architecture_share_bank_storage_without_copies(registry, heads):
    registry.predict_many([(uid, "x") for uid in heads])
    bank = registry.cache.peek(heads[0]).extra["bank"]
    assert len(registry.banks) == 1
    for uid in heads:
        head = registry.cache.peek(uid)
        slot = head.extra["slot"]
        weight = head.engine.model.fc.weight
        assert weight.data_ptr() == slot.chunk.params["fc.weight"][slot.index].data_ptr()
    assert sum(c.used for c in bank.chunks) == len(heads)


def test_new_weights_reach_the_stacked_pass(registry, heads, train_json):
    before = registry.predict_many([(heads[3], TEXTS)])[0]
    registry.train(heads[3])
    after = registry.predict_many([(heads[3], TEXTS)])[0]
    assert (scores(after) - scores(registry.predict(heads[3], TEXTS))).abs().max() <= 1e-5
    assert (scores(after) - scores(before)).abs().max() > 1e-3


def test_evicted_heads_reload_and_a_held_engine_keeps_its_weights(workdir):
    probe = HeadRegistry(workdir / "probe")
    one = probe.loaded(probe.create_head("p", scores_config())).nbytes
    registry = HeadRegistry(workdir / "heads", memory_budget=3 * one)
    uids = [registry.create_head(f"u{i}", scores_config()) for i in range(8)]
    held = registry.loaded(uids[0]).engine
    first = [scores(a) for a in registry.predict_many([(u, TEXTS) for u in uids])]
    assert registry.stats()["evictions"] >= 5
    assert (scores(held.predict(TEXTS)) - first[0]).abs().max() <= 1e-5  # detached, not overwritten
    again = [scores(a) for a in registry.predict_many([(u, TEXTS) for u in uids])]
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(first, again))
    bank = next(iter(registry.banks.values()))  # storage stays near the budget too
    assert sum(c.capacity for c in bank.chunks) * bank.slot_bytes() <= 5 * one


def test_custom_heads_without_a_stacked_forward_answer_one_by_one(registry):
    config = tiny_custom_config(registry)
    uid = registry.create_head("custom", config)
    assert registry.predict_many([(uid, TEXTS)]) == [registry.predict(uid, TEXTS)]
    assert "bank" not in registry.cache.peek(uid).extra


@pytest.mark.slow  # a `ph serve` process
def test_server_batches_concurrent_predict_calls(workdir):
    with ph_server(workdir) as url:
        uids = [requests.post(f"{url}/create_head/", json={"uuid": f"s{i}", "config": scores_config()},
                              timeout=60).json() for i in range(16)]
        expected = {uid: requests.post(f"{url}/predict/", json={"uuid": uid, "data": TEXTS},
                                       timeout=60).json() for uid in uids}
        answers = {}

        def ask(uid):
            with requests.Session() as session:
                for _ in range(10):
                    answers.setdefault(uid, []).append(
                        session.post(f"{url}/predict/", json={"uuid": uid, "data": TEXTS}, timeout=60).json())

        threads = [threading.Thread(target=ask, args=(uid,)) for uid in uids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for uid in uids:
            for answer in answers[uid]:
                assert (scores(answer) - scores(expected[uid])).abs().max() <= 1e-5
        health = requests.get(url + "/healthz", timeout=10).json()
        assert health["predict_requests"] == 16 + 160
        assert health["predict_batches"] <= 0.8 * health["predict_requests"]  # answered together
        many = requests.post(f"{url}/predict_many/", json={"requests": [[u, TEXTS] for u in uids]},
                             timeout=60).json()
        assert all((scores(a) - scores(expected[u])).abs().max() <= 1e-5 for a, u in zip(many, uids))


def test_inputs_of_other_shapes_and_failures_do_not_spoil_a_batch(registry, heads):
    vectors = registry.create_head("vectors", {**scores_config(), "Inference": {
        "preprocess": {"type": "V2VPreProcessor", "args": {"input_dim": 64}},
        "postprocess": {"args": {"return_scores": True}}}})
    requests_ = [(heads[0], TEXTS[0]), (vectors, [0.1] * 64), ("nobody", "x"), (heads[1], TEXTS[1])]
    results = registry.predict_many(requests_)
    assert isinstance(results[2], HeadNotFoundError)
    for i in (0, 1, 3):
        uid, data = requests_[i]
        assert (scores(results[i]) - scores(registry.predict(uid, data))).abs().max() <= 1e-5


# --- on a CUDA device (skipped where there is none) ---------------------------------------------

def on_the_cpu(loaded):
    """The same head (its weights, processors) as an engine on the CPU."""
    model = make_model(loaded.config, UserCode(), state=loaded.engine.state_dict())
    return InferenceEngine(model, loaded.engine.preprocessor, loaded.engine.postprocessor,
                           torch.device("cpu"), labels=loaded.engine.labels)


@pytest.mark.gpu
def test_the_stacked_pass_on_cuda_equals_each_heads_own_answer(registry):
    config = scores_config()
    config["Inference"]["device"] = "cuda"
    uids = [registry.create_head(f"g{i}", config) for i in range(6)]
    requests_ = [(uid, TEXTS[i % 4]) for i, uid in enumerate(uids)] + [(uids[0], TEXTS)]
    for _ in range(DERIVE_AFTER_USES + 1):  # the last passes use the fused weights
        together = registry.predict_many(requests_)
        for (uid, data), answer in zip(requests_, together):
            assert (scores(answer) - scores(registry.predict(uid, data))).abs().max() <= 1e-4
    assert registry.cache.peek(uids[0]).extra["bank"].device.type == "cuda"
    assert registry.cache.peek(uids[0]).extra["slot"].derived
    for (uid, data), answer in zip(requests_, together):
        alone_on_cpu = on_the_cpu(registry.loaded(uid)).predict(data)
        assert (scores(answer) - scores(alone_on_cpu)).abs().max() <= 1e-4
