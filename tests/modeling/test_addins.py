"""Personal add-ins (lora, adapter, bias; own_output or not) as modeling: an untrained add-in
is its parent, a bank of many users answers as each user's model alone, lora and bias fold
into the parent's weights, parse_addin reports every problem at once, training touches
only the add-in, and a bank grows and reuses slots. Each kind runs on PersonalizedHead and
PHVector2Vector (their stacked_forward calls the add-in hook) and on a user-style module
(forward hooks on its nn.Linear layers)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ph.errors import ConfigError
from ph.modeling.addin_bank import MIN_CAPACITY, AddinBank
from ph.modeling.addins import (KINDS, AddinModel, FrozenBase, addin_bytes, addin_shapes,
                                initial_addin, merged_state, parse_addin)
from ph.modeling.models import PersonalizedHead, PHVector2Vector

ATOL = 1e-5


class UserNet(nn.Module):
    """A user's own model: nn.Linear layers, a LayerNorm and dropout, no stacked_forward
    (add-ins reach it through forward hooks)."""

    def __init__(self, n_in: int = 10, hidden: int = 12, n_out: int = 5):
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.relu(self.inp(x)))
        h = self.drop(torch.relu(self.mid(h)))
        return F.log_softmax(self.out(h), dim=-1)


# name -> (build a model, its Model.args for stacked_forward, the shape of n input rows)
MODELS = {
    "PersonalizedHead": (lambda: PersonalizedHead(16, 5, 12, 2, 2, dropout=0.1),
                         {"ph_nhead": 2, "ph_nlayers": 2}, lambda n: (n, 3, 16)),
    "PersonalizedHead_seq1": (lambda: PersonalizedHead(16, 5, 12, 2, 1, dropout=0.1),
                              {"ph_nhead": 2, "ph_nlayers": 1}, lambda n: (n, 16)),
    "PHVector2Vector": (lambda: PHVector2Vector(10, 6, 12, 2, dropout=0.1),
                        {"n_layers": 2}, lambda n: (n, 10)),
    "UserNet": (UserNet, {}, lambda n: (n, 10)),
}
CASES = [(m, k, own) for m in MODELS for k in KINDS for own in (False, True)]
CASE_IDS = [f"{m}-{k}-{'own' if own else 'shared'}" for m, k, own in CASES]


def parent_of(name: str, seed: int = 0) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    build, args, _ = MODELS[name]
    return build().eval(), args


def frozen(name: str, seed: int = 0) -> FrozenBase:
    """A FrozenBase over its own copy of the parent (FrozenBase hooks the module it gets)."""
    model, args = parent_of(name, seed)
    return FrozenBase(model, args)


def inputs(name: str, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(MODELS[name][2](n), generator=generator)


def random_addin(spec, seed: int, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """Add-in tensors far from the identity (every part nonzero)."""
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=generator) * scale for n, s in addin_shapes(spec).items()}


def spec_of(name: str, kind: str, own: bool):
    model, _ = parent_of(name)
    return parse_addin({"type": kind, "args": {"own_output": own}}, model)


# --- (a) an untrained add-in is its parent ------------------------------------------------------

@pytest.mark.parametrize("name, kind, own", CASES, ids=CASE_IDS)
def test_an_initial_addin_answers_exactly_as_its_parent(name, kind, own):
    parent, _ = parent_of(name)
    spec = spec_of(name, kind, own)
    assert spec.kind == kind and bool(spec.own) == own and spec.targets
    base = frozen(name)
    state = initial_addin(spec, base.model, seed=3)
    assert set(state) == set(addin_shapes(spec))
    model = AddinModel(base, spec, state)
    x = inputs(name, 7, seed=1)
    with torch.no_grad():
        plain = parent(x)
        ours = model(x)
        unhooked = base(x, lambda _name, _x, y: y)  # the same pass with nothing added
    assert ours.shape == plain.shape
    assert (ours - plain).abs().max() <= ATOL
    assert torch.equal(ours.argmax(-1), plain.argmax(-1))
    if not own:  # the corrections are exact zeros: bit for bit the parent's pass
        assert torch.equal(ours, unhooked)
    # the parts that scale the output start at zero, the others do not (they would never train)
    for part_name, tensor in state.items():
        part = part_name.split(":")[1]
        if part in ("B", "up", "up_bias", "delta"):
            assert not tensor.any(), part_name
        elif part in ("A", "down"):
            assert tensor.abs().sum() > 0, part_name
    if own:  # an owned output layer starts as the parent's
        out = spec.own[0]
        assert torch.equal(state[f"{out}:weight"], parent.get_submodule(out).weight)


# --- (b) a bank of many users answers as each user alone -----------------------------------------

@pytest.mark.parametrize("name, kind, own", CASES, ids=CASE_IDS)
def test_a_bank_pass_over_many_users_equals_each_users_model_alone(name, kind, own):
    spec = spec_of(name, kind, own)
    base = frozen(name)
    bank = AddinBank(base, spec, torch.device("cpu"), torch.float32)
    users = [random_addin(spec, seed=10 + u) for u in range(5)]
    slots = [bank.attach(state) for state in users]
    order = [0, 3, 0, 1, 4, 2, 3, 3, 0]  # repeated users, not in slot order
    batches = [inputs(name, 1 + i % 3, seed=100 + i) for i in range(len(order))]
    with bank.reading():
        together = bank.forward([slots[u] for u in order], batches)
    assert [len(t) for t in together] == [len(b) for b in batches]
    differs = False
    for user, x, answer in zip(order, batches, together):
        alone = AddinModel(base, spec, users[user])
        with torch.no_grad():
            own_answer = alone(x)
            parent_answer = base(x, lambda _n, _x, y: y)
        assert answer.dtype == torch.float32
        assert (answer - own_answer).abs().max() <= ATOL, user
        differs |= (own_answer - parent_answer).abs().max().item() > 1e-3
    assert differs  # the add-ins do change the answers (else equal-to-alone proves nothing)
    # one user's answers do not depend on who else is in the pass
    with bank.reading():
        single = bank.forward([slots[2]], [batches[5]])[0]
    assert (single - together[5]).abs().max() <= ATOL


@pytest.mark.parametrize("name", ["PersonalizedHead", "UserNet"])
def test_a_bank_pass_runs_the_parent_once_for_all_rows(name, monkeypatch):
    import ph.modeling.addin_bank as addin_bank
    spec = spec_of(name, "lora", False)
    bank = AddinBank(frozen(name), spec, torch.device("cpu"), torch.float32)
    slots = [bank.attach(random_addin(spec, seed=u)) for u in range(4)]
    calls = []
    apply = addin_bank.apply_addin

    def spy(spec_, tensors, rows, layer, x, y):
        calls.append((layer, tuple(rows.tolist())))
        return apply(spec_, tensors, rows, layer, x, y)
    monkeypatch.setattr(addin_bank, "apply_addin", spy)
    with bank.reading():
        bank.forward(slots[::-1], [inputs(name, 2, seed=i) for i in range(4)])
    at_first = [rows for layer, rows in calls if layer == spec.targets[0]]
    indices = [s.index for s in slots[::-1]]
    assert at_first == [tuple(i for i in indices for _ in range(2))]  # one gathered call, 8 rows


# --- (c) lora and bias fold into the parent's weights --------------------------------------------

@pytest.mark.parametrize("name, kind, own", [c for c in CASES if c[1] != "adapter"],
                         ids=[i for c, i in zip(CASES, CASE_IDS) if c[1] != "adapter"])
def test_merged_weights_load_into_a_plain_parent_and_answer_as_the_addin(name, kind, own):
    parent, _ = parent_of(name)
    spec = spec_of(name, kind, own)
    addin = random_addin(spec, seed=5)
    merged = merged_state(spec, parent.state_dict(), addin)
    assert set(merged) == set(parent.state_dict())
    plain, _ = parent_of(name, seed=99)  # other initial weights: all must come from the file
    plain.load_state_dict(merged)  # strict: exactly the parent architecture's keys
    plain.eval()
    model = AddinModel(frozen(name), spec, addin)
    x = inputs(name, 6, seed=2)
    with torch.no_grad():
        expected, got, before = model(x), plain(x), parent(x)
    assert (got - expected).abs().max() <= ATOL
    assert (before - expected).abs().max() > 1e-3  # the merge changed the answers
    folded = {f"{t}.{'weight' if kind == 'lora' else 'bias'}" for t in spec.targets}
    owned = {f"{o}.{p}" for o in spec.own for p in ("weight", "bias")}
    for key, value in parent.state_dict().items():
        if key in folded | owned:
            assert not torch.equal(merged[key], value), key
        else:
            assert torch.equal(merged[key], value), key


@pytest.mark.parametrize("name", list(MODELS))
def test_an_adapter_cannot_be_merged(name):
    parent, _ = parent_of(name)
    spec = spec_of(name, "adapter", False)
    with pytest.raises(ConfigError, match="adapter add-in cannot be merged"):
        merged_state(spec, parent.state_dict(), random_addin(spec, seed=0))


class AttentionNet(nn.Module):
    """A user model with nn.MultiheadAttention, no stacked_forward: MultiheadAttention reads
    its out_proj's weight without calling the module, so no forward hook runs there."""

    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(16, 2, 12, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.enc(x).mean(1))


