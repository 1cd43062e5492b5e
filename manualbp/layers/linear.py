"""The linear layer Z = X Wᵀ + b, and the slides' MNIST layer Z = f(X Wᵀ + b), f = ReLU, fused.

Layout: torch stores a Linear weight as ``(out_features, in_features)`` and computes Z = X Wᵀ + b.
The slides store W as ``(in, out)`` and write Z = X W + b; their δW = XᵀδZ and δX = δZ Wᵀ are, in
torch's layout, δW = δZᵀX and δX = δZ W -- the same numbers, transposed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manualbp.layers.activations import relu_backward, relu_forward
from manualbp.layers.base import (
    Layer,
    LayerFunction,
    apply,
    as_rows,
    autocast_enabled,
    check_floating,
    hand_writes,
    is_traced,
)

__all__ = [
    "linear_forward",
    "linear_backward",
    "linear_per_example",
    "linear_per_example_norms",
    "rows_per_example_norms",
    "LinearFunction",
    "linear",
    "Linear",
    "LinearReLUFunction",
    "linear_relu",
    "LinearReLU",
    "TorchLinearReLU",
    "share_parameters",
]


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------


def linear_forward(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Z = X Wᵀ + b.

    input: ``(*, in_features)``; weight: (out_features, in_features); bias: (out_features,) or None.
    Returns Z: ``(*, out_features)``.
    """
    if input.dim() == 2 and bias is not None:
        return torch.addmm(bias, input, weight.t())  # Z = X Wᵀ + b, in one GEMM
    # Any other rank: matmul folds the leading dimensions into one GEMM and returns a fresh tensor
    # (not a view, which autograd would forbid modifying in place, e.g. by ReLU(inplace=True)).
    output = input @ weight.t()  # Z = X Wᵀ
    if bias is None:
        return output
    # + b in place, as PyTorch's own linear does: no second (*, out_features) buffer. Under a
    # torch.func transform b may be batched where Z is not, which in place cannot be: add anew.
    return output + bias if is_traced(bias) else output.add_(bias)  # ... + b


