"""ph.config.components: registries, user code, argument binding, and every registered component.

The parametrized tests at the end run over every name in MODELS, PREPROCESSORS and
POSTPROCESSORS, so a newly registered component is built and exercised automatically.
"""
from __future__ import annotations

import inspect
import json
import sys

import pytest
import torch

import ph.modeling.engine  # noqa: F401  (registers the built-in models and processors)
from ph.config.components import (MODELS, POSTPROCESSORS, PREPROCESSORS, ComponentRegistry, UserCode,
                           UserComponent, bind, build, resolve)
from ph.errors import ConfigError

NO_CODE = UserCode()
# Argument names by which ph links a model to its processors (see engine.build_processors).
INPUT_DIM_ARGS = ("embedding_length", "input_dim")
OUTPUT_DIM_ARGS = ("n_classes", "output_dim")

USER_SOURCE = '''
import torch
from collections import OrderedDict


class TinyNet(torch.nn.Module):
    def __init__(self, n_in=4, n_out=3):
        super().__init__()
        self.fc = torch.nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.fc(x)


class Helper:
    pass


not_a_class = 3
'''


def registered(registry):
    """Names of the built-in (non-user-code) components of a registry."""
    return [n for n in registry.names() if not isinstance(registry.get(n, "test"), UserComponent)]


def default_arg(cls, names):
    """(name, default) of the first constructor argument of `cls` among `names`."""
    params = inspect.signature(cls).parameters
    for name in names:
        if name in params and params[name].default is not inspect.Parameter.empty:
            return name, params[name].default
    pytest.fail(f"{cls.__name__} has none of the arguments {names}; teach "
                f"tests/config/test_components.py what input it takes")


# --- ComponentRegistry ----------------------------------------------------------------------------

def test_registry_refuses_a_duplicate_name():
    reg = ComponentRegistry("widget")

    @reg.register("Gear", "Cog")
    class Gear:
        pass

    with pytest.raises(ValueError, match="widget 'Cog' is already registered"):
        reg.add("Cog", object())
    with pytest.raises(ValueError, match="already registered"):
        @reg.register("Gear")
        class Other:
            pass
    assert reg.get("Gear", "x") is Gear and reg.get("Cog", "x") is Gear


def test_registry_register_without_names_uses_the_class_name():
    reg = ComponentRegistry("widget")

    @reg.register()
    class Sprocket:
        pass

    assert reg.names() == ["Sprocket"]
    assert "Sprocket" in reg and "sprocket" not in reg


def test_registry_unknown_name_lists_known_names_and_suggests_the_close_one():
    reg = ComponentRegistry("widget")
    for name in ("Gear", "Sprocket", "Flywheel"):
        reg.add(name, object())
    with pytest.raises(ConfigError) as err:
        reg.get("Sprockett", "Machine.type")
    message = str(err.value)
    assert message.startswith("Invalid config: Machine.type: unknown widget 'Sprockett'")
    assert "(did you mean 'Sprocket'?)" in message
    assert "known: Flywheel, Gear, Sprocket" in message


def test_registry_unknown_name_without_a_close_one_gives_no_hint():
    with pytest.raises(ConfigError) as err:
        MODELS.get("Zebra", "Model.type")
    assert "did you mean" not in str(err.value)
    assert "known: " + ", ".join(MODELS.names()) in str(err.value)


def test_builtin_registries_hold_the_seed_names():
    assert {"PersonalizedHead", "PHClassifier", "PHVector2Vector", "CustomModel"} <= set(MODELS.names())
    assert MODELS.get("PHClassifier", "x") is MODELS.get("PersonalizedHead", "x")
    assert {"PersonalizedHeadPreProcessor", "SnipsPreProcessor", "CustomProcessor"} <= set(
        PREPROCESSORS.names())
    assert {"PersonalizedHeadPostProcessor", "SnipsPostProcessor", "CustomProcessor"} <= set(
        POSTPROCESSORS.names())


# --- bind / build ------------------------------------------------------------------------

class Gadget:
    def __init__(self, alpha, beta=2, *rest, context=None):
        self.alpha, self.beta, self.context = alpha, beta, context


def test_bind_accepts_arguments_the_class_takes():
    bind(Gadget, {"alpha": 1, "beta": 3}, "Thing")
    bind(Gadget, {"alpha": 1}, "Thing", injected={"context": object()})


