"""The MNIST_NN_manualBP slide as one node (manualbp/layers/mlp.py): the gradient suite every
Function passes, against a reference of torch built-ins, and how the trainer, the manual engine,
the audit and the benchmark use it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import manualbp
import manualbp.functional as mbf
from manualbp import manual
from manualbp import nn as mnn
from manualbp.bench import speed
from manualbp.reference import to_torch
from manualbp.testing import check_function

EXACT = {"rtol": 1e-13, "atol": 1e-15}
TWO_D = ("as_given", "batch_size_1", "non_contiguous")  # the loss takes (N, C) logits only


def ours(input, target, *parameters):
    return mbf.mlp_softmax_cross_entropy(input, target, parameters[0::2], parameters[1::2])


def reference(input, target, *parameters):
    """F.linear, F.relu, ..., F.cross_entropy: PyTorch's own autograd."""
    activation = input
    for index in range(0, len(parameters) - 2, 2):
        activation = TF.relu(TF.linear(activation, parameters[index], parameters[index + 1]))
    return TF.cross_entropy(TF.linear(activation, parameters[-2], parameters[-1]), target)


def net_inputs(sizes, batch=5, probabilities=False):
    """A maker of (X, target, W1, b1, ...) for check_function (float64 there)."""

    def make():
        target = (torch.softmax(torch.randn(batch, sizes[-1]), dim=1) if probabilities
                  else torch.randint(0, sizes[-1], (batch,)))
        parameters = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            parameters += [torch.randn(fan_out, fan_in), torch.randn(fan_out)]
        return (torch.randn(batch, sizes[0]), target, *parameters)

    return make


# ----------------------------------------------------------------------------------------------
# The gradient suite
# ----------------------------------------------------------------------------------------------


def test_one_hidden_layer_passes_the_gradient_suite():
    report = check_function(ours, reference, net_inputs([4, 3, 3]), layouts=TWO_D, **EXACT)
    skipped = [result.name for result in report.results if result.status == "skipped"]
    assert skipped == ["torch.compile(fullgraph=True) values and gradients"]  # off by default: slow


def test_probability_targets_pass_the_gradient_suite():
    assert check_function(ours, reference, net_inputs([4, 3, 3], probabilities=True), layouts=TWO_D, **EXACT).passed


@pytest.mark.slow
def test_the_slides_three_layer_net_passes_the_gradient_suite_and_compiles():
    report = check_function(ours, reference, net_inputs([6, 4, 4, 3]), layouts=("as_given",), compile=True, **EXACT)
    assert not [result.name for result in report.results if result.status == "skipped"]


def test_a_wrong_formula_in_the_chain_is_caught(monkeypatch):
    # The node calls the per-layer formulas: a wrong ReLU backward there breaks the node too.
    monkeypatch.setattr(manualbp.layers.mlp, "relu_backward", lambda grad_output, output: grad_output)
    report = check_function(ours, reference, net_inputs([4, 3, 3]), layouts=("as_given",), raise_on_failure=False)
    assert report["gradients vs reference (every requires-grad subset)"].failed


def test_deep_nets_and_a_single_layer_match_torch():
    for sizes in ([5, 3], [5, 4, 4, 4, 3]):
        inputs = net_inputs(sizes)()
        inputs = tuple(tensor.double() if tensor.is_floating_point() else tensor for tensor in inputs)
        for tensor in inputs[2:]:
            tensor.requires_grad_()
        loss, expected = ours(*inputs), reference(*inputs)
        torch.testing.assert_close(loss, expected, **EXACT)
        grads = torch.autograd.grad(loss, inputs[2:])
        for grad, expected_grad in zip(grads, torch.autograd.grad(expected, inputs[2:]), strict=True):
            torch.testing.assert_close(grad, expected_grad, **EXACT)


# ----------------------------------------------------------------------------------------------
# The Module, the trainer's call, the engine, the audit's twin
# ----------------------------------------------------------------------------------------------


def _classifier_and_batch(sizes=(6, 5, 4, 3), batch=7):
    torch.manual_seed(0)
    net = mnn.MLPClassifier(list(sizes)).double()
    inputs = torch.randn(batch, sizes[0], dtype=torch.float64)
    return net, inputs, torch.randint(0, sizes[-1], (batch,))


def test_the_classifier_gives_logits_and_its_loss_in_one_node():
    net, inputs, targets = _classifier_and_batch()
    loss, logits = net.loss(inputs, targets, return_logits=True)
    assert type(loss.grad_fn).__name__ == "MLPSoftmaxCrossEntropyFunctionBackward"
    torch.testing.assert_close(logits, net(inputs), **EXACT)
    torch.testing.assert_close(loss, mbf.softmax_cross_entropy(net(inputs), targets), **EXACT)


