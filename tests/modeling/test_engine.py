"""InferenceEngine, device/dtype handling and weights files (ph/modeling/engine.py)."""
from __future__ import annotations

import logging

import pytest
import torch

from helpers.heads import small_config
from ph.config.components import UserCode
from ph.config.schema import deep_merge, with_defaults
from ph.modeling.engine import (InferenceEngine, build_engine, fit_state_dict, make_model, read_weights,
                       resolve_device)
from ph.errors import BadInputError, WeightsError
from ph.modeling.processors import PersonalizedHeadPostProcessor, PersonalizedHeadPreProcessor

DIM = 32
N_CLASSES = 5
TEXTS = ["order me a pizza", "what is the weather in Paris", "play some Bach",
         "book a flight to Tokyo", "wake me up at 7 am", "how cold is it tonight"]


def config(**overrides) -> dict:
    base = small_config()
    base["Model"]["args"].update(embedding_length=DIM, n_classes=N_CLASSES, ph_ff_dim=32)
    return with_defaults(deep_merge(base, overrides))


def engine(seed=0, **overrides) -> InferenceEngine:
    return build_engine(config(**overrides), UserCode(), seed=seed)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- devices ----------------------------------------------------------------------------------

def test_resolve_device_auto_is_cpu_without_gpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"  # cpu on the test machines
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device() == torch.device(expected)


def test_resolve_device_cuda_falls_back_to_cpu_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ph.engine"):
        device = resolve_device("cuda")
    if torch.cuda.is_available():
        assert device == torch.device("cuda")
        assert caplog.records == []
    else:
        assert device == torch.device("cpu")
        assert any("cuda" in r.getMessage() and "CPU" in r.getMessage() for r in caplog.records)


def test_resolve_device_missing_cuda_index_falls_back_to_cpu_with_warning(caplog):
    name = f"cuda:{torch.cuda.device_count() + 1}"  # never present, with or without a GPU
    with caplog.at_level(logging.WARNING, logger="ph.engine"):
        device = resolve_device(name)
    assert device == torch.device("cpu")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert name in caplog.records[0].getMessage()


def test_resolve_device_mps_falls_back_to_cpu_when_absent(caplog):
    with caplog.at_level(logging.WARNING, logger="ph.engine"):
        device = resolve_device("mps")
    if torch.backends.mps.is_available():
        assert device == torch.device("mps")
    else:
        assert device == torch.device("cpu")
        assert any("mps" in r.getMessage() for r in caplog.records)


def test_resolve_device_cpu_gives_cpu_without_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ph.engine"):
        assert resolve_device("cpu") == torch.device("cpu")
    assert caplog.records == []


# --- predictions ---------------------------------------------------------------------------------

def test_engine_predicts_an_int_for_one_string():
    out = engine().predict("order me a pizza")
    assert type(out) is int
    assert 0 <= out < N_CLASSES


def test_engine_predicts_a_list_for_a_batch():
    eng = engine()
    out = eng.predict(TEXTS)
    assert isinstance(out, list) and len(out) == len(TEXTS)
    assert all(type(v) is int and 0 <= v < N_CLASSES for v in out)
    assert out[1] == eng.predict(TEXTS[1])


def test_engine_batch_of_one_stays_a_list():
    out = engine().predict(["order me a pizza"])
    assert isinstance(out, list) and len(out) == 1


def test_engine_predicts_from_a_vector():
    eng = engine()
    vec = torch.randn(DIM, generator=torch.Generator().manual_seed(1)).tolist()
    assert type(eng.predict(vec)) is int
    assert eng.predict([vec, vec]) == [eng.predict(vec)] * 2


def test_engine_is_deterministic_in_eval_mode():
    eng = engine()
    assert not eng.model.training
    assert eng.predict(TEXTS) == eng.predict(TEXTS)


def test_engine_labels_reach_the_postprocessor():
    eng = engine(Inference={"postprocess": {"args": {"return_label": True}}})
    names = [f"intent_{i}" for i in range(N_CLASSES)]
    eng.labels = names
    assert eng.postprocessor.labels == names
    assert eng.predict(TEXTS[0]) in names


def test_preprocessor_takes_embedding_length_from_model_args():
    eng = engine()
    assert eng.preprocessor.dim == DIM
    with pytest.raises(BadInputError, match=f"vectors of {DIM} numbers"):
        eng.predict([0.1] * (DIM + 1))


