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
each formula (in ``manualbp.layers``). Which Function a layer runs, and with which arguments,
the layer itself declares (``function_and_arguments``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from manualbp.errors import ConfigError
from manualbp.layers.base import TORCH_TWINS, Loss
from manualbp.layers.mlp import fuses


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

    def set_materialize_grads(self, value: bool) -> None:
        pass  # the engine passes None itself for the outputs it does not use

    def mark_non_differentiable(self, *tensors: Tensor) -> None:
        pass  # extra outputs (max pool's argmax, batch norm's batch statistics) get no δ here anyway


def _layer_function_and_arguments(layer: torch.nn.Module, input: Tensor):
    """The autograd Function a manualbp layer applies to ``input``, and its checked arguments
    (tensors and settings), as the layer declares them."""
    kind = type(layer)
    if kind not in TORCH_TWINS or issubclass(kind, Loss):
        layer_names = ", ".join(declared.__name__ for declared in TORCH_TWINS if not issubclass(declared, Loss))
        raise ConfigError(
            f"the manual engine runs manualbp layers only ({layer_names}), got {kind.__name__}; "
            f"build the net from manualbp.nn or use engine=autograd"
        )
    return layer.function_and_arguments(input)


def _loss_function_and_arguments(loss: torch.nn.Module, outputs: Tensor, targets: Tensor):
    kind = type(loss)
    if kind not in TORCH_TWINS or not issubclass(kind, Loss):
        raise ConfigError(f"the manual engine runs manualbp losses only, got {kind.__name__}")
    return loss.function_and_arguments(outputs, targets)


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

    A net that computes ``loss`` itself in one node (``MLPClassifier`` with
    ``SoftmaxCrossEntropyLoss``) runs as that node: its forward, then the slide's backward from
    δL = 1, all layers at once.
    """
    with torch.autocast(inputs.device.type, enabled=False):
        if fuses(net, loss):
            return _backprop_one_node(net, inputs, targets)
        return _backprop(net, loss, inputs, targets)


@dataclass
class Trace:
    """Every intermediate of one forward and backward pass (:func:`backprop_trace`).

    ``outputs[i]``: the output of layer ``i`` of the net (Z₁, Z₂, ..., Yp), ``(N, *)``;
    ``output_grads[i]``: its δ, ∂L/∂outputs[i], same shape; ``input_grad``: δX of the inputs;
    ``loss``: the scalar L; ``grads``: δθ keyed like ``net.named_parameters()``.
    """

    inputs: Tensor
    loss: Tensor | None = None
    outputs: list[Tensor] = field(default_factory=list)
    output_grads: list[Tensor | None] = field(default_factory=list)
    input_grad: Tensor | None = None
    grads: dict[str, Tensor] = field(default_factory=dict)


@torch.no_grad()
def backprop_trace(net: torch.nn.Sequential, loss: torch.nn.Module, inputs: Tensor, targets: Tensor) -> Trace:
    """:func:`backprop` that keeps every intermediate: each layer's output and its δ, and δX of
    the inputs (which training does not need). The same Functions run, layer by layer, so the
    numbers are those :func:`backprop` and autograd compute. For the playground and for teaching."""
    if fuses(net, loss):
        raise ConfigError(
            f"backprop_trace runs the net layer by layer; {type(net).__name__} with {type(loss).__name__} is one "
            f"node -- build it as manualbp.MLP(sizes) with SoftmaxCrossEntropyLoss to see its intermediates"
        )
    trace = Trace(inputs=inputs)
    with torch.autocast(inputs.device.type, enabled=False):
        trace.loss, trace.grads = _backprop(net, loss, inputs, targets, trace)
    return trace


def _backprop_one_node(net, inputs, targets):
    function, arguments = net.function_and_arguments(inputs, targets)
    context = Context(_needs_grad(arguments, first_input_needs_grad=False))
    loss_value, *other_outputs = function.forward(*arguments)
    function.setup_context(context, arguments, (loss_value, *other_outputs))
    # δL = 1; the logits and hidden outputs are used by nothing else: no gradient (None) for them.
    argument_grads = function.backward(context, torch.ones_like(loss_value), *(None for _ in other_outputs))
    names = {id(parameter): name for name, parameter in net.named_parameters()}
    grads = {
        names[id(argument)]: grad
        for argument, grad in zip(arguments, argument_grads, strict=True)
        if id(argument) in names and grad is not None
    }
    return loss_value, grads


def _backprop(net, loss, inputs, targets, trace: Trace | None = None):
    layers = list(net)
    # Forward pass, keeping each layer's context (what its backward needs).
    tape = []
    activation = inputs
    # δ(input) of a layer is needed only if some layer below it has a parameter to train: not for
    # the first layer, nor for a conv net's first conv after a reshape of the data (Unflatten).
    activation_needs_grad = trace is not None  # a trace keeps δX too
    for index, layer in enumerate(layers):
        function, arguments = _layer_function_and_arguments(layer, activation)
        context = Context(_needs_grad(arguments, first_input_needs_grad=activation_needs_grad))
        activation_needs_grad = activation_needs_grad or any(p.requires_grad for p in layer.parameters())
        output = function.forward(*arguments)
        function.setup_context(context, arguments, output)
        if hasattr(layer, "after_manual_forward"):  # batch norm: its running statistics
            layer.after_manual_forward(arguments, output)
        # A Function with extra outputs (max pool's argmax, batch norm's μ, σ²) passes on the first.
        extra_outputs = len(output) - 1 if isinstance(output, tuple) else 0
        tape.append((index, layer, function, context, arguments, extra_outputs))
        activation = output[0] if extra_outputs else output
        if trace is not None:
            trace.outputs.append(activation.clone())  # a later layer may work in place
    function, arguments = _loss_function_and_arguments(loss, activation, targets)
    loss_context = Context(_needs_grad(arguments, first_input_needs_grad=True))
    loss_value = function.forward(*arguments)
    function.setup_context(loss_context, arguments, loss_value)

    # Backward pass: δYp first, then every layer in reverse.
    grad = _as_tuple(function.backward(loss_context, torch.ones_like(loss_value)))[0]  # δYp = ∂L/∂Yp
    grads: dict[str, Tensor] = {}
    if trace is not None:
        trace.output_grads = [None] * len(layers)
    for index, layer, function, context, arguments, extra_outputs in reversed(tape):
        if grad is None:  # the layer above needed no δ(input): nothing below has a parameter to train
            break
        if trace is not None:
            trace.output_grads[index] = grad.clone()  # δ of layer index's output
        layer_grads = _as_tuple(function.backward(context, grad, *([None] * extra_outputs)))
        grad = layer_grads[0]  # δ(input) = δ(output) of the layer below
        parameter_names = {id(parameter): name for name, parameter in layer.named_parameters()}
        for argument, value in zip(arguments, layer_grads, strict=False):
            if isinstance(value, Tensor) and id(argument) in parameter_names:
                grads[f"{index}.{parameter_names[id(argument)]}"] = value
    if trace is not None:
        trace.input_grad = grad
    return loss_value, {name: grads[name] for name, _ in net.named_parameters() if name in grads}


@torch.no_grad()
def gradient_descent_step(net: torch.nn.Module, grads: dict[str, Tensor], lr: float) -> None:
    """The lecture's update, θ ← θ − lr·δθ, for every parameter of ``net`` that has a gradient in
    ``grads`` (as :func:`backprop` returns them: δθ keyed like ``net.named_parameters()``).

    One step of the loop by hand: ``loss, grads = backprop(net, loss_fn, X, Y)``, then
    ``gradient_descent_step(net, grads, lr)``. (The trainer's manual engine hands the same δθ to
    its optimizer instead.)
    """
    for name, parameter in net.named_parameters():
        if name in grads:
            parameter.sub_(lr * grads[name])  # θ ← θ − lr·δθ
