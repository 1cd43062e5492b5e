"""The slide "NN for MNIST Classification: Gradients and Manual Backprop" (MNIST_NN_manualBP) as ONE
autograd node: an MLP with ReLU hidden layers and its mean softmax cross-entropy, inputs and
labels in, loss out.

Forward, for sizes [784, 512, 256, 10] (the slides' W as (in, out); torch stores Wᵀ)::

    Z1 = f(X W1 + b1),  Z2 = f(Z1 W2 + b2),  Z3 = Z2 W3 + b3 (logits),  L = −(1/N) Σ y log softmax(Z3)

Backward, the slide's nine formulas, line by line::

    δZ3 = Yp − Y                              softmax_cross_entropy_backward (mean: (Yp − Y)/N)
    δZ2 = δZ3 W3ᵀ                             linear_backward of layer 3: δX
    δZ1 = [f'(Z1W2 + b2)·δZ2] W2ᵀ              relu_backward, then linear_backward of layer 2: δX
    δW3 = Z2ᵀ δZ3                             linear_backward of layer 3: δW
    δW2 = Z1ᵀ [f'(Z1W2 + b2)·δZ2]              linear_backward of layer 2: δW
    δW1 = Xᵀ [f'(XW1 + b1)·δZ1]                relu_backward, then linear_backward of layer 1: δW
    δb3 = Σ_l [δZ3]_l,:   δb2 = Σ_l [f'(…)·δZ2]_l,:   δb1 = Σ_l [f'(…)·δZ1]_l,:    linear_backward: δb

for any number of hidden layers: the loop below runs layer L down to layer 1. Every formula is the
one function the per-layer Functions call (``linear.py``, ``activations.py``, ``losses.py``); this
file only chains them, with one autograd node instead of one per layer (on a CPU each Python node
costs tens of µs per step). δX of the first layer (the data) is computed only if asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from manualbp.layers.activations import relu_backward, relu_forward
from manualbp.layers.base import Layer, LayerFunction, apply, is_traced, owns_buffers
from manualbp.layers.linear import (
    Linear,
    LinearReLU,
    TorchLinearReLU,
    _check_linear_arguments,
    _linear_tangent,
    linear,
    linear_backward,
    linear_forward,
    linear_relu,
    share_parameters,
)
from manualbp.layers.losses import (
    SoftmaxCrossEntropyLoss,
    _check_class_range,
    _check_class_targets,
    _loss_tangent,
    positions_as_rows,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)

__all__ = [
    "MLPSoftmaxCrossEntropyFunction",
    "mlp_softmax_cross_entropy",
    "MLPClassifier",
    "TorchMLPClassifier",
    "forward_and_loss",
]


# ----------------------------------------------------------------------------------------------
# The Function: the slide's forward and its nine backward formulas, in one node
# ----------------------------------------------------------------------------------------------


class MLPSoftmaxCrossEntropyFunction(LayerFunction):
    """Mean softmax cross-entropy of an MLP with ReLU hidden layers, in one node.

    Arguments: input X (N, in), target ((N,) class indices or (N, C) probabilities), then
    W1, b1, W2, b2, ..., WL, bL (torch layout: Wk (out_k, in_k), bk (out_k,)).
    Outputs: the loss (scalar), the logits ZL (N, C) and the hidden outputs Z1 ... Z(L−1). The
    logits and hidden outputs are outputs (not intermediates kept on the side) so that double
    backward sees them; the public function returns the loss (and, if asked, the logits).
    Saved for backward: X (only if W1 needs a gradient), the target, the weights, Z1 ... Z(L−1)
    and the logits -- what the per-layer nodes save, no more.
    """

    @staticmethod
    def forward(input, target, *parameters):
        weights, biases = parameters[0::2], parameters[1::2]
        hidden = []
        activation = input
        for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
            # A is a fresh buffer: max(0, A) over it, as LinearReLUFunction does
            activation = relu_forward(linear_forward(activation, weight, bias), inplace=True)  # Zk = f(Z(k−1)Wk + bk)
            hidden.append(activation)
        logits = linear_forward(activation, weights[-1], biases[-1])  # ZL = Z(L−1) WL + bL
        loss = softmax_cross_entropy_forward(logits, target)  # L = −(1/N) Σ y log softmax(ZL)
        return (loss, logits, *hidden)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, *parameters = inputs
        _, logits, *hidden = output
        ctx.set_materialize_grads(False)  # unused outputs (logits, Zk) get None, not zeros to add
        ctx.layer_count = len(parameters) // 2
        weights = parameters[0::2]
        first_weight_needs_grad = ctx.needs_input_grad[2]
        ctx.save_for_backward(input if first_weight_needs_grad else None, target, logits, *weights, *hidden)
        ctx.save_for_forward(input, target, logits, *weights, *hidden)

    @staticmethod
    def backward(ctx, grad_loss, grad_logits, *grad_hidden):
        input, target, logits, *rest = ctx.saved_tensors
        layer_count = ctx.layer_count
        weights, hidden = rest[:layer_count], rest[layer_count:]
        layer_inputs = (input, *hidden)  # layer k takes Z(k−1), with Z0 = X
        needs = ctx.needs_input_grad  # (X, target, W1, b1, W2, b2, ...)

        grad_output = grad_target = None
        if grad_loss is not None:
            grad_output, grad_target = softmax_cross_entropy_backward(  # δZ3 = Yp − Y  (as a mean: (Yp − Y)/N)
                grad_loss, logits, target, needs[1]
            )
        if grad_logits is not None:  # the logits were used too (double backward, return_logits)
            grad_output = grad_logits if grad_output is None else grad_output + grad_logits

        grad_parameters: list[Tensor | None] = [None] * (2 * layer_count)
        made_here = False  # is grad_output a buffer this backward made (and may overwrite)?
        may_overwrite = grad_output is not None and owns_buffers(grad_output)  # asked once, for every layer
        for k in reversed(range(layer_count)):  # layer k + 1 of the slide
            anything_below = needs[0] or any(needs[2 : 2 + 2 * k])  # does δZ(k−1) serve anyone?
            if grad_output is not None:
                if k < layer_count - 1:  # a hidden layer: through f first (over δZk where it is ours)
                    in_place = made_here and may_overwrite
                    grad_output = relu_backward(grad_output, hidden[k], in_place)  # f'(Z(k−1)Wk + bk)·δZk
                # δZ(k−1) = [..] Wkᵀ,  δWk = Z(k−1)ᵀ [..],  δbk = Σ_l [..]_l,:
                grad_output, grad_parameters[2 * k], grad_parameters[2 * k + 1] = linear_backward(
                    grad_output, layer_inputs[k], weights[k], (anything_below, needs[2 + 2 * k], needs[3 + 2 * k])
                )
                made_here = True
            if k > 0 and anything_below and grad_hidden[k - 1] is not None:  # Z(k−1) was used too
                if grad_output is None:
                    grad_output, made_here = grad_hidden[k - 1], False  # autograd's tensor: not ours to overwrite
                else:
                    grad_output = grad_output + grad_hidden[k - 1]
        return (grad_output if needs[0] else None), grad_target, *grad_parameters

    @staticmethod
    def jvp(ctx, input_tangent, target_tangent, *parameter_tangents):
        input, target, logits, *rest = ctx.saved_tensors
        layer_count = ctx.layer_count
        weights, hidden = rest[:layer_count], rest[layer_count:]
        layer_outputs = (*hidden, logits)
        tangents = []
        tangent = input_tangent
        activation = input
        for k in range(layer_count):
            tangent = _linear_tangent(
                activation, weights[k], tangent, parameter_tangents[2 * k], parameter_tangents[2 * k + 1]
            )  # Ȧk = Ż(k−1) Wkᵀ + Z(k−1) Ẇkᵀ + ḃk
            if not isinstance(tangent, Tensor):  # no tangent reached this layer yet: 0
                tangent = torch.zeros_like(layer_outputs[k])
            if k < layer_count - 1:
                tangent = relu_backward(tangent, hidden[k])  # Żk = f'(Ak)·Ȧk
            tangents.append(tangent)
            activation = layer_outputs[k]
        one = torch.ones((), dtype=logits.dtype, device=logits.device)
        grads = softmax_cross_entropy_backward(one, logits, target, target_tangent is not None)
        loss_tangent = _loss_tangent(grads, (tangents[-1], target_tangent))  # L̇ = Σ ∂L/∂ZL · ŻL (+ ∂L/∂y · ẏ)
        return (loss_tangent, tangents[-1], *tangents[:-1])


# ----------------------------------------------------------------------------------------------
# The public function
# ----------------------------------------------------------------------------------------------


def mlp_softmax_cross_entropy(
    input: Tensor,
    target: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    return_logits: bool = False,
):
    """Mean softmax cross-entropy of the MLP Z1 = f(X W1ᵀ + b1), ..., logits = Z(L−1) WLᵀ + bL
    (f = ReLU), in one autograd node whose backward is the MNIST_NN_manualBP slide.

    input: (N, in_features), floating point; target: class indices (N,) or probabilities (N, C);
    weights: [W1 (h1, in_features), ..., WL (C, h(L−1))]; biases: [b1 (h1,), ..., bL (C,)].
    Returns the scalar loss, or ``(loss, logits (N, C))`` with ``return_logits=True``.
    Equal to ``softmax_cross_entropy(linear(... linear_relu(input, W1, b1) ...), target)``.

    Under autocast it runs as those per-layer nodes instead, so that each part gets PyTorch's
    autocast dtype (matmuls in the lower precision, the loss in float32), as ``F.linear`` and
    ``F.cross_entropy`` do.
    """
    weights, biases = list(weights), list(biases)
    if target.dtype == torch.int64 and target.shape == input.shape[:1] and _common_case(input, weights, biases):
        # Every shape and dtype right (the common case, every step): only the classes' range is left.
        if target.shape[0] and not is_traced(target):
            _check_class_range("mlp_softmax_cross_entropy", target, weights[-1].shape[0])
    else:
        _check_mlp_arguments(input, weights, biases)
        target = _check_class_targets("mlp_softmax_cross_entropy", _stand_in(input, weights[-1]), target)
    if torch.is_autocast_enabled(input.device.type):
        return _per_layer_nodes(input, target, weights, biases, return_logits)
    parameters = [tensor for pair in zip(weights, biases, strict=True) for tensor in pair]
    if torch.compiler.is_compiling() and not (
        torch.is_grad_enabled() and any(tensor.requires_grad for tensor in (input, target, *parameters))
    ):
        # Nothing to differentiate, and Dynamo, when nothing needs a gradient, hands a forward(*args)
        # the ctx as its first argument (it counts parameters to decide): run the node's forward alone.
        loss, logits, *_ = MLPSoftmaxCrossEntropyFunction.forward(input, target, *parameters)
    else:
        loss, logits, *_ = apply(MLPSoftmaxCrossEntropyFunction, input, target, *parameters)
    return (loss, logits) if return_logits else loss


def _per_layer_nodes(input, target, weights, biases, return_logits):
    activation = input
    for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
        activation = linear_relu(activation, weight, bias)
    logits = linear(activation, weights[-1], biases[-1])
    loss = softmax_cross_entropy(logits, target)
    return (loss, logits) if return_logits else loss


def _stand_in(input: Tensor, weight: Tensor) -> Tensor:
    """A meta tensor with the shape and dtype of ``linear(input, weight)``, for the checks."""
    return torch.empty((input.shape[0], weight.shape[0]), dtype=input.dtype, device="meta")


def _check_mlp_arguments(input: Tensor, weights: list[Tensor], biases: list[Tensor]) -> None:
    if not weights or len(weights) != len(biases) or any(bias is None for bias in biases):
        raise ValueError(
            f"mlp_softmax_cross_entropy: expected one bias per weight (at least one layer), got "
            f"{len(weights)} weights and {len(biases)} biases; build the layers with bias=True"
        )
    if _common_case(input, weights, biases):
        return
    if input.dim() != 2:
        raise ValueError(
            f"mlp_softmax_cross_entropy: expected an input of shape (N, in_features), got "
            f"{tuple(input.shape)}; flatten it first, e.g. input.flatten(1)"
        )
    features = input
    for weight, bias in zip(weights, biases, strict=True):
        _check_linear_arguments(features, weight, bias)
        features = _stand_in(input, weight)


def _common_case(input: Tensor, weights: list[Tensor], biases: list[Tensor]) -> bool:
    """Every shape and dtype right, checked in a few integer comparisons (this runs every step)."""
    if input.dim() != 2 or not input.is_floating_point() or not weights or len(weights) != len(biases):
        return False
    dtype, features = input.dtype, input.shape[1]
    for weight, bias in zip(weights, biases, strict=True):
        if bias is None:
            return False
        shape = weight.shape
        if len(shape) != 2 or shape[1] != features or weight.dtype != dtype or bias.dtype != dtype:
            return False
        if bias.dim() != 1 or bias.shape[0] != shape[0]:
            return False
        features = shape[0]
    return True


# ----------------------------------------------------------------------------------------------
# The Module, its torch twin, and how a trainer calls it
# ----------------------------------------------------------------------------------------------


class TorchMLPClassifier(torch.nn.Sequential):
    """The same net from torch built-ins (F.linear, F.relu; the loss is ``torch.nn.CrossEntropyLoss``):
    the torch twin of ``MLPClassifier``, with the same parameter names."""


class MLPClassifier(torch.nn.Sequential, Layer, torch_twin=TorchMLPClassifier):
    """The slides' MNIST classifier whose training loss is one autograd node.

    ``sizes = [784, 512, 256, 10]``: Z1 = f(X W1 + b1), Z2 = f(Z1 W2 + b2), logits = Z2 W3 + b3,
    f = ReLU. Its layers, parameter names and state_dict are those of ``MLP(sizes, fuse=True)``
    (``0.weight``, ``1.weight``, ...), so checkpoints move between the two.

    * ``net(inputs)`` -> logits (N, C), through the per-layer nodes (validation, predictions).
    * ``net.loss(inputs, targets)`` -> the mean softmax cross-entropy (scalar) in ONE node whose
      backward is the MNIST_NN_manualBP slide (:class:`MLPSoftmaxCrossEntropyFunction`).
    * :func:`forward_and_loss` (what the trainer calls) picks the one node when the loss is this
      net's ``fused_loss``, ``SoftmaxCrossEntropyLoss``, and ``loss(net(inputs), targets)`` else.
    """

    fused_loss = SoftmaxCrossEntropyLoss  # the loss computed inside the node

    def __init__(self, sizes: Sequence[int], device=None, dtype=None) -> None:
        if len(sizes) < 2 or any(int(size) < 1 for size in sizes):
            raise ValueError(
                f"MLPClassifier: sizes must list at least an input and an output size, all positive, "
                f"got {list(sizes)}"
            )
        factory = {"device": device, "dtype": dtype}
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        layers = [LinearReLU(fan_in, fan_out, **factory) for fan_in, fan_out in pairs[:-1]]
        super().__init__(*layers, Linear(*pairs[-1], **factory))

    def loss(self, inputs: Tensor, targets: Tensor, return_logits: bool = False):
        """Mean softmax cross-entropy of the net on (inputs (N, in), targets (N,) or (N, C)), in
        one node; with ``return_logits=True``, ``(loss, logits)``."""
        # Read from each layer's parameter dict: ``layer.weight`` goes through Module.__getattr__,
        # ~1 µs a parameter, every step.
        parameters = [layer._parameters for layer in self._modules.values()]
        weights, biases = [p["weight"] for p in parameters], [p["bias"] for p in parameters]
        return mlp_softmax_cross_entropy(inputs, targets, weights, biases, return_logits)

    @classmethod
    def from_torch(cls, module: TorchMLPClassifier) -> MLPClassifier:
        sizes = [module[0].in_features, *(layer.out_features for layer in module)]
        net = cls(sizes, device="meta")
        for ours, theirs in zip(net, module, strict=True):
            ours.weight, ours.bias = theirs.weight, theirs.bias
        return net

    def to_torch(self) -> TorchMLPClassifier:
        kinds = [TorchLinearReLU] * (len(self) - 1) + [torch.nn.Linear]
        return TorchMLPClassifier(*(share_parameters(layer, kind) for layer, kind in zip(self, kinds, strict=True)))

    def function_and_arguments(self, inputs: Tensor, targets: Tensor):
        """For the explicit engine: the one node, on (inputs, targets, W1, b1, ..., WL, bL)."""
        weights, biases = [layer.weight for layer in self], [layer.bias for layer in self]
        _check_mlp_arguments(inputs, weights, biases)
        targets = _check_class_targets("MLPClassifier", _stand_in(inputs, weights[-1]), targets)
        return MLPSoftmaxCrossEntropyFunction, (inputs, targets, *self.parameters())


def fuses(net: torch.nn.Module, loss: torch.nn.Module) -> bool:
    """Whether ``net`` computes ``loss`` itself, in one node (an MLPClassifier with softmax CE)."""
    return type(loss) is getattr(net, "fused_loss", None)


def forward_and_loss(net: torch.nn.Module, loss: torch.nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """``loss(net(inputs), targets)``; in one node when the net fuses that loss (``MLPClassifier``
    with ``SoftmaxCrossEntropyLoss``): the forward pass and the loss are one call. A sequence
    model's logits (B, T, C) with targets (B, T) are taken as B·T rows."""
    if fuses(net, loss):
        return net.loss(inputs, targets)
    return loss(*positions_as_rows(net(inputs), targets))  # a sequence's (B, T, C) logits: B·T rows
