"""ph.modeling.models: the built-in heads and their stacked (many heads at once) forward passes."""
from __future__ import annotations

import pytest
import torch

from ph.modeling.models import PersonalizedHead, PHVector2Vector

SMALL = dict(embedding_length=16, n_classes=5, ph_ff_dim=24, ph_nhead=4)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def stack_states(models):
    """Each parameter stacked along a new first (head) dimension."""
    states = [m.state_dict() for m in models]
    return {key: torch.stack([s[key] for s in states]) for key in states[0]}


# --- PersonalizedHead --------------------------------------------------------------------

def test_personalized_head_default_args_has_3160842_parameters():
    assert n_params(PersonalizedHead()) == 3_160_842


@pytest.mark.parametrize("shape", [(4, 1, 16), (4, 16), (4, 3, 16)])
def test_personalized_head_returns_log_probabilities(shape):
    torch.manual_seed(0)
    model = PersonalizedHead(**SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(*shape))
    assert out.shape == (4, 5)
    assert (out <= 0).all()
    torch.testing.assert_close(out.exp().sum(dim=-1), torch.ones(4))


def test_personalized_head_default_size_gives_log_probabilities_for_both_input_shapes():
    torch.manual_seed(0)
    model = PersonalizedHead().eval()
    x = torch.randn(2, 768)
    with torch.no_grad():
        flat, seq = model(x), model(x.unsqueeze(1))
    assert flat.shape == (2, 10)
    torch.testing.assert_close(flat.exp().sum(dim=-1), torch.ones(2))
    torch.testing.assert_close(flat, seq)  # [B, E] is a sequence of one


@pytest.mark.parametrize("args, message", [
    ({"embedding_length": 10, "ph_nhead": 4},
     "embedding_length (10) must be divisible by ph_nhead (4)"),
    ({"n_classes": 0}, "n_classes must be a whole number >= 1, got 0"),
    ({"ph_nhead": 0}, "ph_nhead must be a whole number >= 1, got 0"),
    ({"ph_nlayers": 0}, "ph_nlayers must be a whole number >= 1, got 0"),
    ({"embedding_length": 16.0}, "embedding_length must be a whole number >= 1, got 16.0"),
    ({"ph_ff_dim": -1}, "ph_ff_dim must be a whole number >= 1, got -1"),
])
def test_personalized_head_invalid_args_raise_a_clear_value_error(args, message):
    with pytest.raises(ValueError) as err:
        PersonalizedHead(**{**SMALL, **args})
    assert str(err.value) == message


@pytest.mark.parametrize("nlayers", [1, 2])
@pytest.mark.parametrize("seq", [1, 3])
def test_personalized_head_stacked_forward_equals_each_heads_forward(seq, nlayers):
    args = {**SMALL, "ph_nlayers": nlayers}
    torch.manual_seed(0)
    heads = [PersonalizedHead(**args).eval() for _ in range(3)]
    assert not torch.equal(heads[0].fc.weight, heads[1].fc.weight)  # independently initialised
    x = torch.randn(3, 2, seq, SMALL["embedding_length"])
    with torch.no_grad():
        stacked = PersonalizedHead.stacked_forward(stack_states(heads), x, args)
        assert stacked.shape == (3, 2, SMALL["n_classes"])
        for i, head in enumerate(heads):
            torch.testing.assert_close(stacked[i], head(x[i]), atol=1e-5, rtol=0)


def test_personalized_head_stacked_forward_takes_vectors_without_a_sequence_dim():
    args = dict(SMALL)
    torch.manual_seed(1)
    heads = [PersonalizedHead(**args).eval() for _ in range(2)]
    x = torch.randn(2, 5, SMALL["embedding_length"])  # [H, B, E]
    with torch.no_grad():
        stacked = PersonalizedHead.stacked_forward(stack_states(heads), x, args)
        for i, head in enumerate(heads):
            torch.testing.assert_close(stacked[i], head(x[i]), atol=1e-5, rtol=0)