# --- seeds ---------------------------------------------------------------------------------------

def test_same_seed_builds_identical_weights():
    a, b = engine(seed=7), engine(seed=7)
    assert states_equal(a.state_dict(), b.state_dict())
    assert a.predict(TEXTS) == b.predict(TEXTS)


def test_different_seeds_build_different_weights():
    assert not states_equal(engine(seed=1).state_dict(), engine(seed=2).state_dict())


def test_seeded_build_does_not_disturb_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_model(config(), UserCode(), seed=5)
    assert torch.equal(torch.rand(3), expected)


# --- weights files -----------------------------------------------------------------------------

def test_read_weights_loads_plain_state_dict(tmp_path):
    state = engine(seed=3).state_dict()
    path = tmp_path / "w.pt"
    torch.save(state, path)
    loaded, extras = read_weights(path)
    assert extras == {}
    assert states_equal(loaded, state)


def test_read_weights_loads_checkpoint_with_state_dict_and_labels(tmp_path):
    state = engine(seed=3).state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": state, "labels": ["a", "b"], "epoch": 4}, path)
    loaded, extras = read_weights(str(path))
    assert states_equal(loaded, state)
    assert extras == {"labels": ["a", "b"], "epoch": 4}


@pytest.mark.parametrize("prefix", ["module.", "model.", "module.model."])
def test_prefixed_state_dict_loads_into_engine(tmp_path, prefix):
    source = engine(seed=3)
    path = tmp_path / "w.pt"
    torch.save({prefix + k: v for k, v in source.state_dict().items()}, path)
    loaded, _ = read_weights(path)
    target = engine(seed=4)
    target.load_state_dict(loaded)
    assert states_equal(target.state_dict(), source.state_dict())
    assert target.predict(TEXTS) == source.predict(TEXTS)


