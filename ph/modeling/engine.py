"""InferenceEngine: one head's pre-processor -> model -> post-processor on a device.

Weights are swapped by replacing the model object, never by loading into the one in
use, so a prediction always runs on one complete set of weights.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import pickle
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

import torch
from torch import nn

from . import models, processors  # noqa: F401  (register the built-in components)
from ..config.components import (MODELS, POSTPROCESSORS, PREPROCESSORS, UserCode, UserComponent, bind,
                         construct, resolve)
from ..config.schema import component_args
from ..errors import BadInputError, PHError, WeightsError

log = logging.getLogger("ph.engine")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PREFIXES = ("module.", "model.")


def resolve_device(name: str = "auto") -> torch.device:
    """torch.device for 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; CPU when the GPU is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        index = device.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            log.warning("device %s is not available here; using the CPU", name)
            return torch.device("cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        log.warning("device mps is not available here; using the CPU")
        return torch.device("cpu")
    return device


def build_model(config: Mapping, code: UserCode) -> nn.Module:
    """The Model section's module, on the current default device, float32."""
    return _build(MODELS, config["Model"], "Model", code)


def build_processors(config: Mapping, code: UserCode) -> tuple[Any, Any]:
    """(pre, post) processors; arguments they leave out are taken from Model.args by name."""
    model_args = component_args(config["Model"])
    inference = config["Inference"]
    return tuple(_build(registry, inference[key], f"Inference.{key}", code, defaults=model_args)
                 for registry, key in ((PREPROCESSORS, "preprocess"), (POSTPROCESSORS, "postprocess")))


def _build(registry, spec: Mapping, path: str, code: UserCode, defaults: Mapping | None = None):
    cls, args = resolve(registry, spec, path, code)
    if defaults:
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            params = {}
        args = {**{k: v for k, v in defaults.items() if k in params}, **args}
    bind(cls, args, path)
    return construct(cls, args, path)


class InferenceEngine:
    """Runs one head: pre-process, forward on its device without gradients, post-process."""

    def __init__(self, model: nn.Module, preprocessor: Any, postprocessor: Any,
                 device: torch.device, dtype: torch.dtype = torch.float32,
                 labels: list | None = None, factory: Callable[[], nn.Module] | None = None):
        self.preprocessor, self.postprocessor = preprocessor, postprocessor
        self.device, self.dtype = device, dtype
        self.model = self.place(model)
        self.labels = labels
        self.factory = factory  # builds a fresh model of this architecture (CPU, float32)
        self.guard: Callable[[], ContextManager] = contextlib.nullcontext  # set by a HeadBank

    def place(self, model: nn.Module) -> nn.Module:
        """A model moved to this engine's device and dtype, in eval mode."""
        return model.to(device=self.device, dtype=self.dtype).eval()

    @property
    def labels(self) -> list | None:
        return self._labels

    @labels.setter
    def labels(self, labels: list | None) -> None:
        self._labels = list(labels) if labels else None
        if hasattr(self.postprocessor, "labels"):
            self.postprocessor.labels = self._labels

    def predict(self, data: Any) -> Any:
        """Answer for one input or a batch (as the pre-processor understands it)."""
        x = self.preprocess(data)
        return self.postprocess(self.forward(x), self.is_single(data))

    def preprocess(self, data: Any) -> Any:
        try:
            return self.preprocessor.process(data)
        except PHError:
            raise
        except Exception as exc:
            raise BadInputError(f"data: the pre-processor "
                                f"{type(self.preprocessor).__name__} could not read it: "
                                f"{type(exc).__name__}: {exc}") from exc

    def is_single(self, data: Any) -> bool:
        check = getattr(self.preprocessor, "is_single", None)
        return bool(check and check(data))

    def forward(self, x: Any) -> Any:
        model = self.model  # one reference: a concurrent swap cannot mix weights
        if isinstance(x, torch.Tensor):
            x = x.to(self.device, self.dtype if x.is_floating_point() else x.dtype)
        try:
            with self.guard(), torch.inference_mode():
                out = model(x)
        except Exception as exc:
            raise BadInputError(f"data: the model {type(model).__name__} cannot run on this input "
                                f"({type(exc).__name__}: {exc})") from exc
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != torch.float32:
            out = out.float()
        return out

    def postprocess(self, out: Any, single: bool) -> Any:
        try:
            result = self.postprocessor.process(out)
        except PHError:
            raise
        except Exception as exc:
            raise PHError(f"the post-processor {type(self.postprocessor).__name__} failed: "
                          f"{type(exc).__name__}: {exc}") from exc
        if single and isinstance(result, list) and len(result) == 1:
            return result[0]
        return result

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Current weights, float32 on the CPU (what is saved to disk)."""
        return {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
                for k, v in self.model.state_dict().items()}

    def with_weights(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        """A new model like the current one holding `state` (already fitted by
        `fit_state_dict`)."""
        if self.factory is not None:  # never deepcopy: weights may be views of a bank
            model = self.factory()
        else:
            model = copy.deepcopy(self.model)
        model.load_state_dict(state)
        return self.place(model)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Switch to new weights atomically (predictions see old or new, never a mix)."""
        self.model = self.with_weights(fit_state_dict(self.model, state))

    def param_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())