def test_personalized_head_stacked_forward_of_trained_heads_matches_forward():
    # Trained weights make attention non-uniform; the multi-token path must still agree.
    args = {**SMALL, "ph_nlayers": 2}
    torch.manual_seed(2)
    heads = []
    for _ in range(2):
        head = PersonalizedHead(**args)
        optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
        for _ in range(3):
            optimizer.zero_grad()
            loss = torch.nn.functional.nll_loss(head(torch.randn(8, 3, 16)),
                                                torch.randint(0, 5, (8,)))
            loss.backward()
            optimizer.step()
        heads.append(head.eval())
    x = torch.randn(2, 4, 3, 16)
    with torch.no_grad():
        stacked = PersonalizedHead.stacked_forward(stack_states(heads), x, args)
        for i, head in enumerate(heads):
            torch.testing.assert_close(stacked[i], head(x[i]), atol=1e-5, rtol=0)


# --- PHVector2Vector ---------------------------------------------------------------------

@pytest.mark.parametrize("n_layers", [0, 1, 2])
def test_vector2vector_maps_input_dim_to_output_dim(n_layers):
    model = PHVector2Vector(input_dim=6, output_dim=3, hidden_dim=8, n_layers=n_layers).eval()
    assert len(model.layers) == n_layers + 1
    assert model(torch.randn(5, 6)).shape == (5, 3)
    assert model(torch.randn(6)).shape == (3,)


def test_vector2vector_default_args_map_768_to_768():
    model = PHVector2Vector()
    assert n_params(model) == 768 * 512 + 512 + 512 * 768 + 768
    assert model(torch.randn(2, 768)).shape == (2, 768)


@pytest.mark.parametrize("args, message", [
    ({"input_dim": 0}, "input_dim must be a whole number >= 1, got 0"),
    ({"output_dim": 2.5}, "output_dim must be a whole number >= 1, got 2.5"),
    ({"hidden_dim": -3}, "hidden_dim must be a whole number >= 1, got -3"),
    ({"n_layers": -1}, "n_layers must be a whole number >= 0, got -1"),
])
def test_vector2vector_invalid_args_raise_a_clear_value_error(args, message):
    with pytest.raises(ValueError) as err:
        PHVector2Vector(**args)
    assert str(err.value) == message


@pytest.mark.parametrize("n_layers", [0, 1, 2])
def test_vector2vector_stacked_forward_equals_each_heads_forward(n_layers):
    args = dict(input_dim=6, output_dim=3, hidden_dim=8, n_layers=n_layers)
    torch.manual_seed(0)
    heads = [PHVector2Vector(**args).eval() for _ in range(4)]
    x = torch.randn(4, 5, 6)
    with torch.no_grad():
        stacked = PHVector2Vector.stacked_forward(stack_states(heads), x, args)
        assert stacked.shape == (4, 5, 3)
        for i, head in enumerate(heads):
            torch.testing.assert_close(stacked[i], head(x[i]), atol=1e-5, rtol=0)


def test_fused_attention_weights_give_the_same_stacked_answer():
    """stacked_derived (W_o @ W_v for a sequence of one) changes no answer beyond 1e-5."""
    heads = [PersonalizedHead(embedding_length=32, n_classes=5, ph_ff_dim=16, ph_nhead=4,
                              ph_nlayers=2).eval() for _ in range(3)]
    params = {n: torch.stack([dict(h.named_parameters())[n].detach() for h in heads])
              for n, _ in heads[0].named_parameters()}
    args = {"ph_nhead": 4, "ph_nlayers": 2}
    x = torch.randn(3, 2, 1, 32)
    with torch.no_grad():
        plain = PersonalizedHead.stacked_forward(params, x, args)
        fused = PersonalizedHead.stacked_forward({**params, **PersonalizedHead.stacked_derived(params, args)}, x, args)
        own = torch.stack([h(x[i]) for i, h in enumerate(heads)])
    assert (fused - plain).abs().max() <= 1e-5 and (fused - own).abs().max() <= 1e-5