def test_it_is_mlp_with_the_same_parameter_names_and_its_twin_is_pure_torch():
    net, inputs, targets = _classifier_and_batch()
    mlp = mnn.MLP([6, 5, 4, 3]).double()
    mlp.load_state_dict(net.state_dict())  # same names and shapes: checkpoints move between them
    twin = to_torch(net)
    assert type(twin) is mnn.TorchMLPClassifier
    assert all(type(layer) in (mnn.TorchLinearReLU, torch.nn.Linear) for layer in twin)
    assert [name for name, _ in twin.named_parameters()] == [name for name, _ in net.named_parameters()]
    shared = net.to_torch()  # what to_torch puts in its copy: the same Parameter objects
    assert all(a is b for a, b in zip(shared.parameters(), net.parameters(), strict=True))
    back = manualbp.convert(twin)
    assert type(back) is mnn.MLPClassifier and repr(back) == repr(net)
    loss = net.loss(inputs, targets)
    expected = TF.cross_entropy(twin(inputs), targets)
    torch.testing.assert_close(loss, expected, **EXACT)
    for ours_grad, torch_grad in zip(torch.autograd.grad(loss, list(net.parameters())),
                                     torch.autograd.grad(expected, list(twin.parameters())), strict=True):
        torch.testing.assert_close(ours_grad, torch_grad, **EXACT)


def test_forward_and_loss_uses_the_node_only_for_the_fused_loss():
    net, inputs, targets = _classifier_and_batch()
    fused = mnn.forward_and_loss(net, mnn.SoftmaxCrossEntropyLoss(), inputs, targets)
    assert type(fused.grad_fn).__name__ == "MLPSoftmaxCrossEntropyFunctionBackward"
    other = mnn.forward_and_loss(net, mnn.SoftmaxEuclideanLoss(), inputs, targets)
    assert type(other.grad_fn).__name__ == "SoftmaxEuclideanFunctionBackward"
    native = mnn.forward_and_loss(to_torch(net), torch.nn.CrossEntropyLoss(), inputs, targets)
    torch.testing.assert_close(native, fused, **EXACT)


def test_the_manual_engine_runs_the_node_bit_for_bit_like_autograd():
    net, inputs, targets = _classifier_and_batch()
    loss_value, grads = manual.backprop(net, mnn.SoftmaxCrossEntropyLoss(), inputs, targets)
    expected = net.loss(inputs, targets)
    expected_grads = torch.autograd.grad(expected, list(net.parameters()))
    assert torch.equal(loss_value, expected.detach())
    assert list(grads) == [name for name, _ in net.named_parameters()]
    for grad, expected_grad in zip(grads.values(), expected_grads, strict=True):
        assert torch.equal(grad, expected_grad)  # the same Function code


def test_the_manual_engine_runs_other_losses_layer_by_layer():
    net, inputs, targets = _classifier_and_batch()
    loss = mnn.SoftmaxEuclideanLoss()
    loss_value, grads = manual.backprop(net, loss, inputs, targets)
    expected_grads = torch.autograd.grad(loss(net(inputs), targets), list(net.parameters()))
    for grad, expected_grad in zip(grads.values(), expected_grads, strict=True):
        assert torch.equal(grad, expected_grad)


def test_under_autocast_it_runs_in_pytorchs_dtypes():
    net, inputs, targets = _classifier_and_batch()
    net, inputs = net.float(), inputs.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logits = net.loss(inputs, targets, return_logits=True)
        expected_logits = to_torch(net)(inputs)
        expected = TF.cross_entropy(expected_logits, targets)
    assert logits.dtype == expected_logits.dtype == torch.bfloat16
    assert loss.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    assert all(grad.dtype == torch.float32 for grad in grads)


def test_it_saves_no_more_for_backward_than_torch():
    torch.manual_seed(0)
    net = mnn.MLPClassifier([784, 512, 256, 10])
    inputs, targets = torch.randn(32, 784), torch.randint(0, 10, (32,))
    ours_bytes = speed.saved_activation_bytes(net, mnn.SoftmaxCrossEntropyLoss(), inputs, targets)
    theirs = speed.saved_activation_bytes(to_torch(net), torch.nn.CrossEntropyLoss(), inputs, targets)
    assert ours_bytes == 4 * 32 * (784 + 512 + 256 + 10) + 8 * 32  # X, Z1, Z2, logits; int64 labels
    assert ours_bytes <= theirs


def test_bad_arguments_are_clear_errors():
    net, inputs, targets = _classifier_and_batch()
    with pytest.raises(ValueError, match="expected 6 input features, got 5"):
        net.loss(inputs[:, :5], targets)
    with pytest.raises(ValueError, match=r"class targets must lie in \[0, 3\)"):
        net.loss(inputs, targets + 3)
    with pytest.raises(ValueError, match="one bias per weight"):
        mbf.mlp_softmax_cross_entropy(inputs, targets, [net[0].weight], [])
    with pytest.raises(ValueError, match="sizes must list"):
        mnn.MLPClassifier([784])
