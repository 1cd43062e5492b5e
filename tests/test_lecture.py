"""The rest of the lecture: the explicit backprop loop, linear regression by gradient descent,
universal approximation, the gradient-descent and chain-rule demos, softmax with the L2 loss."""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest
import torch

from manualbp import manual
from manualbp import nn as mnn
from manualbp.demos import chain_rule, gradient_descent
from manualbp.errors import ConfigError
from manualbp.layers import activations
from manualbp.regression import ridge_gradient, ridge_solution
from manualbp.training import train
from manualbp.training.data import XORDataModule
from manualbp.training.module import LitNet, resolve_loss

# ----------------------------------------------------------------------------------------------
# 1. The explicit backprop loop
# ----------------------------------------------------------------------------------------------

NETS = {
    "mnist_fused": (lambda: mnn.MLP([20, 16, 12, 5]), mnn.SoftmaxCrossEntropyLoss, "indices"),
    "mnist_unfused": (lambda: mnn.MLP([20, 16, 12, 5], fuse=False), mnn.SoftmaxCrossEntropyLoss, "indices"),
    "xor_sigmoid": (
        lambda: mnn.MLP([20, 8, 1], activation="sigmoid", output_activation="sigmoid"),
        mnn.EuclideanLoss,
        "binary",
    ),
    "elu_mean_euclidean": (lambda: mnn.MLP([20, 9, 5], activation="elu"), lambda: mnn.EuclideanLoss("mean"), "one_hot"),
    "softmax_euclidean": (lambda: mnn.MLP([20, 16, 5]), mnn.SoftmaxEuclideanLoss, "indices"),
}


def _batch(kind: str, generator: torch.Generator):
    inputs = torch.randn(32, 20, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 5, (32,), generator=generator)
    targets = {
        "indices": labels,
        "binary": (labels % 2).double().unsqueeze(1),
        "one_hot": torch.nn.functional.one_hot(labels, 5).double(),
    }[kind]
    return inputs, targets


@pytest.mark.parametrize("name", NETS)
def test_backprop_by_hand_equals_autograd_bit_for_bit_in_float64(name):
    make_net, make_loss, kind = NETS[name]
    torch.manual_seed(0)
    net, loss = make_net().double(), make_loss()
    inputs, targets = _batch(kind, torch.Generator().manual_seed(1))
    loss_value, grads = manual.backprop(net, loss, inputs, targets)
    expected_loss = loss(net(inputs), targets)
    expected = torch.autograd.grad(expected_loss, list(net.parameters()))
    assert torch.equal(loss_value, expected_loss.detach())
    assert list(grads) == [name for name, _ in net.named_parameters()]
    for (parameter_name, grad), expected_grad in zip(grads.items(), expected, strict=True):
        assert torch.equal(grad, expected_grad), parameter_name


def test_backprop_by_hand_uses_no_autograd_graph():
    net, loss = mnn.MLP([20, 16, 5]), mnn.SoftmaxCrossEntropyLoss()
    inputs, targets = _batch("indices", torch.Generator().manual_seed(0))
    loss_value, grads = manual.backprop(net, loss, inputs.float(), targets)
    assert loss_value.grad_fn is None and all(g.grad_fn is None for g in grads.values())
    assert all(p.grad is None for p in net.parameters())


def test_a_wrong_formula_changes_the_manual_gradients(monkeypatch):
    net, loss = mnn.MLP([20, 16, 5], fuse=False).double(), mnn.SoftmaxCrossEntropyLoss()
    inputs, targets = _batch("indices", torch.Generator().manual_seed(0))
    right = manual.backprop(net, loss, inputs, targets)[1]
    monkeypatch.setattr(activations, "relu_backward", lambda grad, output: grad)  # forgot 1[x>0]
    wrong = manual.backprop(net, loss, inputs, targets)[1]
    assert torch.equal(right["2.weight"], wrong["2.weight"])  # above the ReLU: unchanged
    assert not torch.equal(right["0.weight"], wrong["0.weight"])  # below it: caught


