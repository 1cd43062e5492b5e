"""Leaky ReLU with a hand-written backward (to join the activations at integration).

Z = X if X > 0 else a·X (a = negative_slope), elementwise; δX = δZ if X > 0 else a·δZ.
Shapes: any; output and gradients have the input's shape.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from manualbp.layers._interim_apply import apply_function, with_copies

__all__ = ["leaky_relu", "leaky_relu_forward", "leaky_relu_backward", "LeakyReLUFunction"]


def leaky_relu_forward(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    """Z = X if X > 0 else a·X, elementwise; any shape."""
    return torch.nn.functional.leaky_relu(input, negative_slope)  # Z = X if X>0 else a·X (one fused kernel)


def leaky_relu_backward(grad_output: Tensor, saved: Tensor, negative_slope: float = 0.01) -> Tensor:
    """δX = δZ if X > 0 else a·δZ; any shape.

    ``saved`` is X, or Z when a ≥ 0 (then Z > 0 exactly where X > 0). At X = 0 (and for NaN X)
    the slope is a, as in torch.
    """
    return torch.where(saved > 0, grad_output, grad_output * negative_slope)  # δX = δZ if X>0 else a·δZ


@with_copies("leaky_relu")
class LeakyReLUFunction(Function):
    """Z = X if X > 0 else a·X, with backward δZ if X > 0 else a·δZ."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, negative_slope):
        return leaky_relu_forward(input, negative_slope)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.negative_slope = inputs
        # Z tells where X > 0 when a ≥ 0, and the next layer often keeps Z anyway (no extra memory).
        saved = output if ctx.negative_slope >= 0 else input
        ctx.save_for_backward(saved)
        ctx.save_for_forward(saved)

    @staticmethod
    def backward(ctx, grad_output):
        (saved,) = ctx.saved_tensors
        return leaky_relu_backward(grad_output, saved, ctx.negative_slope), None

    @staticmethod
    def jvp(ctx, input_tangent, slope_tangent):
        (saved,) = ctx.saved_tensors
        return leaky_relu_backward(input_tangent, saved, ctx.negative_slope)  # diagonal: Ż = f'(X)·Ẋ


def leaky_relu(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    """X if X > 0 else negative_slope·X elementwise, like ``torch.nn.functional.leaky_relu``."""
    if not input.is_floating_point():
        raise TypeError(f"leaky_relu: expected a floating-point input, got dtype {input.dtype}; use input.float()")
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise TypeError(f"leaky_relu: expected negative_slope as a number, got {negative_slope!r}")
    return apply_function("leaky_relu", input, float(negative_slope))