def test_a_hooked_model_never_accepts_a_target_its_hooks_cannot_reach():
    torch.manual_seed(0)
    parent = AttentionNet().eval()
    for target in ("out_proj", "linear1"):
        with pytest.raises(ConfigError, match=f"'{target}' sits inside a .*no add-in can reach it"):
            parse_addin({"type": "lora", "args": {"targets": [target]}}, parent)
    spec = parse_addin("lora", parent)  # the default: the layers hooks reach
    assert spec.targets == ("fc",)
    base = FrozenBase(AttentionNet(), {})
    base.model.load_state_dict(parent.state_dict())
    addin = random_addin(spec, seed=1)
    x = torch.randn(4, 3, 16)
    with torch.no_grad():
        ours = AddinModel(base, spec, addin)(x)
    merged = AttentionNet().eval()
    merged.load_state_dict(merged_state(spec, parent.state_dict(), addin))
    with torch.no_grad():
        assert (ours - merged(x)).abs().max() <= ATOL


# --- (d) parse_addin names every problem ---------------------------------------------------------

def test_an_unknown_kind_says_what_was_meant():
    model, _ = parent_of("PersonalizedHead")
    with pytest.raises(ConfigError) as error:
        parse_addin({"type": "lorra", "arsg": {}}, model)
    text = str(error.value)
    assert "addin.type: 'lorra' is not an add-in kind (did you mean 'lora'?)" in text
    assert "use one of lora, adapter, bias" in text
    assert "addin.arsg: unknown key (did you mean 'args'?)" in text
    assert len(error.value.problems) == 2