@pytest.mark.filterwarnings("ignore:.*isinstance.treespec, LeafSpec.*")  # Lightning's, with this torch
def test_the_manual_engine_with_sgd_steps_theta_minus_lr_delta_theta(tmp_path):
    # README: engine=manual with model.optimizer._target_=torch.optim.SGD is the slide's update.
    torch.manual_seed(0)
    net = mnn.MLP([2, 8, 1], activation="sigmoid", output_activation="sigmoid")
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    loss = mnn.EuclideanLoss()
    data = XORDataModule(steps_per_epoch=1)
    _, grads = manual.backprop(net, loss, data.inputs, data.targets)  # δθ by hand
    module = LitNet(net, loss, functools.partial(torch.optim.SGD, lr=0.5), engine="manual")
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 1
    for name, parameter in net.named_parameters():
        torch.testing.assert_close(parameter.detach(), before[name] - 0.5 * grads[name], rtol=0, atol=1e-7)  # θ − lr·δθ


def test_the_manual_engine_rejects_layers_it_does_not_know():
    net = torch.nn.Sequential(mnn.Linear(20, 5), torch.nn.Dropout())
    inputs, targets = _batch("indices", torch.Generator())
    with pytest.raises(ConfigError, match="manual engine runs manualbp layers only .* got Dropout"):
        manual.backprop(net, mnn.SoftmaxCrossEntropyLoss(), inputs.float(), targets)


