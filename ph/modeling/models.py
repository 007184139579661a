"""Built-in head models.

Each model may define `stacked_forward(params, x, args)`: the same computation for H
heads of one architecture at once, with every parameter stacked along a new first
dimension. `ph.batching` uses it to answer many users' heads in one pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.components import MODELS


@MODELS.register("PersonalizedHead", "PHClassifier")
class PersonalizedHead(nn.Module):
    """Transformer-encoder head over sentence embeddings; returns log-probabilities.

    Input: [batch, seq, embedding_length] (a sentence embedding is a sequence of one)
    or [batch, embedding_length]. `batch_first` is kept for seed configs: inputs are
    always batch-first.
    """

    def __init__(self, embedding_length: int = 768, n_classes: int = 10, ph_ff_dim: int = 512,
                 ph_nhead: int = 8, ph_nlayers: int = 1, batch_first: bool = True,
                 dropout: float = 0.1):
        super().__init__()
        for name, value in (("embedding_length", embedding_length), ("n_classes", n_classes),
                            ("ph_ff_dim", ph_ff_dim), ("ph_nhead", ph_nhead),
                            ("ph_nlayers", ph_nlayers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if embedding_length % ph_nhead:
            raise ValueError(f"embedding_length ({embedding_length}) must be divisible by "
                             f"ph_nhead ({ph_nhead})")
        self.embedding_length, self.n_classes, self.nhead = embedding_length, n_classes, ph_nhead
        layer = nn.TransformerEncoderLayer(embedding_length, ph_nhead, ph_ff_dim,
                                           dropout=dropout, batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, ph_nlayers,
                                                         enable_nested_tensor=False)
        self.fc = nn.Linear(embedding_length, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        x = self.transformer_encoder(x)
        return F.log_softmax(self.fc(x.mean(dim=1)), dim=-1)

    @staticmethod
    def stacked_derived(p: dict[str, torch.Tensor], args: dict) -> dict[str, torch.Tensor]:
        """Per-head weights derived once when a head enters a bank. For a sequence of one,
        attention is out_proj(V(x)), so W_o @ W_v is one matrix: the stacked pass reads
        768x768 weights there instead of twice that."""
        derived = {}
        emb = p["fc.weight"].shape[-1]
        for i in range(args.get("ph_nlayers", 1)):
            pre = f"transformer_encoder.layers.{i}.self_attn."
            w_v, b_v = p[pre + "in_proj_weight"][:, 2 * emb:], p[pre + "in_proj_bias"][:, 2 * emb:]
            w_o, b_o = p[pre + "out_proj.weight"], p[pre + "out_proj.bias"]
            derived[pre + "fused_vo.weight"] = torch.bmm(w_o, w_v)
            derived[pre + "fused_vo.bias"] = torch.baddbmm(b_o.unsqueeze(2), w_o, b_v.unsqueeze(2)).squeeze(2)
        return derived

    addin_hooks = True  # stacked_forward calls `hook` at each named layer (ph.modeling.addins)

    @staticmethod
    def stacked_forward(p: dict[str, torch.Tensor], x: torch.Tensor, args: dict,
                        hook=None) -> torch.Tensor:
        """x: [H, B, L, E] -> log-probabilities [H, B, n_classes] (eval mode, ReLU, post-norm).

        `p` holds the stacked parameters and, optionally, `stacked_derived` weights.
        `hook(name, input, output)`, if given, may change the output of each linear layer
        and encoder layer, named by module path (an add-in's corrections)."""
        if x.dim() == 3:
            x = x.unsqueeze(2)
        heads, batch, seq, emb = x.shape
        nhead = args.get("ph_nhead", 8)
        at = _hooked(hook, heads * batch)
        h = x.reshape(heads, batch * seq, emb)
        for i in range(args.get("ph_nlayers", 1)):
            pre = f"transformer_encoder.layers.{i}."
            w_in, b_in = p[pre + "self_attn.in_proj_weight"], p[pre + "self_attn.in_proj_bias"]
            fused = pre + "self_attn.fused_vo.weight"
            if seq == 1 and fused in p and hook is None:  # attention is out_proj(V(x)), fused
                attn = _linear(h, p[fused], p[pre + "self_attn.fused_vo.bias"])
            else:
                if seq == 1:  # softmax over a single key is 1: attention returns V, skip Q and K
                    values = _linear(h, w_in[:, 2 * emb:], b_in[:, 2 * emb:])
                else:
                    qkv = _linear(h, w_in, b_in).view(heads * batch, seq, 3, nhead, emb // nhead)
                    q, k, v = qkv.permute(2, 0, 3, 1, 4)
                    values = F.scaled_dot_product_attention(q, k, v)
                    values = values.permute(0, 2, 1, 3).reshape(heads, batch * seq, emb)
                attn = at(pre + "self_attn.out_proj", values, _linear(
                    values, p[pre + "self_attn.out_proj.weight"], p[pre + "self_attn.out_proj.bias"]))
            block_in = h
            h = _layer_norm(h + attn, p[pre + "norm1.weight"], p[pre + "norm1.bias"])
            ff = at(pre + "linear1", h, _linear(h, p[pre + "linear1.weight"], p[pre + "linear1.bias"]))
            ff = ff.relu_()
            ff = at(pre + "linear2", ff, _linear(ff, p[pre + "linear2.weight"], p[pre + "linear2.bias"]))
            h = _layer_norm(h + ff, p[pre + "norm2.weight"], p[pre + "norm2.bias"])
            h = at(pre[:-1], block_in, h)
        pooled = h.view(heads, batch, seq, emb).mean(dim=2)
        return F.log_softmax(at("fc", pooled, _linear(pooled, p["fc.weight"], p["fc.bias"])), dim=-1)


@MODELS.register("PHVector2Vector")
class PHVector2Vector(nn.Module):
    """MLP mapping one vector to another (e.g. an embedding into a user's own space)."""

    def __init__(self, input_dim: int = 768, output_dim: int = 768, hidden_dim: int = 512,
                 n_layers: int = 1, dropout: float = 0.1):
        super().__init__()
        for name, value in (("input_dim", input_dim), ("output_dim", output_dim),
                            ("hidden_dim", hidden_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not isinstance(n_layers, int) or n_layers < 0:
            raise ValueError(f"n_layers must be a whole number >= 0, got {n_layers!r}")
        dims = [input_dim] + [hidden_dim] * n_layers + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.dropout(torch.relu(layer(x)))
        return self.layers[-1](x)

    addin_hooks = True  # see PersonalizedHead.stacked_forward

    @staticmethod
    def stacked_forward(p: dict[str, torch.Tensor], x: torch.Tensor, args: dict,
                        hook=None) -> torch.Tensor:
        """x: [H, B, input_dim] -> [H, B, output_dim]; `hook` as PersonalizedHead's."""
        count = args.get("n_layers", 1) + 1
        at = _hooked(hook, x.shape[0] * x.shape[1])
        for i in range(count):
            x = at(f"layers.{i}", x, _linear(x, p[f"layers.{i}.weight"], p[f"layers.{i}.bias"]))
            if i < count - 1:
                x = x.relu_()
        return x


def _hooked(hook, rows: int):
    """`at(name, input, output)`: the output passed through `hook` with both seen as
    [rows, L, features] (rows: heads x batch), or unchanged without a hook."""
    if hook is None:
        return lambda name, x, y: y

    def at(name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = hook(name, x.reshape(rows, -1, x.shape[-1]), y.reshape(rows, -1, y.shape[-1]))
        return out.reshape(y.shape[:-1] + out.shape[-1:])
    return at


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-head linear layer: x [H, N, in], weight [H, out, in], bias [H, out]."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(bias.unsqueeze(1), F.layer_norm(x, x.shape[-1:]), weight.unsqueeze(1))
