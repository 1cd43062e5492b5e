"""Bad input gets a clear error that says what was expected and what was got; extreme values
stay finite."""

from __future__ import annotations

import pytest
import torch

import manualbp.functional as mbf
from manualbp import nn as mnn


def test_linear_names_both_feature_counts():
    layer = mnn.Linear(784, 10)
    with pytest.raises(ValueError, match="expected 784 input features, got 785"):
        layer(torch.randn(2, 785))
    with pytest.raises(ValueError, match="expected 784 input features, got 28"):
        layer(torch.randn(2, 28, 28))  # forgot to flatten


def test_linear_rejects_integer_input():
    with pytest.raises(TypeError, match="floating-point input, got dtype torch.uint8"):
        mnn.Linear(4, 2)(torch.zeros(3, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.int64"):
        mbf.linear(torch.zeros(3, 4, dtype=torch.long), torch.zeros(2, 4))


def test_linear_rejects_mixed_dtypes_and_bad_parameter_shapes():
    with pytest.raises(TypeError, match="input is torch.float64 but weight is torch.float32"):
        mnn.Linear(4, 2)(torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="bias of shape \\(2,\\), got \\(3,\\)"):
        mbf.linear(torch.zeros(3, 4), torch.zeros(2, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="weight of shape \\(out_features, in_features\\)"):
        mbf.linear(torch.zeros(3, 4), torch.zeros(4))


@pytest.mark.parametrize("loss", [mbf.softmax_cross_entropy, mbf.softmax_euclidean_loss])
@pytest.mark.parametrize("bad_label", [10, 11, -1])
def test_class_targets_out_of_range_are_rejected(loss, bad_label):
    logits = torch.randn(4, 10, requires_grad=True)
    target = torch.tensor([0, 3, bad_label, 9])
    with pytest.raises(ValueError, match=f"must lie in \\[0, 10\\).*from {min(0, bad_label)} to {max(9, bad_label)}"):
        loss(logits, target)


def test_target_batch_size_must_match_logits():
    with pytest.raises(ValueError, match="expected 4 class targets .* got shape \\(5,\\)"):
        mbf.softmax_cross_entropy(torch.randn(4, 10), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="probability targets must have the logits' shape"):
        mbf.softmax_cross_entropy(torch.randn(4, 10), torch.rand(5, 10))
    with pytest.raises(ValueError, match="expected logits of shape \\(N, C\\)"):
        mbf.softmax_cross_entropy(torch.randn(10), torch.tensor(3))
    with pytest.raises(TypeError, match="got dtype torch.bool"):
        mbf.softmax_cross_entropy(torch.randn(4, 2), torch.zeros(4, dtype=torch.bool))


def test_euclidean_loss_refuses_to_broadcast():
    pred = torch.randn(4, 1, requires_grad=True)
    with pytest.raises(ValueError, match="same shape, got \\(4, 1\\) and \\(4,\\)"):
        mbf.euclidean_loss(pred, torch.randn(4))
    with pytest.raises(ValueError, match="reduction must be one of"):
        mbf.euclidean_loss(pred, torch.randn(4, 1), reduction="none")


@pytest.mark.parametrize("name", sorted(mnn.ACTIVATIONS))
def test_activations_reject_integer_input(name):
    with pytest.raises(TypeError, match=f"{name}: expected a floating-point input, got dtype torch.int64"):
        mnn.ACTIVATIONS[name]()(torch.arange(3))  # every activation, through its public function


def test_sigmoid_of_extreme_values_is_finite_with_finite_gradient():
    x = torch.tensor([-1000.0, -100.0, 0.0, 100.0, 1000.0], requires_grad=True)
    y = mbf.sigmoid(x)
    y.sum().backward()
    assert torch.equal(y.detach(), torch.sigmoid(x.detach()))
    assert y[0] == 0 and y[-1] == 1
    assert torch.isfinite(x.grad).all() and x.grad[0] == 0 and x.grad[-1] == 0


def test_cross_entropy_of_huge_logits_is_finite_with_finite_gradient():
    logits = torch.tensor([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], requires_grad=True)
    target = torch.tensor([1, 2])
    loss = mbf.softmax_cross_entropy(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.detach(), target))


def test_elu_of_large_inputs_is_finite_with_finite_gradient():
    x = torch.tensor([-1e4, -50.0, 50.0, 1e4], requires_grad=True)
    y = mbf.elu(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, torch.exp(torch.tensor(-50.0)).item(), 1.0, 1.0]))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
@pytest.mark.parametrize("loss", [mbf.softmax_cross_entropy, mbf.softmax_euclidean_loss])
def test_class_targets_of_any_integer_type_work(loss, dtype):
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 1, 2, 3])
    expected = loss(logits, labels)
    expected_grad = torch.autograd.grad(expected, logits)[0]
    actual = loss(logits, labels.to(dtype))
    assert torch.equal(actual, expected)
    assert torch.equal(torch.autograd.grad(actual, logits)[0], expected_grad)


def test_a_scalar_input_to_linear_is_explained():
    with pytest.raises(ValueError, match="expected an input of shape \\(\\*, 1\\), got a 0-d tensor"):
        mbf.linear(torch.tensor(2.0), torch.ones(3, 1))
