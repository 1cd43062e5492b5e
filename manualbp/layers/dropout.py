"""Dropout with a hand-written backward.

In training, each value is kept with probability 1 − p and scaled by 1/(1 − p), or zeroed:
Z = X·m with m = keep/(1 − p), keep ~ Bernoulli(1 − p), so δX = m·δZ = keep·δZ/(1 − p).
The mask m is drawn from torch's random generator exactly as ``torch.nn.functional.dropout``
draws it on the CPU, so under the same seed the same values are dropped. It is an input of the
Function (saved for backward like any input), drawn before it, so the Function is deterministic.

Shapes: input any shape; the mask and the output have the input's shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manualbp.layers.base import LayerFunction, apply, hand_writes, refuse_inplace
from manualbp.layers.sharing import SharesState

__all__ = ["dropout", "dropout_mask", "dropout_forward", "dropout_backward", "DropoutFunction", "Dropout"]


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------


def dropout_mask(input: Tensor, p: float) -> Tensor:
    """m = keep/(1 − p) with keep ~ Bernoulli(1 − p) per value (as torch's CPU dropout draws it);
    all zeros for p = 1. Shape and dtype of the input."""
    if p == 1:
        return torch.zeros_like(input)  # everything dropped (and no division by 1 − p = 0)
    return torch.empty_like(input).bernoulli_(1 - p).div_(1 - p)  # m = keep/(1 − p)


def dropout_forward(input: Tensor, mask: Tensor) -> Tensor:
    """Z = X·m. input X and mask m: the same shape. Returns Z: that shape."""
    return input * mask  # Z = X·m


def dropout_backward(grad_output: Tensor, mask: Tensor) -> Tensor:
    """δX = m·δZ = keep·δZ/(1 − p). grad_output δZ and mask m: the same shape."""
    return grad_output * mask  # δX = m·δZ


# ----------------------------------------------------------------------------------------------
# The autograd Function
# ----------------------------------------------------------------------------------------------


class DropoutFunction(LayerFunction):
    """Z = X·m for a given mask m (no gradient); backward δX = m·δZ. Saves the mask only."""


    @staticmethod
    def forward(input, mask):
        return dropout_forward(input, mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, mask = inputs
        ctx.save_for_backward(mask)
        ctx.save_for_forward(mask)

    @staticmethod
    def backward(ctx, grad_output):
        (mask,) = ctx.saved_tensors
        return dropout_backward(grad_output, mask) if ctx.needs_input_grad[0] else None, None

    @staticmethod
    def jvp(ctx, input_tangent, mask_tangent):
        (mask,) = ctx.saved_tensors
        return dropout_backward(input_tangent, mask)  # diagonal Jacobian: Ż = m·Ẋ


# ----------------------------------------------------------------------------------------------
# The public function
# ----------------------------------------------------------------------------------------------


@hand_writes(torch.nn.functional.dropout)
def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Dropout like ``torch.nn.functional.dropout``, with the hand-written backward (never in
    place: ``inplace=True`` raises NotImplementedError).

    input: any shape, floating point. In training, each value is zeroed with probability p and
    the rest scaled by 1/(1 − p); p = 0 or ``training=False`` returns the input itself (as torch
    does). The same seed drops the same values as ``torch.nn.functional.dropout`` on the CPU.
    """
    if inplace:
        refuse_inplace("dropout", "manualbp's dropout never runs in place")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"dropout: probability has to be between 0 and 1, but got {p!r}")
    if not input.is_floating_point():
        raise TypeError(f"dropout: expected a floating-point input, got dtype {input.dtype}; use input.float()")
    if p == 0 or not training or input.numel() == 0:
        return input
    return apply(DropoutFunction, input, dropout_mask(input, p))


class Dropout(torch.nn.Dropout, SharesState, torch_twin=torch.nn.Dropout):
    """``torch.nn.Dropout`` with the hand-written backward δX = m·δZ (never in place); any shape.
    The same seed drops the same values as torch.nn.Dropout on the CPU."""

    def forward(self, input: Tensor) -> Tensor:
        return dropout(input, self.p, self.training)

    def function_and_arguments(self, input: Tensor):
        dropout(input.new_empty(0), self.p, self.training)  # the argument checks
        drops = self.training and self.p > 0
        return DropoutFunction, (input, dropout_mask(input, self.p) if drops else torch.ones_like(input))
