"""Losses and metrics, found by name from the config's `loss` and `metrics` keys."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config.components import LOSSES, METRICS

# torch.nn.functional losses by name, enumerated here once (never looked up from a config).
_F_LOSSES = sorted(n for n in dir(F) if n.endswith("_loss") and not n.startswith("_"))
for _name in _F_LOSSES:
    LOSSES.add(_name, getattr(F, _name))
for _name in ("cross_entropy", "binary_cross_entropy", "binary_cross_entropy_with_logits",
              "kl_div"):
    LOSSES.add(_name, getattr(F, _name))
    if f"{_name}_loss" not in LOSSES:
        LOSSES.add(f"{_name}_loss", getattr(F, _name))


@METRICS.register("accuracy")
def accuracy(output: torch.Tensor, target: torch.Tensor) -> float:
    """Share of inputs whose highest-scoring class is the target."""
    with torch.no_grad():
        return (output.argmax(dim=-1) == target).float().mean().item()


@METRICS.register("top_k_acc")
def top_k_acc(output: torch.Tensor, target: torch.Tensor, k: int = 3) -> float:
    """Share of inputs whose target is among the k highest-scoring classes."""
    with torch.no_grad():
        top = output.topk(min(k, output.shape[-1]), dim=-1).indices
        return (top == target.unsqueeze(-1)).any(dim=-1).float().mean().item()


@METRICS.register("mse")
def mse(output: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error (regression heads)."""
    with torch.no_grad():
        return F.mse_loss(output, target.to(output.dtype)).item()


@METRICS.register("mae")
def mae(output: torch.Tensor, target: torch.Tensor) -> float:
    """Mean absolute error (regression heads)."""
    with torch.no_grad():
        return F.l1_loss(output, target.to(output.dtype)).item()