def test_bind_error_names_the_class_and_its_accepted_arguments():
    with pytest.raises(ConfigError) as err:
        bind(Gadget, {"alpha": 1, "betta": 3}, "Thing", injected={"context": None})
    message = str(err.value)
    assert "Thing.args: Gadget does not take these arguments" in message
    assert "betta" in message
    assert "(did you mean 'beta'?)" in message
    assert message.endswith("it accepts: alpha, beta")  # neither *rest nor the injected context


def test_bind_reports_a_missing_required_argument():
    with pytest.raises(ConfigError, match=r"missing a required argument: 'alpha'.*accepts: alpha"):
        bind(Gadget, {"beta": 1}, "Thing")


def test_bind_names_a_builtin_model_and_its_arguments():
    with pytest.raises(ConfigError) as err:
        bind(MODELS.get("PersonalizedHead", "x"), {"n_clases": 3}, "Model")
    message = str(err.value)
    assert "Model.args: PersonalizedHead does not take these arguments" in message
    assert "(did you mean 'n_classes'?)" in message
    assert ("it accepts: embedding_length, n_classes, ph_ff_dim, ph_nhead, ph_nlayers, "
            "batch_first, dropout") in message


def test_build_turns_a_constructor_error_into_a_config_error_at_the_path():
    with pytest.raises(ConfigError) as err:
        build(MODELS, {"type": "PHVector2Vector", "args": {"input_dim": 0}}, "Model", NO_CODE)
    message = str(err.value)
    assert "Model: building PHVector2Vector" in message
    assert "ValueError: input_dim must be a whole number >= 1, got 0" in message


def test_build_treats_null_args_as_no_arguments():
    model = build(MODELS, {"type": "PHVector2Vector", "args": None}, "Model", NO_CODE)
    assert model.layers[0].in_features == 768


# --- UserCode ----------------------------------------------------------------------------

def test_user_code_loads_a_class_from_source_text():
    code = UserCode({"models/tiny.py": USER_SOURCE})
    cls = code.load_class("models/tiny.py", "TinyNet", "Model")
    model = cls(n_in=4, n_out=2)
    assert isinstance(model, torch.nn.Module)
    assert model(torch.zeros(5, 4)).shape == (5, 2)
    assert code.load_class("models/tiny.py", "TinyNet", "Model") is cls  # one module per source
    assert sys.modules[cls.__module__].__file__ == "models/tiny.py"


def test_resolve_custom_model_passes_only_the_other_args_to_the_user_class():
    code = UserCode({"tiny.py": USER_SOURCE})
    spec = {"type": "CustomModel",
            "args": {"python_file": "tiny.py", "module_name": "TinyNet", "n_out": 5}}
    cls, args = resolve(MODELS, spec, "Model", code)
    assert cls.__name__ == "TinyNet" and args == {"n_out": 5}
    assert spec["args"]["python_file"] == "tiny.py"  # the spec itself is left alone
    model = build(MODELS, spec, "Model", code)
    assert model(torch.zeros(2, 4)).shape == (2, 5)


@pytest.mark.parametrize("python_file, given", [("other.py", "'other.py'"),
                                                (None, "no python_file"), ("", "no python_file")])
def test_user_code_without_the_named_source_is_a_clear_error(python_file, given):
    code = UserCode({"tiny.py": USER_SOURCE})
    with pytest.raises(ConfigError) as err:
        code.load_class(python_file, "TinyNet", "Model")
    assert f"Model.args.python_file: {given} has no source" in str(err.value)


@pytest.mark.parametrize("module_name", [None, "", 5])
def test_user_code_without_a_module_name_is_a_clear_error(module_name):
    code = UserCode({"tiny.py": USER_SOURCE})
    with pytest.raises(ConfigError, match=r"Model.args.module_name: name the class to use"):
        code.load_class("tiny.py", module_name, "Model")


def test_user_code_missing_class_lists_the_classes_in_the_file():
    code = UserCode({"tiny.py": USER_SOURCE})
    with pytest.raises(ConfigError) as err:
        code.load_class("tiny.py", "TinyNett", "Model")
    message = str(err.value)
    assert "Model.args.module_name: 'tiny.py' has no class 'TinyNett'" in message
    assert "(did you mean 'TinyNet'?)" in message
    assert "classes there: Helper, TinyNet" in message  # not the imported OrderedDict


def test_user_code_name_of_a_non_class_is_refused():
    code = UserCode({"tiny.py": USER_SOURCE})
    with pytest.raises(ConfigError, match="has no class 'not_a_class'"):
        code.load_class("tiny.py", "not_a_class", "Model")


