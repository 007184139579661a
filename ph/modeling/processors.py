"""Pre-processors (input -> model tensor), post-processors (model output -> plain
Python values). The text encoders behind the default pre-processor live in
`ph.encoders`.

Built-in processors follow the seed's protocol, `process(x)`, plus `is_single(data)`
on pre-processors so one input gives one answer rather than a list of one.
"""
from __future__ import annotations

from numbers import Number
from typing import Any

import torch

from ..config.components import POSTPROCESSORS, PREPROCESSORS
from .encoders import (ENCODERS, HashingEncoder, SentenceTransformersEncoder,  # noqa: F401
                       make_encoder)  # (the encoders' old home: importable from here too)
from ..errors import BadInputError


class VectorPreProcessor:
    """Shared input handling: one vector or a list of vectors of a fixed length."""

    dim: int

    def is_single(self, data: Any) -> bool:
        if isinstance(data, torch.Tensor):
            return data.dim() == 1
        return isinstance(data, str) or (_is_sequence(data) and len(data) > 0
                                         and _is_number(data[0]))

    def vectors(self, data: Any) -> torch.Tensor:
        """[N, dim] float tensor from a vector, a list of vectors or a tensor."""
        if isinstance(data, torch.Tensor):
            tensor = data.detach().float()
        elif _is_sequence(data) and data and not isinstance(data[0], str):
            try:  # the fast path: torch reads nested lists of numbers in C
                tensor = torch.tensor(data, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                raise BadInputError(self._explain(data)) from None
        else:
            raise BadInputError(f"data: expected {self.expected}; got {_describe(data)}")
        if tensor.dim() == 3 and tensor.shape[1] == 1:  # already [N, 1, dim]
            tensor = tensor.squeeze(1)
        if tensor.dim() == 1:
            tensor = tensor.unsqueeze(0)
        if tensor.dim() != 2:
            raise BadInputError(f"data: got a tensor of shape {tuple(tensor.shape)}; expected "
                                f"[N, {self.dim}] ({self.expected})")
        if tensor.shape[-1] != self.dim:
            raise BadInputError(f"data: a vector of {tensor.shape[-1]} numbers cannot be used; "
                                f"this head takes vectors of {self.dim} numbers ({self.expected})")
        if not torch.isfinite(tensor).all():
            raise BadInputError("data: vectors must hold finite numbers (found NaN or infinity)")
        return tensor

    def _explain(self, data: list) -> str:
        """Why a list could not be read as vectors."""
        if all(_is_sequence(v) for v in data):
            rows = [_flat_vector(v) for v in data]
            if any(row is None for row in rows):
                return f"data: each vector must be a list of numbers ({self.expected})"
            sizes = sorted({len(r) for r in rows})
            if len(sizes) == 1:
                return "data: some vectors are nested ([[...]]) and some are not; write them alike"
            return f"data: vectors have different lengths {sizes}; each must have {self.dim} numbers"
        return f"data: expected {self.expected}; got {_describe(data)}"


@PREPROCESSORS.register("PersonalizedHeadPreProcessor", "SnipsPreProcessor")
class PersonalizedHeadPreProcessor(VectorPreProcessor):
    """Text or embeddings -> [batch, 1, embedding_length] for PersonalizedHead.

    Takes a string, a list of strings, a vector (list of floats) or a list of vectors.
    `embedding_length` defaults to Model.args.embedding_length. `encoder` (see
    `ph.encoders`) turns text into vectors; a model-backed one is loaded once per process
    and shared by every head naming the same `encoder_args`.
    """

    def __init__(self, embedding_length: int = 768, encoder: str = "hashing",
                 encoder_args: dict | None = None):
        self.dim = embedding_length
        self.encoder = make_encoder(encoder, encoder_args, embedding_length)
        # A model-backed encoder shared by many heads: the stacked pass encodes the texts
        # of all its heads in one call (ph.batching) instead of one by one.
        self.shared_text_encoder = self.encoder if getattr(self.encoder, "shared", False) else None
        self.expected = (f"a string, a list of strings, a vector of {embedding_length} numbers, "
                         "or a list of such vectors")

    def process(self, data: Any) -> torch.Tensor:
        if isinstance(data, str):
            data = [data]
        if _is_sequence(data) and data and all(isinstance(v, str) for v in data):
            return self.encoder.encode(data).unsqueeze(1)
        if _is_sequence(data) and not data:
            raise BadInputError(f"data: got an empty list; expected {self.expected}")
        return self.vectors(data).unsqueeze(1)


@PREPROCESSORS.register("V2VPreProcessor")
class V2VPreProcessor(VectorPreProcessor):
    """A vector or a list of vectors -> [batch, input_dim] for PHVector2Vector."""

    def __init__(self, input_dim: int = 768):
        self.dim = input_dim
        self.expected = f"a vector of {input_dim} numbers or a list of such vectors"

    def process(self, data: Any) -> torch.Tensor:
        return self.vectors(data)


@POSTPROCESSORS.register("PersonalizedHeadPostProcessor", "SnipsPostProcessor")
class PersonalizedHeadPostProcessor:
    """Log-probabilities -> the predicted class per input.

    to_list: plain Python values (Jaseci cannot carry tensors).
    return_label: the label name from the training data instead of the class index.
    return_scores: `{"prediction": ..., "scores": [probability per class]}` per input.
    """

    def __init__(self, to_list: bool = True, return_label: bool = False,
                 return_scores: bool = False):
        self.to_list, self.return_label, self.return_scores = to_list, return_label, return_scores
        self.labels: list | None = None  # set by the engine from the head's label map

    def process(self, output: torch.Tensor) -> Any:
        classes = output.argmax(dim=-1)
        if not (self.to_list or self.return_label or self.return_scores):
            return classes
        preds: list = classes.tolist()
        if self.return_label and self.labels:
            preds = [self.labels[i] if i < len(self.labels) else i for i in preds]
        if self.return_scores:
            scores = output.float().exp().tolist()
            return [{"prediction": p, "scores": s} for p, s in zip(preds, scores)]
        return preds


@POSTPROCESSORS.register("V2VPostProcessor")
class V2VPostProcessor:
    """Output vectors -> lists of floats."""

    def __init__(self, to_list: bool = True):
        self.to_list = to_list

    def process(self, output: torch.Tensor) -> Any:
        return output.float().tolist() if self.to_list else output


def _is_number(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _flat_vector(value: Any) -> list | None:
    """A vector from `[f, ...]` or `[[f, ...]]` (one-token sequences, as in pandas data)."""
    if _is_sequence(value) and len(value) == 1 and _is_sequence(value[0]):
        value = value[0]
    if _is_sequence(value) and value and all(_is_number(v) for v in value):
        return [float(v) for v in value]
    return None


def _describe(data: Any) -> str:
    if _is_sequence(data):
        kinds = sorted({type(v).__name__ for v in data})
        return f"a list of {len(data)} items of type {', '.join(kinds) or 'nothing'}"
    return f"a value of type {type(data).__name__}"