class _Payload:
    """Unpickling this calls open(marker, 'w'): it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_read_weights_refuses_pickled_objects_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2)}, "x": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(WeightsError) as err:
        read_weights(path)
    assert not marker.exists()
    assert "holds Python objects" in str(err.value) and "state_dict()" in str(err.value)
    # the payload is real: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_read_weights_missing_file_is_weights_error(tmp_path):
    with pytest.raises(WeightsError) as err:
        read_weights(tmp_path / "missing.pt")
    assert "missing.pt" in str(err.value) and "not found" in str(err.value)


def test_read_weights_garbage_file_is_weights_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(WeightsError, match="cannot be read"):
        read_weights(path)


def test_read_weights_non_state_dict_content_is_weights_error(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(WeightsError, match="neither a state dict"):
        read_weights(path)


def test_fit_state_dict_lists_missing_unexpected_and_wrong_shape_keys():
    model = engine().model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(N_CLASSES + 1, DIM)
    with pytest.raises(WeightsError) as err:
        fit_state_dict(model, state)
    msg = str(err.value)
    assert "missing keys: fc.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert (f"wrong shapes: fc.weight (file ({N_CLASSES + 1}, {DIM}), "
            f"model ({N_CLASSES}, {DIM}))") in msg
    assert "PersonalizedHead" in msg


def test_engine_load_state_dict_with_mismatch_keeps_current_model():
    eng = engine()
    before = eng.model
    with pytest.raises(WeightsError):
        eng.load_state_dict({"fc.weight": torch.zeros(1)})
    assert eng.model is before


def test_load_state_dict_swaps_to_a_new_model_leaving_the_old_one_untouched():
    eng = engine(seed=1)
    old_model = eng.model
    old_state = {k: v.clone() for k, v in old_model.state_dict().items()}
    x = eng.preprocess(TEXTS)
    with torch.inference_mode():
        old_out = old_model(x)
    new_state = engine(seed=2).state_dict()

    eng.load_state_dict(new_state)

    assert eng.model is not old_model
    assert states_equal(eng.state_dict(), new_state)
    assert states_equal(old_model.state_dict(), old_state)  # an in-flight holder is unaffected
    with torch.inference_mode():
        assert torch.equal(old_model(x), old_out)
    assert not eng.model.training


# --- dtype -------------------------------------------------------------------------------------

def test_bfloat16_engine_predicts_same_class_as_float32():
    f32 = engine(seed=0)
    bf16 = engine(seed=0, Inference={"dtype": "bfloat16"})
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert bf16.state_dict()["fc.weight"].dtype == torch.float32  # saved as float32
    # compare on inputs whose float32 decision is not a near tie
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, DIM, generator=gen) * 3
    with torch.inference_mode():
        logp = f32.forward(f32.preprocess(inputs))
    top2 = logp.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.1
    assert clear.sum() >= 10
    want = logp.argmax(-1)[clear].tolist()
    assert bf16.predict(inputs[clear]) == want
    assert f32.predict(inputs[clear]) == want


def test_bfloat16_engine_outputs_float32_scores():
    bf16 = engine(seed=0, Inference={"dtype": "bfloat16",
                                     "postprocess": {"args": {"return_scores": True}}})
    out = bf16.predict(TEXTS[0])
    assert sum(out["scores"]) == pytest.approx(1.0, abs=2e-2)


# --- pre-processor failures ------------------------------------------------------------------

class Exploding:
    def process(self, data):
        raise RuntimeError("tokenizer exploded")


def test_custom_preprocessor_error_is_bad_input_naming_the_processor():
    model = make_model(config(), UserCode(), seed=0)
    eng = InferenceEngine(model, Exploding(), PersonalizedHeadPostProcessor(),
                          torch.device("cpu"))
    with pytest.raises(BadInputError) as err:
        eng.predict("anything")
    msg = str(err.value)
    assert "Exploding" in msg and "RuntimeError" in msg and "tokenizer exploded" in msg
    assert isinstance(err.value.__cause__, RuntimeError)


USER_PRE = '''
class ShoutingPre:
    def __init__(self, embedding_length):
        self.dim = embedding_length

    def process(self, data):
        raise ValueError("cannot read " + repr(data))
'''


def test_user_code_preprocessor_error_is_bad_input_naming_the_processor():
    cfg = config(Inference={"preprocess": {"type": "CustomProcessor",
                                           "args": {"python_file": "pre.py",
                                                    "module_name": "ShoutingPre"}}})
    eng = build_engine(cfg, UserCode({"pre.py": USER_PRE}), seed=0)
    assert eng.preprocessor.dim == DIM  # embedding_length filled from Model.args
    with pytest.raises(BadInputError) as err:
        eng.predict("hello")
    msg = str(err.value)
    assert "ShoutingPre" in msg and "ValueError" in msg and "cannot read 'hello'" in msg


def test_model_failure_on_input_is_bad_input_naming_the_model():
    model = make_model(config(), UserCode(), seed=0)

    class WrongShape:
        def process(self, data):
            return torch.zeros(1, 1, DIM + 3)

    eng = InferenceEngine(model, WrongShape(), PersonalizedHeadPostProcessor(),
                          torch.device("cpu"))
    with pytest.raises(BadInputError, match="PersonalizedHead cannot run"):
        eng.predict("x")


def test_engine_with_plain_preprocessor_has_no_is_single():
    model = make_model(config(), UserCode(), seed=0)

    class Plain:
        def process(self, data):
            return PersonalizedHeadPreProcessor(embedding_length=DIM).process(data)

    eng = InferenceEngine(model, Plain(), PersonalizedHeadPostProcessor(), torch.device("cpu"))
    out = eng.predict("one string")
    assert isinstance(out, list) and len(out) == 1


# --- on a CUDA device (skipped where there is none) ---------------------------------------------

@pytest.mark.gpu
def test_a_head_on_cuda_answers_as_on_the_cpu_within_1e_4():
    cpu, cuda = engine(seed=0), engine(seed=0, Inference={"device": "cuda"})
    assert cuda.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in cuda.model.parameters())
    on_cpu, on_cuda = cpu.forward(cpu.preprocess(TEXTS)), cuda.forward(cuda.preprocess(TEXTS))
    assert on_cuda.device.type == "cuda" and on_cuda.dtype == torch.float32
    assert (on_cuda.cpu() - on_cpu).abs().max() <= 1e-4
    assert cuda.predict(TEXTS) == cpu.predict(TEXTS)
    assert all(t.device.type == "cpu" for t in cuda.state_dict().values())  # saved from the CPU