def test_user_code_file_without_classes_says_none():
    code = UserCode({"empty.py": "x = 1  # test_user_code_file_without_classes_says_none\n"})
    with pytest.raises(ConfigError, match="classes there: none"):
        code.load_class("empty.py", "Net", "Model")


@pytest.mark.parametrize("source, error", [
    ("raise RuntimeError('no GPU here')  # raises on import\n", "RuntimeError: no GPU here"),
    ("x = 1 / 0  # raises on import\n", "ZeroDivisionError: division by zero"),
    ("import ph_no_such_module_xyz\n", "ModuleNotFoundError"),
    ("def broken(:\n", "SyntaxError"),
])
def test_user_code_that_fails_on_import_is_a_clear_config_error(source, error):
    code = UserCode({"bad.py": source})
    before = set(sys.modules)
    with pytest.raises(ConfigError) as err:
        code.load_class("bad.py", "Net", "Model")
    message = str(err.value)
    assert "user file 'bad.py' failed to load" in message
    assert error in message
    assert not any(m.startswith("ph_user_") for m in set(sys.modules) - before)
    with pytest.raises(ConfigError, match="failed to load"):  # still fails, nothing was cached
        code.load_class("bad.py", "Net", "Model")


# --- every registered component builds with default args and works ----------------------

@pytest.mark.parametrize("name", registered(MODELS))
def test_registered_model_builds_with_default_args_and_runs_forward(name):
    cls = MODELS.get(name, "Model.type")
    in_key, in_dim = default_arg(cls, INPUT_DIM_ARGS)
    out_key, out_dim = default_arg(cls, OUTPUT_DIM_ARGS)
    torch.manual_seed(0)
    model = build(MODELS, {"type": name, "args": {}}, "Model", NO_CODE)
    assert isinstance(model, torch.nn.Module)
    x = torch.randn(3, in_dim)
    model.train()
    out = model(x)
    assert out.shape == (3, out_dim), f"{name}: {in_key}={in_dim} -> {out_key}={out_dim}"
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval mode is deterministic (no dropout)


@pytest.mark.parametrize("name", [n for n in registered(MODELS)
                                  if hasattr(MODELS.get(n, "x"), "stacked_forward")])
def test_registered_model_stacked_forward_matches_forward_with_default_args(name):
    cls = MODELS.get(name, "Model.type")
    _, in_dim = default_arg(cls, INPUT_DIM_ARGS)
    args = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    torch.manual_seed(0)
    heads = [cls().eval() for _ in range(2)]
    states = [h.state_dict() for h in heads]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    x = torch.randn(2, 3, in_dim)
    with torch.no_grad():
        got = cls.stacked_forward(stacked, x, args)
        for i, head in enumerate(heads):
            torch.testing.assert_close(got[i], head(x[i]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", registered(PREPROCESSORS))
def test_registered_preprocessor_builds_with_default_args_and_round_trips_vectors(name):
    cls = PREPROCESSORS.get(name, "Inference.preprocess.type")
    _, dim = default_arg(cls, INPUT_DIM_ARGS)
    pre = build(PREPROCESSORS, {"type": name, "args": {}}, "Inference.preprocess", NO_CODE)
    vectors = torch.randn(2, dim).tolist()
    batch = pre.process(vectors)
    assert isinstance(batch, torch.Tensor) and batch.dtype == torch.float32
    assert batch.shape[0] == 2 and batch.shape[-1] == dim
    torch.testing.assert_close(batch.reshape(2, dim), torch.tensor(vectors))
    single = pre.process(vectors[0])
    assert single.shape[0] == 1
    torch.testing.assert_close(single.reshape(dim), torch.tensor(vectors[0]))
    if hasattr(pre, "is_single"):
        assert pre.is_single(vectors[0]) is True
        assert pre.is_single(vectors) is False


@pytest.mark.parametrize("name", registered(POSTPROCESSORS))
def test_registered_postprocessor_builds_with_default_args_and_returns_plain_values(name):
    post = build(POSTPROCESSORS, {"type": name, "args": {}}, "Inference.postprocess", NO_CODE)
    torch.manual_seed(0)
    output = torch.log_softmax(torch.randn(3, 5), dim=-1)
    result = post.process(output)
    assert isinstance(result, list) and len(result) == 3
    json.dumps(result)  # plain Python values: Jaseci cannot carry tensors
    assert result in (output.argmax(dim=-1).tolist(), output.tolist()), (
        f"{name} gave neither the predicted classes nor the output values: {result}")
