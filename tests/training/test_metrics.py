"""ph.training.metrics: the built-in metrics give known values; losses by name are torch's."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ph.config.components import LOSSES, METRICS
from ph.training.metrics import accuracy, mae, mse, top_k_acc

# 4 inputs, 4 classes; the classes in score order per row are given in the comments.
SCORES = torch.tensor([[0.10, 0.60, 0.20, 0.10],    # 1, 2, 0|3
                       [0.70, 0.05, 0.15, 0.10],    # 0, 2, 3, 1
                       [0.20, 0.30, 0.10, 0.40],    # 3, 1, 0, 2
                       [0.05, 0.15, 0.25, 0.55]])   # 3, 2, 1, 0


def test_metrics_are_registered_by_name():
    assert METRICS.names() == ["accuracy", "mae", "mse", "top_k_acc"]
    assert METRICS.get("accuracy", "x") is accuracy
    assert METRICS.get("top_k_acc", "x") is top_k_acc


def test_accuracy_is_the_share_of_correct_top_predictions():
    assert accuracy(SCORES, torch.tensor([1, 0, 3, 3])) == 1.0
    assert accuracy(SCORES, torch.tensor([1, 0, 1, 2])) == 0.5
    assert accuracy(SCORES, torch.tensor([0, 1, 0, 0])) == 0.0
    assert accuracy(SCORES, torch.tensor([1, 2, 2, 2])) == 0.25


def test_accuracy_works_on_log_probabilities_and_returns_a_float():
    value = accuracy(torch.log_softmax(SCORES, dim=-1), torch.tensor([1, 0, 3, 0]))
    assert isinstance(value, float) and value == 0.75


def test_top_k_acc_counts_targets_among_the_k_best_classes():
    target = torch.tensor([2, 3, 0, 0])  # ranks 2, 3, 3, 4
    assert top_k_acc(SCORES, target, k=1) == 0.0
    assert top_k_acc(SCORES, target, k=2) == 0.25
    assert top_k_acc(SCORES, target) == 0.75  # k defaults to 3
    assert top_k_acc(SCORES, target, k=4) == 1.0


def test_top_k_acc_with_fewer_classes_than_k_counts_every_input():
    two_classes = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    target = torch.tensor([1, 0, 0])  # only the last input has its target ranked first
    assert top_k_acc(two_classes, target) == 1.0  # k=3 > 2 classes: every target is in the top
    assert top_k_acc(two_classes, target, k=1) == pytest.approx(1 / 3)


def test_top_k_acc_with_k_1_equals_accuracy():
    torch.manual_seed(0)
    scores, target = torch.randn(50, 7), torch.randint(0, 7, (50,))
    assert top_k_acc(scores, target, k=1) == pytest.approx(accuracy(scores, target))


def test_metrics_do_not_track_gradients():
    scores = SCORES.clone().requires_grad_()
    assert isinstance(accuracy(scores, torch.tensor([1, 0, 3, 3])), float)
    assert isinstance(top_k_acc(scores, torch.tensor([1, 0, 3, 3])), float)
    assert isinstance(mse(scores, torch.zeros(4, 4)), float)


def test_mse_and_mae_give_known_values():
    output = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 8.0]])  # errors 0, 2, 3, -4
    assert mse(output, target) == pytest.approx((0 + 4 + 9 + 16) / 4)
    assert mae(output, target) == pytest.approx((0 + 2 + 3 + 4) / 4)
    assert mse(output, output) == 0.0 and mae(output, output) == 0.0


def test_mse_and_mae_accept_integer_targets():
    output = torch.tensor([0.5, 2.0, 3.0])
    target = torch.tensor([1, 2, 5])  # errors 0.5, 0, 2
    assert mse(output, target) == pytest.approx((0.25 + 0 + 4) / 3)
    assert mae(output, target) == pytest.approx(2.5 / 3)


def test_losses_include_the_seed_names():
    assert {"nll_loss", "cross_entropy_loss", "mse_loss", "cross_entropy", "l1_loss"} <= set(
        LOSSES.names())


@pytest.mark.parametrize("name, reference", [("nll_loss", F.nll_loss),
                                             ("cross_entropy_loss", F.cross_entropy),
                                             ("cross_entropy", F.cross_entropy)])
def test_classification_losses_compute_the_same_as_torch(name, reference):
    torch.manual_seed(0)
    output = torch.log_softmax(torch.randn(6, 4), dim=-1)
    target = torch.randint(0, 4, (6,))
    loss = LOSSES.get(name, "Trainer.loss")(output, target)
    assert torch.equal(loss, reference(output, target))
    assert loss.item() > 0


def test_nll_loss_of_log_probabilities_equals_cross_entropy_of_logits():
    torch.manual_seed(1)
    logits, target = torch.randn(5, 3), torch.randint(0, 3, (5,))
    nll = LOSSES.get("nll_loss", "x")(torch.log_softmax(logits, dim=-1), target)
    ce = LOSSES.get("cross_entropy_loss", "x")(logits, target)
    torch.testing.assert_close(nll, ce)


def test_mse_loss_computes_the_same_as_torch():
    output = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 8.0]])
    loss = LOSSES.get("mse_loss", "Trainer.loss")(output, target)
    assert torch.equal(loss, F.mse_loss(output, target))
    assert loss.item() == pytest.approx(29 / 4)