@pytest.mark.parametrize("value", [7, ["lora"], None])
def test_an_addin_must_be_a_kind_or_a_mapping(value):
    model, _ = parent_of("PHVector2Vector")
    with pytest.raises(ConfigError, match="addin: give a kind"):
        parse_addin(value, model)


def test_every_problem_of_an_addin_is_reported_at_once():
    model, _ = parent_of("PersonalizedHead")
    value = {"type": "lora", "args": {"rnak": 2, "rank": 0, "alpha": -1,
                                      "targets": ["linear3", "norm1"]}}
    with pytest.raises(ConfigError) as error:
        parse_addin(value, model)
    problems = error.value.problems
    assert len(problems) == 5, problems
    text = str(error.value)
    assert "addin.args.rnak: unknown argument (did you mean 'rank'?)" in text
    assert "addin.args.rank: must be a whole number >= 1, got 0" in text
    assert "addin.args.alpha: must be a number > 0, got -1" in text
    assert "'linear3' names no module of PersonalizedHead (did you mean 'linear2'?)" in text
    assert "'norm1' is a LayerNorm; lora targets nn.Linear modules" in text
    assert "transformer_encoder.layers.0.linear1" in text  # what may be targeted


def test_a_user_models_layer_norm_and_missing_targets_are_refused():
    model = UserNet()
    with pytest.raises(ConfigError) as error:
        parse_addin({"type": "bias", "args": {"targets": ["norm", "midd", "drop"]}}, model)
    text = str(error.value)
    assert "'norm' is a LayerNorm; bias targets nn.Linear modules: inp, mid, out" in text
    assert "'midd' names no module of UserNet (did you mean 'mid'?)" in text
    assert "'drop' is a Dropout" in text
    assert len(error.value.problems) == 3


def test_a_rank_larger_than_a_layer_is_refused_naming_the_layer():
    model, _ = parent_of("PHVector2Vector")  # 10 -> 12 -> 12 -> 6
    with pytest.raises(ConfigError) as error:
        parse_addin({"type": "lora", "args": {"rank": 8}}, model)
    assert error.value.problems == [
        "addin.args.rank: 8 is larger than target 'layers.2' allows (6); use a rank from 1 to 6"]
    assert parse_addin({"type": "lora", "args": {"rank": 6}}, model).rank == 6
    # an adapter's rank is bounded by the width of its target's output
    with pytest.raises(ConfigError, match="13 is larger than target 'layers.0' allows \\(12\\)"):
        parse_addin({"type": "adapter", "args": {"rank": 13}}, model)