def test_training_with_the_manual_engine_ends_with_the_same_weights_as_autograd(config, tmp_path):
    runs = {}
    for engine in ("autograd", "manual"):
        cfg = config("model=xor", f"engine={engine}", "trainer.max_epochs=1", "figures=false")
        cfg.paths.output_dir = str(tmp_path / engine)
        results = train(cfg)
        assert results["engine"] == engine and results["test/acc"] == 1.0
        runs[engine] = torch.load(tmp_path / engine / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for name, tensor in runs["autograd"].items():
        assert torch.equal(runs["manual"][name], tensor), name


@pytest.mark.parametrize("devices", [["trainer=ddp"], ["trainer.devices=2"]])
def test_the_manual_engine_refuses_several_processes(config, devices):
    # trainer.devices=2 alone also means DDP (strategy "auto"): gradients would not be averaged.
    with pytest.raises(ConfigError, match="DDP cannot average them across the 2 processes"):
        train(config("model=xor", "engine=manual", *devices))


def test_an_unknown_engine_fails_fast(config):
    with pytest.raises(ConfigError, match="engine=backprop is not known; choose one of autograd, manual"):
        train(config("model=xor", "engine=backprop"))


def test_backprop_by_hand_under_autocast_runs_in_the_parameters_dtype():
    torch.manual_seed(0)
    net, loss = mnn.MLP([20, 16, 5]), mnn.SoftmaxCrossEntropyLoss()
    inputs, targets = _batch("indices", torch.Generator().manual_seed(0))
    expected = manual.backprop(net, loss, inputs.float(), targets)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grads = manual.backprop(net, loss, inputs.float(), targets)[1]
    for name, grad in grads.items():
        assert grad.dtype == torch.float32 and torch.equal(grad, expected[name]), name


def test_backprop_by_hand_checks_its_inputs_like_the_layers():
    net, loss = mnn.MLP([20, 1], activation="sigmoid"), mnn.EuclideanLoss()
    inputs = torch.randn(5, 20)
    with pytest.raises(ValueError, match="same shape, got \\(5, 1\\) and \\(5,\\)"):
        manual.backprop(net, loss, inputs, torch.randn(5))


# ----------------------------------------------------------------------------------------------
# 2. Multiple linear regression by gradient descent
# ----------------------------------------------------------------------------------------------


def _regression_problem(samples=200, features=6, outputs=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, features, generator=generator, dtype=torch.float64)
    targets = inputs @ torch.randn(features, outputs, generator=generator, dtype=torch.float64)
    return inputs, targets + 0.1 * torch.randn(samples, outputs, generator=generator, dtype=torch.float64)


def _linreg_module(features, outputs, gamma, lr):
    net = mnn.MLP([features, outputs]).double()
    with torch.no_grad():
        net[0].bias.normal_()  # a nonzero bias, so its term in ∇W is exercised
    optimizer = functools.partial(torch.optim.SGD, lr=lr)
    return LitNet(net, mnn.EuclideanLoss(), optimizer, ridge=gamma)


def test_the_gradient_training_uses_is_the_slides_closed_form():
    inputs, targets = _regression_problem()
    gamma, lr = 2.5, 1e-3
    module = _linreg_module(6, 3, gamma, lr)
    optimizer = module.configure_optimizers()
    layer = module.net[0]
    weight, bias = layer.weight.detach().T.clone(), layer.bias.detach().clone()  # slides' (in, out)
    module.loss(module.net(inputs), targets).backward()  # manualbp's backward: δW = XᵀδZ
    optimizer.step()  # ... plus the ridge term γW as weight decay
    used_weight_grad = (weight - layer.weight.detach().T) / lr
    used_bias_grad = (bias - layer.bias.detach()) / lr
    expected_weight_grad, expected_bias_grad = ridge_gradient(inputs, targets, weight, bias, gamma)
    torch.testing.assert_close(used_weight_grad, expected_weight_grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(used_bias_grad, expected_bias_grad, rtol=1e-9, atol=1e-9)


def test_gradient_descent_approaches_the_closed_form_ridge_solution():
    inputs, targets = _regression_problem()
    gamma = 2.5
    best_weight, best_bias = ridge_solution(inputs, targets, gamma)
    zero_gradient = ridge_gradient(inputs, targets, best_weight, best_bias, gamma)
    assert all(g.abs().max() < 1e-9 for g in zero_gradient)  # the normal equations' solution
    module = _linreg_module(6, 3, gamma, lr=1e-3)
    optimizer = module.configure_optimizers()
    losses = []
    for _ in range(300):
        optimizer.zero_grad()
        loss = module.loss(module.net(inputs), targets)
        losses.append(loss.item() + gamma / 2 * module.net[0].weight.detach().pow(2).sum().item())
        loss.backward()
        optimizer.step()
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in zip(losses, losses[1:], strict=False))  # descent
    distance = (module.net[0].weight.detach().T - best_weight).norm() / best_weight.norm()
    assert distance < 1e-8
    torch.testing.assert_close(module.net[0].bias.detach(), best_bias, rtol=1e-8, atol=1e-8)


def test_mnist_linreg_trains_by_full_batch_gradient_descent(config, small_mnist):
    results = train(config(
        "model=mnist_linreg", f"data.root={small_mnist}", "data.val_size=100", "trainer.max_epochs=20",
    ))
    assert results["steps"] == 20  # one step per epoch: the whole training set is one batch
    assert results["test/acc"] > 0.8
    assert results["closed_form/test_acc"] > 0.8
    assert results["gradient_descent/train_loss"] >= results["closed_form/train_loss"]
    assert results["audit/max_rel_err"] < 1e-9


# ----------------------------------------------------------------------------------------------
# 3. Universal approximation
# ----------------------------------------------------------------------------------------------


def test_universal_approximation_fits_the_target_and_improves_with_width(config, tmp_path):
    errors = {}
    for width in (1, 16):
        cfg = config("model=approx", f"model.width={width}", "data.steps_per_epoch=300", "trainer.max_epochs=4")
        cfg.paths.output_dir = str(tmp_path / str(width))
        results = train(cfg)
        errors[width] = results["approx/rmse"]
        assert results["approx/function"] == "sin" and results["test/acc"] is None
    assert errors[16] < 0.1 < errors[1]  # one sigmoid cannot follow two periods of a sine
    assert (tmp_path / "16" / "figures" / "fit.png").is_file()


def test_an_unknown_target_function_fails_fast(config):
    with pytest.raises(ConfigError, match="data.function='tan' is not known"):
        train(config("model=approx", "data.function=tan"))


# ----------------------------------------------------------------------------------------------
# 4. Gradient descent demo
# ----------------------------------------------------------------------------------------------


def test_the_slides_gradient_of_f_equals_autograd():
    points = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    for point in points:
        expected = gradient_descent.autograd_grad_f(point)
        torch.testing.assert_close(gradient_descent.grad_f(point), expected, rtol=1e-12, atol=1e-12)


def test_gradient_descent_zig_zags_into_the_minimum(tmp_path, capsys):
    descent = gradient_descent.main(["--out", str(tmp_path / "gd.png")])
    assert descent.converged
    torch.testing.assert_close(descent.end, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-6)
    assert gradient_descent.f(descent.end).item() == pytest.approx(-4.0)  # the minimum of f
    steps = descent.path.diff(dim=0)
    assert (steps[1:, 1] * steps[:-1, 1] < 0).sum() > 10  # y goes back and forth: the zig-zag
    assert (tmp_path / "gd.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "converged" in printed and printed.count("\n") > len(descent.path)


def test_gradient_descent_that_does_not_converge_says_so():
    descent = gradient_descent.gradient_descent([0.7, 0.25], step=0.3, tolerance=1e-6, max_iterations=50)
    assert not descent.converged  # α > 2/8 (the curvature at the minimum): it diverges


# ----------------------------------------------------------------------------------------------
# 5. Chain rule demo
# ----------------------------------------------------------------------------------------------


def test_chain_rule_demo_numbers(capsys):
    sections = chain_rule.main([])
    [(_, by_hand, autograd)] = chain_rule.four_variables()
    assert by_hand.tolist() == [306.0, -144.0, -18.0, -310.0] == autograd.tolist()
    [(_, by_hand, autograd)] = chain_rule.through_z()
    torch.testing.assert_close(by_hand, autograd, rtol=1e-12, atol=0)
    assert by_hand.tolist() == [27068.0, 18374.0]
    rows = {name: (hand, auto) for name, hand, auto in chain_rule.scalar_net()}
    assert list(rows) == ["δYp", "δZ4", "δZ3", "δZ2", "δZ1", "δW1", "δb1", "δW2", "δb2"]
    for name, (hand, auto) in rows.items():
        torch.testing.assert_close(hand, auto, rtol=1e-12, atol=1e-15, msg=name)
    z3 = 1 / (1 + math.exp(-(1.5 * 0.8 - 0.2)))
    yp = z3 * 1.3 + 0.1
    assert rows["δYp"][0].item() == pytest.approx(yp - 0.5, rel=1e-12)
    assert rows["δW1"][0].item() == pytest.approx(1.5 * z3 * (1 - z3) * 1.3 * (yp - 0.5), rel=1e-12)
    assert "DISAGREE" not in capsys.readouterr().out and len(sections) == 3


# ----------------------------------------------------------------------------------------------
# 6. Softmax with the L2 loss
# ----------------------------------------------------------------------------------------------


def test_losses_by_name():
    assert isinstance(resolve_loss("softmax_euclidean"), mnn.SoftmaxEuclideanLoss)
    assert isinstance(resolve_loss("softmax_cross_entropy"), mnn.SoftmaxCrossEntropyLoss)
    with pytest.raises(ConfigError, match="model.loss=hinge is not known"):
        resolve_loss("hinge")


def test_mnist_trains_with_softmax_and_the_l2_loss(config, small_mnist):
    results = train(config(
        "model=mnist", "model.loss=softmax_euclidean", f"data.root={small_mnist}", "data.val_size=100",
        "data.batch_size=100", "trainer.max_epochs=3",
    ))
    assert results["loss"] == "SoftmaxEuclideanLoss" and results["test/acc"] > 0.8
    assert results["audit/max_rel_err"] < 1e-9