def make_model(config: Mapping, code: UserCode, state: Mapping | None = None,
               seed: int | None = None) -> nn.Module:
    """The head's model on the CPU in float32: `state` loaded, or freshly initialised from
    `seed` (so every process builds the same untrained head)."""
    builtin = not isinstance(MODELS.get(config["Model"]["type"], "Model.type"), UserComponent)
    if state is not None and builtin:  # no random init just to overwrite it: build on meta
        with torch.device("meta"):
            model = build_model(config, code)
        model.load_state_dict(fit_state_dict(model, state), assign=True)
        return model
    if seed is None:
        model = build_model(config, code)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(config, code)
    if state is not None:
        model.load_state_dict(fit_state_dict(model, state))
    return model


def build_engine(config: Mapping, code: UserCode, state: Mapping | None = None,
                 labels: list | None = None, seed: int | None = None) -> InferenceEngine:
    """Engine for a defaults-filled config."""
    pre, post = build_processors(config, code)
    inference = config["Inference"]
    return InferenceEngine(make_model(config, code, state, seed), pre, post,
                           resolve_device(inference["device"]), DTYPES[inference["dtype"]], labels,
                           factory=lambda: build_model(config, code))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, extras such as labels) from a state-dict or checkpoint file.

    Loads with `weights_only=True`: a file that needs arbitrary Python objects is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' not found; give the path of a .pt file "
                           "saved by training (e.g. saved/models/<name>/<uuid>/best_model.pt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        raise WeightsError(f"weights file '{path}' holds Python objects that ph does not load "
                           f"(weights_only=True{': ' + found[0][:160] if found else ''}); save a "
                           "plain state dict with torch.save(model.state_dict(), path)") from None
    except Exception as exc:
        raise WeightsError(f"weights file '{path}' cannot be read as torch weights "
                           f"({type(exc).__name__}: {str(exc)[:200]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, extras = obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, dict):
        state, extras = obj, {}
    else:
        state, extras = {}, {}
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file '{path}' holds neither a state dict (names -> tensors) "
                           "nor a checkpoint with one under 'state_dict'")
    labels = extras.get("labels")
    if labels is not None and not (isinstance(labels, list)
                                   and all(isinstance(v, (str, int)) for v in labels)):
        raise WeightsError(f"weights file '{path}': 'labels' must be a list of label names")
    return state, extras


def fit_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict:
    """`state` with `module.`/`model.` prefixes removed, checked against `model`.

    Raises:
        WeightsError: listing missing, unexpected and wrong-shape keys.
    """
    expected = model.state_dict()
    state = dict(state)
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not set(state) <= set(expected):
            state = {k[len(prefix):]: v for k, v in state.items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("wrong shapes", wrong)) if keys]
        raise WeightsError(f"weights do not fit the {type(model).__name__} model; "
                           f"{'; '.join(parts)}. Were they trained with another Model config?")
    return state