def test_adapter_arguments_and_the_owned_output_layer_are_checked():
    model, _ = parent_of("PHVector2Vector")
    with pytest.raises(ConfigError) as error:
        parse_addin({"type": "adapter", "args": {"activation": "rleu", "own_output": "yes"}}, model)
    text = str(error.value)
    assert "addin.args.activation: 'rleu' is not one of relu, gelu, tanh (did you mean 'relu'?)" in text
    assert "addin.args.own_output: must be true or false, got 'yes'" in text
    with pytest.raises(ConfigError, match="'layers.2' is the output layer, which own_output"):
        parse_addin({"type": "lora", "args": {"own_output": True, "targets": ["layers.2"]}}, model)
    with pytest.raises(ConfigError, match="addin.args.activation: unknown argument"):
        parse_addin({"type": "lora", "args": {"activation": "relu"}}, model)


def test_short_forms_and_suffix_targets_resolve_to_module_paths():
    model, _ = parent_of("PersonalizedHead")  # two encoder layers
    assert parse_addin(True, model) == parse_addin("lora", model) == parse_addin({"type": "LoRA"}, model)
    spec = parse_addin({"type": "lora", "args": {"targets": "linear1", "rank": 2}}, model)
    assert spec.targets == ("transformer_encoder.layers.0.linear1",
                            "transformer_encoder.layers.1.linear1")
    assert spec.to_dict() == {"type": "lora", "args": {"rank": 2, "alpha": 4.0,
                                                       "targets": list(spec.targets),
                                                       "own_output": False}}
    assert parse_addin(spec.to_dict(), model) == spec  # the stored form parses to the same spec


# --- (e) the add-in alone is saved and trained ---------------------------------------------------

@pytest.mark.parametrize("name, kind, own", CASES, ids=CASE_IDS)
def test_training_changes_only_the_addin_and_its_state_dict_is_the_addin(name, kind, own):
    spec = spec_of(name, kind, own)
    base = frozen(name)
    model = AddinModel(base, spec, initial_addin(spec, base.model, seed=1))
    assert set(model.state_dict()) == set(addin_shapes(spec))
    assert not set(model.state_dict()) & set(base.model.state_dict())
    assert sum(t.numel() for t in model.state_dict().values()) * 4 == addin_bytes(spec)
    parent_before = {k: v.clone() for k, v in base.model.state_dict().items()}
    addin_before = model.state_dict()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in model.deltas}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)  # all of them, as the trainer does
    model.train()
    assert not base.model.training  # the parent runs as it serves: no dropout
    x = inputs(name, 8, seed=4)
    out_dim = model(x).shape[-1]
    target = torch.arange(8) % out_dim
    for _ in range(4):
        optimizer.zero_grad()
        out = model(x)
        loss = F.nll_loss(F.log_softmax(out, -1), target)
        loss.backward()
        optimizer.step()
    for key, value in base.model.state_dict().items():
        assert torch.equal(value, parent_before[key]), key
    assert not any(p.requires_grad for p in base.model.parameters())
    after = model.state_dict()
    changed = [n for n in after if not torch.equal(after[n], addin_before[n])]
    must_move = [n for n in after if n.split(":")[1] in ("B", "up", "delta", "weight")]
    assert must_move and set(must_move) <= set(changed)
    model.eval()
    with torch.no_grad():  # the trained add-in answers otherwise than the parent
        assert (model(x) - base(x, lambda _n, _x, y: y)).abs().max() > 1e-4
    # load_state_dict takes the add-in back, and refuses other weights
    fresh = AddinModel(base, spec, initial_addin(spec, base.model, seed=1))
    fresh.load_state_dict(after)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    with pytest.raises(RuntimeError, match="add-in weights do not fit"):
        fresh.load_state_dict(base.model.state_dict())


def test_the_frozen_parent_ignores_dropout_while_the_addin_trains():
    base = frozen("UserNet")
    spec = parse_addin("lora", base.model)
    model = AddinModel(base, spec, random_addin(spec, seed=0)).train()
    x = inputs("UserNet", 16, seed=0)
    assert torch.equal(model(x), model(x))  # UserNet's Dropout(0.5) stays off