def linear_backward(
    grad_output: Tensor,
    input: Tensor | None,
    weight: Tensor,
    needs_grad: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """δX, δW, δb of Z = X Wᵀ + b, each computed only if ``needs_grad`` asks for it.

    grad_output δZ: ``(*, out_features)``; input X: ``(*, in_features)`` (may be None if δW is not
    needed); weight W: (out_features, in_features).
    Returns δX: ``(*, in_features)``, δW: (out_features, in_features), δb: (out_features,).
    """
    grad_rows = as_rows(grad_output)
    grad_input = grad_weight = grad_bias = None
    if needs_grad[0]:
        grad_input = grad_output @ weight  # δX = δZ·W   (slides, W as (in, out): δZ Wᵀ)
    if needs_grad[1]:
        grad_weight = grad_rows.t().mm(as_rows(input))  # δW = δZᵀX   (slides: XᵀδZ)
    if needs_grad[2]:
        grad_bias = grad_rows.sum(0)  # δb = Σ_k δZ_k,:
    return grad_input, grad_weight, grad_bias


def linear_per_example(
    grad_output: Tensor, input: Tensor | None, needs_grad: tuple[bool, bool, bool] = (False, True, True)
) -> tuple[None, Tensor | None, Tensor | None]:
    """Each example's term of δW and δb: δW = Σₖ δWₖ, δWₖ = δZₖᵀXₖ, δbₖ = Σ δZₖ (for a sequence, the
    sum runs over its positions too: δWₖ = Σₜ δzₖₜᵀ xₖₜ).

    grad_output δZ: ``(N, *, out_features)``; input X: ``(N, *, in_features)``, the batch first (a single
    example without a batch dimension counts as N = 1). Returns None (no per-example δX), δWₖ:
    (N, out_features, in_features), δbₖ: (N, out_features).
    """
    grad_rows = _example_rows(grad_output)  # (N, T, out)
    grad_weight = grad_rows.mT @ _example_rows(input) if needs_grad[1] else None  # δWₖ = δZₖᵀXₖ
    grad_bias = grad_rows.sum(1) if needs_grad[2] else None  # δbₖ = Σₜ δZₖₜ
    return None, grad_weight, grad_bias


def linear_per_example_norms(
    grad_output: Tensor, input: Tensor | None, needs_grad: tuple[bool, bool, bool] = (False, True, True)
) -> tuple[None, Tensor | None, Tensor | None]:
    """‖δWₖ‖² and ‖δbₖ‖² of :func:`linear_per_example`, (N,) each, without making δWₖ where that is
    cheaper ("ghost norms"): on rows (one position per example) ‖δzₖᵀxₖ‖² = ‖xₖ‖²·‖δzₖ‖²; on sequences
    ‖Σₜ δzₜᵀxₜ‖² = Σₜₛ (xₜ·xₛ)(δzₜ·δzₛ), from the two T × T Gram matrices when T² < out·in.
    Shapes as for :func:`linear_per_example`."""
    return rows_per_example_norms(_example_rows(grad_output), None if input is None else _example_rows(input),
                                  needs_grad)


def rows_per_example_norms(grad_rows: Tensor, input_rows: Tensor | None, needs_grad) -> tuple:
    """The ghost norms of a layer that is the linear layer on rows: grad_rows δZ (N, T, out),
    input_rows X (N, T, in); returns (None, ‖δWₖ‖², ‖δbₖ‖²), each (N,) or None. A convolution
    passes its patches as the rows (conv.py)."""
    squared_weight = squared_bias = None
    if needs_grad[1]:
        positions, outputs, inputs = grad_rows.shape[1], grad_rows.shape[2], input_rows.shape[2]
        if positions == 1:
            squared_weight = grad_rows.square().sum((1, 2)) * input_rows.square().sum((1, 2))  # ‖δz‖²‖x‖²
        elif positions * positions < outputs * inputs:
            grams = (input_rows @ input_rows.mT) * (grad_rows @ grad_rows.mT)  # (xₜ·xₛ)(δzₜ·δzₛ)
            squared_weight = grams.sum((1, 2))  # Σₜₛ
        else:
            squared_weight = (grad_rows.mT @ input_rows).square().sum((1, 2))  # ‖δZₖᵀXₖ‖²
    if needs_grad[2]:
        squared_bias = grad_rows.sum(1).square().sum(1)  # ‖Σₜ δzₜ‖²
    return None, squared_weight, squared_bias


def _example_rows(tensor: Tensor) -> Tensor:
    """``(N, *, features)`` -> (N, positions, features); a tensor without a batch dimension is one example."""
    if tensor.dim() == 1:
        return tensor.reshape(1, 1, tensor.shape[0])
    return tensor.reshape(tensor.shape[0], -1, tensor.shape[-1])


# The MNIST layer Z = f(X Wᵀ + b) is these formulas and relu_forward / relu_backward
# (activations.py) in one node: see LinearReLUFunction below.


# ----------------------------------------------------------------------------------------------
# The layers: Function, public function, Module
# ----------------------------------------------------------------------------------------------


def _linear_tangent(input, weight, input_tangent, weight_tangent, bias_tangent) -> Tensor:
    """Forward-mode derivative of Z = X Wᵀ + b: Ż = Ẋ Wᵀ + X Ẇᵀ + ḃ (missing tangents are 0)."""
    tangent = 0
    if input_tangent is not None:
        tangent = tangent + linear_forward(input_tangent, weight)  # Ẋ Wᵀ
    if weight_tangent is not None:
        tangent = tangent + linear_forward(input, weight_tangent)  # X Ẇᵀ
    if bias_tangent is not None:
        tangent = tangent + bias_tangent  # ḃ
    return tangent


class LinearFunction(LayerFunction):
    """Z = X Wᵀ + b with the hand-written backward δX = δZ W, δW = δZᵀX, δb = Σ δZ."""

    @staticmethod
    def forward(input, weight, bias):
        return linear_forward(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        # δX needs W, δW needs X: keep X only when W wants a gradient.
        ctx.save_for_backward(input if ctx.needs_input_grad[1] else None, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        return linear_backward(grad_output, input, weight, ctx.needs_input_grad)

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent):
        input, weight = ctx.saved_tensors
        return _linear_tangent(input, weight, input_tangent, weight_tangent, bias_tangent)

    @staticmethod
    def per_example(ctx, grad_output):
        input, _ = ctx.saved_tensors
        return linear_per_example(grad_output, input, ctx.needs_input_grad)

    @staticmethod
    def per_example_norms(ctx, grad_output):
        input, _ = ctx.saved_tensors
        return linear_per_example_norms(grad_output, input, ctx.needs_input_grad)


@hand_writes(torch.nn.functional.linear)
def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Z = X Wᵀ + b, like ``torch.nn.functional.linear``, with the hand-written backward.

    input: ``(*, in_features)``, floating point; weight: (out_features, in_features);
    bias: (out_features,) or None. Returns ``(*, out_features)``.
    Under autocast it runs in the autocast dtype (bfloat16 on CPU), like ``F.linear``.
    """
    _check_linear_arguments(input, weight, bias)
    return apply(LinearFunction, input, weight, bias, autocast_to="lower")


class Linear(torch.nn.Linear, Layer, torch_twin=torch.nn.Linear):
    """Z = X Wᵀ + b with the hand-written backward; a drop-in for ``torch.nn.Linear``.

    Input ``(*, in_features)`` -> output ``(*, out_features)``. ``weight``: (out_features, in_features),
    ``bias``: (out_features,) or None; same names, shapes and initialisation as torch.nn.Linear.
    """

    def forward(self, input: Tensor) -> Tensor:
        return linear(input, self.weight, self.bias)

    @classmethod
    def from_torch(cls, module: torch.nn.Linear) -> Linear:
        return share_parameters(module, cls)

    def to_torch(self) -> torch.nn.Linear:
        return share_parameters(self, self.torch_twin)

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(4, 4).to(dtype), (torch.randn(6, 4, dtype=dtype),)

    def function_and_arguments(self, input: Tensor):
        _check_linear_arguments(input, self.weight, self.bias)
        return LinearFunction, (input, self.weight, self.bias)


class LinearReLUFunction(LayerFunction):
    """One layer of the slides' MNIST net in one node: Z = f(X Wᵀ + b) with f = ReLU.

    Backward, as on the MNIST slide: δA = f'(A)·δZ, then δX = δA W, δW = δAᵀX, δb = Σ δA -- the
    same ``relu_backward`` and ``linear_backward`` as the separate layers, with no intermediate
    saved: f'(A) is read off the saved output (Z > 0 exactly where A > 0).
    """

    @staticmethod
    def forward(input, weight, bias):
        return relu_forward(linear_forward(input, weight, bias), inplace=True)  # A is fresh: max(0, A) over it

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        ctx.save_for_backward(input if ctx.needs_input_grad[1] else None, weight, output)
        ctx.save_for_forward(input, weight, output)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, output = ctx.saved_tensors
        grad_preactivation = relu_backward(grad_output, output)  # δA = f'(A)·δZ
        return linear_backward(grad_preactivation, input, weight, ctx.needs_input_grad)

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent):
        input, weight, output = ctx.saved_tensors
        tangent = _linear_tangent(input, weight, input_tangent, weight_tangent, bias_tangent)
        return relu_backward(tangent, output)  # Ż = f'(A)·Ȧ

    @staticmethod
    def per_example(ctx, grad_output):
        input, _, output = ctx.saved_tensors
        return linear_per_example(relu_backward(grad_output, output), input, ctx.needs_input_grad)  # δA, then δWₖ

    @staticmethod
    def per_example_norms(ctx, grad_output):
        input, _, output = ctx.saved_tensors
        return linear_per_example_norms(relu_backward(grad_output, output), input, ctx.needs_input_grad)


def linear_relu(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """max(0, X Wᵀ + b) in one autograd node (the slides' Z = f(XW + b), f = ReLU).

    Equal to ``relu(linear(input, weight, bias))`` in values and gradients, faster and lighter.
    Shapes as for :func:`linear`.
    """
    _check_linear_arguments(input, weight, bias)
    return apply(LinearReLUFunction, input, weight, bias, autocast_to="lower")


class TorchLinearReLU(torch.nn.Linear):
    """max(0, X Wᵀ + b) from torch built-ins (F.linear, F.relu); the torch twin of ``LinearReLU``."""

    def forward(self, input: Tensor) -> Tensor:
        return torch.nn.functional.relu(torch.nn.functional.linear(input, self.weight, self.bias))  # scriptable


class LinearReLU(torch.nn.Linear, Layer, torch_twin=TorchLinearReLU):
    """Z = max(0, X Wᵀ + b) in one autograd node: a ``Linear`` followed by ``ReLU``, fused.

    The slides' MNIST layer Z1 = f(X W1 + b1). Same parameters as ``Linear``; values and gradients
    equal ``ReLU()(Linear(...)(x))``, with one node and one saved activation instead of two.
    """

    def forward(self, input: Tensor) -> Tensor:
        return linear_relu(input, self.weight, self.bias)

    @classmethod
    def from_torch(cls, module: TorchLinearReLU) -> LinearReLU:
        return share_parameters(module, cls)

    def to_torch(self) -> TorchLinearReLU:
        return share_parameters(self, self.torch_twin)

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(4, 4).to(dtype), (torch.randn(6, 4, dtype=dtype),)

    def function_and_arguments(self, input: Tensor):
        _check_linear_arguments(input, self.weight, self.bias)
        return LinearReLUFunction, (input, self.weight, self.bias)


def share_parameters(linear: torch.nn.Linear, kind: type[torch.nn.Linear]) -> torch.nn.Linear:
    """A ``kind`` layer (a torch.nn.Linear subclass) using ``linear``'s own Parameter objects."""
    twin = kind(linear.in_features, linear.out_features, bias=False, device="meta")
    twin.weight, twin.bias = linear.weight, linear.bias
    return twin


def _check_linear_arguments(input: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if (  # the common case, checked in a few cheap comparisons (this runs every layer, every step)
        input.dtype == weight.dtype
        and input.is_floating_point()
        and weight.dim() == 2
        and input.shape[-1:] == weight.shape[1:]
        and (bias is None or (bias.shape == weight.shape[:1] and bias.dtype == weight.dtype))
    ):
        return
    check_floating("linear", "input", input)
    if weight.dim() != 2:
        raise ValueError(
            f"linear: expected a weight of shape (out_features, in_features), "
            f"got shape {tuple(weight.shape)}"
        )
    out_features, in_features = weight.shape
    if input.dim() == 0:
        raise ValueError(
            f"linear: expected an input of shape (*, {in_features}), got a 0-d tensor (a scalar); "
            f"give it a feature dimension, e.g. input.reshape(1, 1) for in_features=1"
        )
    if input.shape[-1] != in_features:
        got = input.shape[-1]
        raise ValueError(
            f"linear: expected {in_features} input features, got {got} "
            f"(input shape {tuple(input.shape)}, weight shape {tuple(weight.shape)}); the last "
            f"dimension of the input must equal in_features -- flatten or reshape the input, "
            f"or build the layer with in_features={got}"
        )
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(
            f"linear: expected a bias of shape ({out_features},), got {tuple(bias.shape)}"
        )
    if not autocast_enabled(input.device.type):
        for argument, tensor in (("weight", weight), ("bias", bias)):
            if tensor is not None and tensor.dtype != input.dtype:
                raise TypeError(
                    f"linear: input is {input.dtype} but {argument} is {tensor.dtype}; use one "
                    f"dtype for both, e.g. model.to({input.dtype}) or input.to({tensor.dtype})"
                )
