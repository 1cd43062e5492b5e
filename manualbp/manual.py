"""Backprop by hand, with no autograd engine at all (Learn_XOR_manualBP, MNIST_NN_manualBP).

The lecture's algorithm, step by step:

    Iterate:
      (Forward pass)   compute Z1, Z2, ..., Yp, keeping what each layer needs for its backward
      (Compute loss)   L(Yp, Y)
      (Backward pass)  δYp, then each layer in reverse: δ(input), δW, δb from δ(output)
      (Update)         θ ← θ − lr·δθ

Each layer runs its own Function's ``forward``, ``setup_context`` (what to keep) and ``backward``
-- the very code autograd calls -- on a plain context object, under ``torch.no_grad()``. So the
gradients here are those of the autograd path bit for bit, and there is one implementation of
each formula (``manualbp.functional``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from manualbp import functional as F
from manualbp import nn as mnn
from manualbp.errors import ConfigError


class Context:
    """What a layer keeps between its forward and backward pass: the tensors it saved, its
    non-tensor settings, and which of its inputs need a gradient."""

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.needs_input_grad = needs_input_grad
        self.saved_tensors: tuple[Tensor | None, ...] = ()

    def save_for_backward(self, *tensors: Tensor | None) -> None:
        self.saved_tensors = tensors

    def save_for_forward(self, *tensors: Tensor | None) -> None:
        pass  # forward-mode AD is not part of backprop


def _function_and_inputs(module: torch.nn.Module, inputs: Tensor):
    """The autograd Function a manualbp module applies, and its inputs (tensors and settings)."""
    kind = type(module)
    if kind in (mnn.Linear, mnn.LinearReLU):
        F._check_linear_arguments(inputs, module.weight, module.bias)  # the layers' own checks
        function = F.LinearFunction if kind is mnn.Linear else F.LinearReLUFunction
        return function, (inputs, module.weight, module.bias)
    if kind is mnn.ReLU:
        return F.ReLUFunction, (inputs,)
    if kind is mnn.Sigmoid:
        return F.SigmoidFunction, (inputs,)
    if kind is mnn.ELU:
        return F.ELUFunction, (inputs, float(module.alpha))
    raise ConfigError(
        f"the manual engine runs manualbp layers only (Linear, LinearReLU, ReLU, Sigmoid, ELU), "
        f"got {kind.__name__}; build the net from manualbp.nn or use engine=autograd"
    )


def _loss_function_and_inputs(loss: torch.nn.Module, outputs: Tensor, targets: Tensor):
    kind = type(loss)
    if kind in (mnn.SoftmaxCrossEntropyLoss, mnn.SoftmaxEuclideanLoss):
        targets = F._check_class_targets(kind.__name__, outputs, targets)  # the losses' own checks
        function = F.SoftmaxCrossEntropyFunction if kind is mnn.SoftmaxCrossEntropyLoss else F.SoftmaxEuclideanFunction
        return function, (outputs, targets)
    if kind is mnn.EuclideanLoss:
        targets = F._check_euclidean_arguments(outputs, targets, loss.reduction)
        return F.EuclideanLossFunction, (outputs, targets, loss.reduction)
    raise ConfigError(f"the manual engine runs manualbp losses only, got {kind.__name__}")


def _needs_grad(arguments, first_input_needs_grad: bool) -> tuple[bool, ...]:
    flags = [isinstance(a, Tensor) and a.requires_grad for a in arguments]
    flags[0] = first_input_needs_grad
    return tuple(flags)


def _as_tuple(grads) -> tuple:
    return grads if isinstance(grads, tuple) else (grads,)  # one input, one gradient


@torch.no_grad()
def backprop(
    net: torch.nn.Sequential, loss: torch.nn.Module, inputs: Tensor, targets: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward and backward pass through ``net`` (a Sequential of manualbp layers, e.g.
    ``manualbp.MLP``) and ``loss``, by hand.

    inputs: (N, D); targets: what ``loss`` takes. Returns the loss (a scalar) and δθ for every
    parameter that requires grad, keyed like ``net.named_parameters()``. It runs in the
    parameters' dtype: autocast (mixed precision) is switched off inside.
    """
    with torch.autocast(inputs.device.type, enabled=False):
        return _backprop(net, loss, inputs, targets)


def _backprop(net, loss, inputs, targets):
    layers = list(net)
    # Forward pass, keeping each layer's context (what its backward needs).
    tape = []
    activation = inputs
    for index, layer in enumerate(layers):
        function, arguments = _function_and_inputs(layer, activation)
        context = Context(_needs_grad(arguments, first_input_needs_grad=index > 0))
        output = function.forward(*arguments)
        function.setup_context(context, arguments, output)
        tape.append((index, function, context))
        activation = output
    function, arguments = _loss_function_and_inputs(loss, activation, targets)
    loss_context = Context(_needs_grad(arguments, first_input_needs_grad=True))
    loss_value = function.forward(*arguments)
    function.setup_context(loss_context, arguments, loss_value)

    # Backward pass: δYp first, then every layer in reverse.
    grad = _as_tuple(function.backward(loss_context, torch.ones_like(loss_value)))[0]  # δYp = ∂L/∂Yp
    grads: dict[str, Tensor] = {}
    for index, function, context in reversed(tape):
        layer_grads = _as_tuple(function.backward(context, grad))
        grad = layer_grads[0]  # δ(input) = δ(output) of the layer below
        for name, value in zip(("weight", "bias"), layer_grads[1:]):
            if isinstance(value, Tensor):
                grads[f"{index}.{name}"] = value
    return loss_value, {name: grads[name] for name, _ in net.named_parameters() if name in grads}


@torch.no_grad()
def gradient_descent_step(net: torch.nn.Module, grads: dict[str, Tensor], lr: float) -> None:
    """θ ← θ − lr·δθ for every parameter of ``net`` that has a gradient in ``grads``."""
    for name, parameter in net.named_parameters():
        if name in grads:
            parameter.sub_(lr * grads[name])  # θ ← θ − lr·δθ