# --- (f) an add-in is small ----------------------------------------------------------------------

def test_the_default_lora_of_the_default_head_is_at_most_one_percent_of_it():
    with torch.device("meta"):
        head = PersonalizedHead(embedding_length=768, n_classes=10, ph_ff_dim=512, ph_nhead=8)
    full = sum(p.numel() * 4 for p in head.parameters())
    spec = parse_addin("lora", head)
    assert spec.rank == 4 and "fc" in spec.targets
    assert "transformer_encoder.layers.0.self_attn.out_proj" in spec.targets
    size = addin_bytes(spec)
    assert size == 4 * sum(math.prod(s) for s in addin_shapes(spec).values())
    assert 0 < size <= 0.01 * full, (size, full)
    bias = addin_bytes(parse_addin("bias", head))
    assert bias < size
    own = addin_bytes(parse_addin({"type": "lora", "args": {"own_output": True}}, head))
    assert own <= 0.01 * full


# --- (g) a bank grows and reuses slots -----------------------------------------------------------

def test_a_bank_grows_past_its_first_capacity_keeping_every_users_answers():
    name = "PersonalizedHead_seq1"
    spec = spec_of(name, "lora", True)
    base = frozen(name)
    bank = AddinBank(base, spec, torch.device("cpu"), torch.float32)
    x = inputs(name, 3, seed=0)
    users = [random_addin(spec, seed=s) for s in range(MIN_CAPACITY + 5)]
    slots = [bank.attach(users[0]), bank.attach(users[1])]
    assert bank.capacity == MIN_CAPACITY
    with bank.reading():
        early = bank.forward(slots, [x, x])
    assert (early[0] - early[1]).abs().max() > 1e-3
    slots += [bank.attach(state) for state in users[2:]]
    assert bank.capacity == 2 * MIN_CAPACITY
    assert len({s.index for s in slots}) == len(slots)
    with bank.reading():
        later = bank.forward(slots, [x] * len(slots))
    assert torch.equal(later[0], early[0]) and torch.equal(later[1], early[1])
    for i in (0, 1, MIN_CAPACITY - 1, MIN_CAPACITY, len(slots) - 1):  # each user's own add-in
        for part, tensor in bank.state(slots[i]).items():
            assert torch.equal(tensor, users[i][part])
        with torch.no_grad():
            alone = AddinModel(base, spec, users[i])(x)
        assert (later[i] - alone).abs().max() <= ATOL
    assert bank.slot_bytes() == addin_bytes(spec)
    assert bank.bytes_allocated() == 2 * MIN_CAPACITY * addin_bytes(spec)


def test_a_released_slot_is_reused_once_no_pass_reads_it():
    spec = spec_of("UserNet", "bias", False)
    bank = AddinBank(frozen("UserNet"), spec, torch.device("cpu"), torch.float32)
    slots = [bank.attach(random_addin(spec, seed=s)) for s in range(3)]
    gone = slots[1]
    bank.release(gone)
    assert not gone.valid
    again = bank.attach(random_addin(spec, seed=7))
    assert again.index == gone.index  # the freed row, not a new one
    with bank.reading():  # a pass may still be reading the released row
        bank.release(again)
        bank.release(again)  # twice: no-op
        during = bank.attach(random_addin(spec, seed=8))
        assert during.index != again.index
    reused = bank.attach(random_addin(spec, seed=9))
    assert reused.index == again.index
    assert len({s.index for s in (slots[0], slots[2], during, reused)}) == 4
    assert bank.capacity == MIN_CAPACITY
    state = random_addin(spec, seed=9)
    assert all(torch.equal(bank.state(reused)[n], state[n]) for n in state)  # overwritten whole


def test_a_large_bank_grows_by_at_most_max_growth_slots(monkeypatch):
    from ph.modeling import addin_bank
    monkeypatch.setattr(addin_bank, "MAX_GROWTH", MIN_CAPACITY)
    spec = spec_of("UserNet", "bias", False)
    bank = AddinBank(frozen("UserNet"), spec, torch.device("cpu"), torch.float32)
    capacities = []
    for seed in range(3 * MIN_CAPACITY + 1):
        bank.attach(random_addin(spec, seed=seed))
        capacities.append(bank.capacity)
    assert sorted(set(capacities)) == [MIN_CAPACITY * k for k in (1, 2, 3, 4)]
