"""Personal add-ins: a user's head as a small trainable delta on a frozen shared head.

The parent's weights stay frozen and shared; a user owns only the add-in:

  lora     y = W x + b + (alpha / rank) * B (A x)       nn.Linear targets (B starts at 0)
  adapter  y = y + U act(D y + d) + u                    after nn.Linear or encoder-layer
                                                         targets (U, u start at 0)
  bias     y = W x + b + delta                           nn.Linear targets (delta starts at 0)

With `own_output: true` the user also owns a copy of the output layer, so labels the
parent never saw can be learnt with full capacity. Every add-in starts as the identity,
so an untrained add-in answers exactly as its parent.

Targets are module paths, matched as PEFT's `target_modules` are: a name matches a
module whose path is the name or ends with "." + name ("linear1" is every layer's).

Why not PEFT: its LoRA wraps module calls, but nn.MultiheadAttention never calls its
out_proj (it reads the weight) and TransformerEncoderLayer's eval fast path reads
linear1/linear2 weights directly, so a wrapped layer is skipped silently there; and its
mixed-adapter batches run one sub-batch per adapter, where ph needs one gathered product
per target for 1,000 users in a pass. Here the built-in models call a `hook` at each
named layer of their `stacked_forward` (the same code the stacked pass runs), and other
models get forward hooks on their nn.Linear modules.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, did_you_mean

KINDS = ("lora", "adapter", "bias")
DEFAULT_RANK = 4
ACTIVATIONS = {"relu": torch.relu, "gelu": F.gelu, "tanh": torch.tanh}
Hook = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AddinSpec:
    """A normalized add-in: kind, rank, scale, resolved target paths, owned modules."""

    kind: str
    rank: int
    alpha: float
    targets: tuple[str, ...]
    own: tuple[str, ...] = ()
    activation: str = "relu"
    dims: tuple[tuple[int, int], ...] = field(default=(), compare=False)  # (in, out) per target

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        """The record's form: `{type, args}` with every default filled in."""
        args = {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets),
                "own_output": bool(self.own)}
        if self.kind == "adapter":
            args["activation"] = self.activation
        return {"type": self.kind, "args": args}

    def layout(self) -> str:
        """What decides the shapes of the add-in's tensors (its bank key)."""
        return repr((self.kind, self.rank, self.targets, self.own, self.activation, self.dims))


def parse_addin(value: Any, model: nn.Module, key: str = "addin") -> AddinSpec:
    """The `addin` argument of create_head ("lora", true, or {type, args}) checked against
    the parent's model (built on the meta device is fine). Every problem is reported at
    once, naming the key and what is accepted.

    Raises:
        ConfigError: unknown kind or argument, a target that names no module or a module
            of the wrong kind, a rank < 1 or larger than a target layer.
    """
    if value is True:
        value = {"type": "lora"}
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: give a kind ({', '.join(KINDS)}) or {{type, args}}, got {value!r:.60}")
    problems = [f"{key}.{k}: unknown key{did_you_mean(k, ['type', 'args'])}; an add-in is "
                "{type, args}" for k in value if k not in ("type", "args")]
    kind = str(value.get("type", "lora")).lower()
    if kind not in KINDS:
        raise ConfigError(problems + [f"{key}.type: '{value.get('type')}' is not an add-in kind"
                                      f"{did_you_mean(kind, KINDS)}; use one of {', '.join(KINDS)}"])
    args = dict(value.get("args") or {})
    accepted = ["rank", "alpha", "targets", "own_output"] + (["activation"] if kind == "adapter" else [])
    problems += [f"{key}.args.{k}: unknown argument{did_you_mean(k, accepted)}; {kind} takes "
                 f"{', '.join(accepted)}" for k in args if k not in accepted]
    rank = args.get("rank", DEFAULT_RANK if kind != "bias" else 1)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        problems.append(f"{key}.args.rank: must be a whole number >= 1, got {rank!r}")
        rank = 1
    alpha = args.get("alpha", 2.0 * rank)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) \
            or alpha <= 0:
        problems.append(f"{key}.args.alpha: must be a number > 0, got {alpha!r}")
        alpha = 1.0
    activation = args.get("activation", "relu")
    if activation not in ACTIVATIONS:
        problems.append(f"{key}.args.activation: '{activation}' is not one of "
                        f"{', '.join(ACTIVATIONS)}{did_you_mean(str(activation), ACTIVATIONS)}")
    own_output = args.get("own_output", False)
    if not isinstance(own_output, bool):
        problems.append(f"{key}.args.own_output: must be true or false, got {own_output!r}")
        own_output = False
    hidden = unhookable_linears(model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in hidden}
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, nn.TransformerEncoderLayer)}
    output = list(linears)[-1:] if own_output else []
    allowed = {**linears, **blocks} if kind == "adapter" else linears
    names = args.get("targets", default_targets(kind, linears, blocks, output))
    if isinstance(names, str):
        names = [names]
    targets, dims = [], []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        problems.append(f"{key}.args.targets: must be a list of module paths, got {names!r:.80}")
        names = []
    short = sorted({n.rsplit(".", 1)[-1] for n in allowed} | set(allowed))
    modules = dict(model.named_modules())
    for name in names:
        found = [n for n in allowed if n == name or n.endswith("." + name)]
        wrong = [n for n in modules if n and (n == name or n.endswith("." + name)) and n not in allowed]
        if not found and any(w in hidden for w in wrong):
            problems.append(f"{key}.args.targets: '{name}' sits inside {hidden[wrong[0]]}, which "
                            "computes it without calling the module, so no add-in can reach it in "
                            "a model without stacked_forward; target other nn.Linear layers, or the "
                            "encoder layer itself with an adapter")
        elif not found and wrong:
            problems.append(f"{key}.args.targets: '{name}' is a {type(modules[wrong[0]]).__name__}; "
                            f"{kind} targets nn.Linear{' or encoder-layer' if kind == 'adapter' else ''} "
                            f"modules: {', '.join(list(allowed)[:12])}")
        elif not found:
            problems.append(f"{key}.args.targets: '{name}' names no module of "
                            f"{type(model).__name__}{did_you_mean(name, short)}; its "
                            f"targets are {', '.join(list(allowed)[:12])}")
        for n in found:
            if n in targets:
                continue
            if n in output:
                problems.append(f"{key}.args.targets: '{n}' is the output layer, which own_output "
                                "gives the user whole; leave it out of targets")
                continue
            d_in, d_out = _dims(allowed[n])
            largest = d_out if kind == "adapter" else min(d_in, d_out)
            if kind != "bias" and rank > largest:
                problems.append(f"{key}.args.rank: {rank} is larger than target '{n}' allows "
                                f"({largest}); use a rank from 1 to {largest}")
            targets.append(n)
            dims.append((d_in, d_out))
    if problems:
        raise ConfigError(problems)
    return AddinSpec(kind, rank, float(alpha), tuple(targets), tuple(output), activation,
                     tuple(dims) + tuple(_dims(linears[n]) for n in output))


def unhookable_linears(model: nn.Module) -> dict[str, str]:
    """Linear layers that a forward hook cannot reach, path -> why: in a model without
    stacked_forward, MultiheadAttention reads its out_proj's weight directly and an encoder
    layer's eval fast path bypasses its linear1 and linear2."""
    if getattr(type(model), "addin_hooks", False):
        return {}
    hidden = {}
    for outer, module in model.named_modules():
        if isinstance(module, (nn.MultiheadAttention, nn.TransformerEncoderLayer)):
            for inner, sub in module.named_modules():
                if isinstance(sub, nn.Linear):
                    hidden[f"{outer}.{inner}" if outer else inner] = f"a {type(module).__name__}"
    return hidden


def default_targets(kind: str, linears: dict, blocks: dict, output: list) -> list[str]:
    """Every linear layer (lora, bias), or each encoder layer's output, else every hidden
    linear layer's (adapter); never an owned output layer."""
    if kind == "adapter":
        return list(blocks) or [n for n in linears if n not in output][:-1] or list(linears)[:1]
    return [n for n in linears if n not in output]


def _dims(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    width = module.linear2.out_features  # a TransformerEncoderLayer: d_model in and out
    return width, width


# --- an add-in's tensors ---------------------------------------------------------------------

def addin_shapes(spec: AddinSpec) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of one user's add-in (names: "<target>:<part>")."""
    shapes: dict[str, tuple[int, ...]] = {}
    r = spec.rank
    for name, (d_in, d_out) in zip(spec.targets, spec.dims):
        if spec.kind == "lora":
            shapes[f"{name}:A"], shapes[f"{name}:B"] = (r, d_in), (d_out, r)
        elif spec.kind == "adapter":
            shapes.update({f"{name}:down": (r, d_out), f"{name}:down_bias": (r,),
                           f"{name}:up": (d_out, r), f"{name}:up_bias": (d_out,)})
        else:
            shapes[f"{name}:delta"] = (d_out,)
    for name, (d_in, d_out) in zip(spec.own, spec.dims[len(spec.targets):]):
        shapes[f"{name}:weight"], shapes[f"{name}:bias"] = (d_out, d_in), (d_out,)
    return shapes


def initial_addin(spec: AddinSpec, base: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A fresh add-in that leaves the parent's answers unchanged: the parts that scale the
    output start at zero, the others random (seeded), an owned layer as the parent's."""
    generator = torch.Generator().manual_seed(seed)
    params = dict(base.named_parameters())
    state = {}
    for name, shape in addin_shapes(spec).items():
        target, part = name.split(":")
        if part in ("A", "down"):
            bound = 1 / math.sqrt(shape[1])  # kaiming-uniform(a=sqrt(5)), as nn.Linear and PEFT
            state[name] = (torch.rand(shape, generator=generator) * 2 - 1) * bound
        elif part in ("weight", "bias"):
            state[name] = params[f"{target}.{part}"].detach().to("cpu", torch.float32).clone()
        else:
            state[name] = torch.zeros(shape)
    return state


def addin_bytes(spec: AddinSpec) -> int:
    """Bytes of one user's add-in in float32."""
    return 4 * sum(math.prod(s) for s in addin_shapes(spec).values())


@dataclass(frozen=True)
class UserRuns:
    """A batch laid out user after user: `counts[u]` rows of user u, in user order (a
    lockstep training round). Each user's rows are multiplied by its own add-in, not
    stacked, with no per-row copy of the add-in's matrices: the rows are padded to
    [users, width] (a view when every user has `width` rows) for one batched product."""

    counts: tuple[int, ...]
    width: int
    spread: torch.Tensor | None  # padded position -> row (len(rows) for padding); None: uniform
    place: torch.Tensor | None   # row -> padded position

    @classmethod
    def of(cls, counts: list[int], device: torch.device | str = "cpu") -> "UserRuns":
        width = max(counts)
        if all(c == width for c in counts):
            return cls(tuple(counts), width, None, None)
        total = sum(counts)
        spread = torch.full((len(counts), width), total, dtype=torch.long)
        place, start = [], 0
        for user, count in enumerate(counts):
            spread[user, :count] = torch.arange(start, start + count)
            place += range(user * width, user * width + count)
            start += count
        return cls(tuple(counts), width, spread.reshape(-1).to(device),
                   torch.tensor(place, dtype=torch.long, device=device))

    @property
    def users(self) -> torch.Tensor:
        """The user of each row."""
        return torch.repeat_interleave(torch.arange(len(self.counts)), torch.tensor(self.counts))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, L, f] -> [users, width * L, f]."""
        if self.spread is not None:
            x = torch.cat([x, x.new_zeros((1,) + x.shape[1:])])[self.spread]
        return x.reshape(len(self.counts), -1, x.shape[-1])

    def unpad(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """[users, width * L, f] -> [rows, L, f]."""
        x = x.reshape(-1, length, x.shape[-1])
        return x if self.place is None else x[self.place]


def apply_addin(spec: AddinSpec, tensors: Mapping[str, torch.Tensor],
                rows: torch.Tensor | UserRuns | None, name: str, x: torch.Tensor,
                y: torch.Tensor) -> torch.Tensor:
    """Layer `name`'s output `y` (from input `x`; both [N, L, features]) with the add-in.

    tensors: one user's add-in (`rows` None), or many users' stacked along a first
        dimension: row i of the batch uses user `rows[i]` (gathered by user index, one
        batched matrix product per target: Punica's BGMV, on the CPU too), or `rows` is
        UserRuns (each user's rows in a run of their own: no gather).
    """
    if isinstance(rows, UserRuns):
        return _apply_to_runs(spec, tensors, rows, name, x, y)
    if name in spec.own:
        w, b = tensors[f"{name}:weight"], tensors[f"{name}:bias"]
        if rows is None:
            return F.linear(x, w, b)
        return torch.baddbmm(b[rows].unsqueeze(1), x, w[rows].transpose(1, 2))
    if name not in spec.targets:
        return y
    get = (lambda part: tensors[f"{name}:{part}"]) if rows is None else \
        (lambda part: tensors[f"{name}:{part}"][rows])
    if spec.kind == "bias":
        delta = get("delta")
        return y + (delta if rows is None else delta.unsqueeze(1))
    if spec.kind == "lora":
        return y + _lora(spec, get("A"), get("B"), x)
    down_bias, up_bias = get("down_bias"), get("up_bias")
    if rows is not None:
        down_bias, up_bias = down_bias.unsqueeze(1), up_bias.unsqueeze(1)
    return y + _adapter(spec, get("down"), down_bias, get("up"), up_bias, y)


def _lora(spec: AddinSpec, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return spec.scale * ((x @ a.transpose(-1, -2)) @ b.transpose(-1, -2))


def _adapter(spec: AddinSpec, down, down_bias, up, up_bias, y: torch.Tensor) -> torch.Tensor:
    hidden = ACTIVATIONS[spec.activation](y @ down.transpose(-1, -2) + down_bias)
    return spec.scale * (hidden @ up.transpose(-1, -2) + up_bias)


def _apply_to_runs(spec: AddinSpec, tensors: Mapping[str, torch.Tensor], runs: UserRuns,
                   name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    get = lambda part: tensors[f"{name}:{part}"]  # noqa: E731  ([users, ...], no gather)
    length = y.shape[1]
    if name in spec.own:
        w, b = get("weight"), get("bias")
        return runs.unpad(torch.baddbmm(b.unsqueeze(1), runs.pad(x), w.transpose(1, 2)), length)
    if name not in spec.targets:
        return y
    if spec.kind == "bias":
        return y + get("delta")[runs.users.to(y.device)].unsqueeze(1)
    if spec.kind == "lora":
        return y + runs.unpad(_lora(spec, get("A"), get("B"), runs.pad(x)), length)
    delta = _adapter(spec, get("down"), get("down_bias").unsqueeze(1), get("up"),
                     get("up_bias").unsqueeze(1), runs.pad(y))
    return y + runs.unpad(delta, length)


def merged_state(spec: AddinSpec, base_state: Mapping[str, torch.Tensor],
                 addin: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parent's state dict with the add-in folded in: loads into the parent's
    architecture with plain torch. LoRA and bias fold into the weights exactly; an
    adapter adds a nonlinearity, which no weight of the parent can hold.

    Raises:
        ConfigError: an adapter add-in.
    """
    if spec.kind == "adapter":
        raise ConfigError("an adapter add-in cannot be merged into its parent's weights: it adds "
                          "a nonlinear layer after its targets. Export works for lora and bias "
                          "add-ins; serve an adapter with ph")
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in base_state.items()}
    for name in spec.targets:
        if spec.kind == "lora":
            state[f"{name}.weight"] += spec.scale * (addin[f"{name}:B"] @ addin[f"{name}:A"])
        else:
            state[f"{name}.bias"] += addin[f"{name}:delta"]
    for name in spec.own:
        state[f"{name}.weight"] = addin[f"{name}:weight"].clone()
        state[f"{name}.bias"] = addin[f"{name}:bias"].clone()
    return state


def joint_addin_forward(models: list["AddinModel"]):
    """`joint(users, x, counts)` for a lockstep training (ph.training.together): the
    users' add-ins stacked over one pass of their shared parent, each user's run of
    rows multiplied by its own add-in (UserRuns)."""
    base, spec, names = models[0].base, models[0].spec, models[0].names

    def joint(users: list[int], x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        stacked = {n: torch.stack([models[i].deltas[k] for i in users])
                   for k, n in enumerate(names)}
        runs = UserRuns.of(counts, x.device)
        return base(x, lambda name, x_in, y: apply_addin(spec, stacked, runs, name, x_in, y))
    return joint


# --- the frozen parent and a trainable add-in over it -----------------------------------------

_active = threading.local()  # the hook of the forward pass running in this thread


class FrozenBase(nn.Module):
    """A parent's model, frozen and in eval mode, run with an add-in hook.

    Built-in models run their `stacked_forward` (one head, `hook` at each named layer);
    other models run as modules, with forward hooks on their linear layers and encoder
    layers that call the hook of the pass running in this thread."""

    def __init__(self, model: nn.Module, args: Mapping):
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.args = dict(args)
        self.stacked = getattr(type(model), "stacked_forward", None) \
            if getattr(type(model), "addin_hooks", False) else None
        if self.stacked is None:
            for name, module in model.named_modules():
                if isinstance(module, (nn.Linear, nn.TransformerEncoderLayer)):
                    module.register_forward_hook(_module_hook(name))

    def train(self, mode: bool = True) -> "FrozenBase":
        return super().train(False)  # the parent runs as it serves: no dropout

    def forward(self, x: torch.Tensor, hook: Hook) -> torch.Tensor:
        if self.stacked is not None:
            params = {n: p.unsqueeze(0) for n, p in self.model.named_parameters()}
            return self.stacked(params, x.unsqueeze(0), self.args, hook=hook).squeeze(0)
        previous = getattr(_active, "hook", None)
        _active.hook = hook
        try:
            return self.model(x)
        finally:
            _active.hook = previous


def _module_hook(name: str):
    def hook(module, inputs, output):
        active = getattr(_active, "hook", None)
        if active is None or not isinstance(output, torch.Tensor) or not inputs:
            return None
        x = inputs[0]
        rows = x.shape[0] if x.dim() > 1 else 1
        y = active(name, x.reshape(rows, -1, x.shape[-1]), output.reshape(rows, -1, output.shape[-1]))
        return y.reshape(output.shape[:-1] + y.shape[-1:])
    return hook


class AddinModel(nn.Module):
    """One user's add-in over a frozen parent: what training optimises. Its parameters and
    its state dict are the add-in's alone (the parent is not saved with it)."""

    def __init__(self, base: FrozenBase, spec: AddinSpec, state: Mapping[str, torch.Tensor]):
        super().__init__()
        self.base = base
        self.spec = spec
        self.names = list(addin_shapes(spec))
        self.deltas = nn.ParameterList(nn.Parameter(state[n].detach().clone().float())
                                       for n in self.names)

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.deltas))

    def __deepcopy__(self, memo: dict) -> "AddinModel":
        """A copy with its own add-in and the same frozen parent: a training copies its
        model, and 100 users' runs must not hold 100 copies of the parent."""
        copied = AddinModel(self.base, self.spec, self.tensors())
        copied.train(self.training)
        return copied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = self.tensors()
        return self.base(x, lambda name, x_in, y: apply_addin(self.spec, tensors, None, name, x_in, y))

    def state_dict(self, *args, **kwargs) -> dict:  # noqa: D102  (the add-in alone)
        return {n: p.detach().clone() for n, p in zip(self.names, self.deltas)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        missing = sorted(set(self.names) - set(state))
        unexpected = sorted(set(state) - set(self.names))
        if strict and (missing or unexpected):
            raise RuntimeError(f"add-in weights do not fit: missing {missing[:5]}, unexpected "
                               f"{unexpected[:5]}")
        with torch.no_grad():
            for n, p in zip(self.names, self.deltas):
                if n in state:
                    p.copy_(state[n])
        return nn.modules.module._IncompatibleKeys(missing, unexpected)

    def train(self, mode: bool = True) -> "AddinModel":
        super().train(mode)
        self.base.train(False)
        return self
