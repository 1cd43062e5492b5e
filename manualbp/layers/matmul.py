"""The matrix product C = A B: the linear layer without its bias, for two inputs that both learn
(attention's Q Kᵀ and P V written out by hand, ``x @ w`` in anyone's forward).

For A ``(*, n, k)`` and B ``(*, k, m)``, the leading dimensions broadcast as in ``torch.matmul``:

    C = A B                      (*, n, m)
    δA = δC Bᵀ                   (the linear layer's δX = δZ W)
    δB = Aᵀ δC                   (its δW = XᵀδZ, the slides' layout)

each summed back over the leading dimensions its operand was broadcast along.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manualbp.layers.base import LayerFunction, apply, autocast_enabled, check_floating, hand_writes

__all__ = [
    "matmul_forward",
    "matmul_backward",
    "MatmulFunction",
    "matmul",
    "sum_to_shape",
]


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------


def matmul_forward(first: Tensor, second: Tensor) -> Tensor:
    """C = A B. first A: ``(*, n, k)``; second B: ``(*, k, m)``, leading dimensions broadcast. Returns ``(*, n, m)``."""
    return torch.matmul(first, second)  # C = A B


def matmul_backward(
    grad_output: Tensor,
    first: Tensor | None,
    second: Tensor | None,
    shapes: tuple[torch.Size, torch.Size],
    needs_grad: tuple[bool, bool] = (True, True),
) -> tuple[Tensor | None, Tensor | None]:
    """δA = δC Bᵀ and δB = Aᵀ δC of C = A B, each at its operand's shape (``shapes``: A's and
    B's; summed over the leading dimensions it was broadcast along), each only if ``needs_grad``
    asks for it (A may be None when δB is not needed, B when δA is not).

    grad_output δC: ``(*, n, m)``; first A: ``(*, n, k)``; second B: ``(*, k, m)``."""
    grad_first = grad_second = None
    if needs_grad[0]:
        grad_first = sum_to_shape(torch.matmul(grad_output, second.mT), shapes[0])  # δA = δC Bᵀ
    if needs_grad[1]:
        grad_second = sum_to_shape(torch.matmul(first.mT, grad_output), shapes[1])  # δB = Aᵀ δC
    return grad_first, grad_second


def sum_to_shape(gradient: Tensor, shape: torch.Size) -> Tensor:
    """A gradient of a broadcast result summed back to the operand's ``shape`` (the leading
    dimensions the operand lacked, and those where it had size 1)."""
    leading = gradient.dim() - len(shape)
    if leading:
        gradient = gradient.sum(tuple(range(leading)))
    dims = tuple(i for i, size in enumerate(shape) if size == 1 and gradient.shape[i] != 1)
    return gradient.sum(dims, keepdim=True) if dims else gradient


def sum_to_shape_per_example(gradient: Tensor, shape: torch.Size) -> Tensor:
    """Each example's share of :func:`sum_to_shape`: ``gradient`` (N, ...), the batch first, summed
    back to an operand of ``shape`` broadcast over it, but not over the batch: ``(N, *shape)``. What
    ``manualbp.per_example`` needs of a parameter broadcast against activations (a layer scale γ)."""
    leading = gradient.dim() - len(shape)
    if leading == 0:  # the operand has the batch's dimension: of size 1 (broadcast over the batch), or its own
        if shape[0] != 1:
            return gradient
        dims = tuple(i for i, size in enumerate(shape) if i and size == 1 and gradient.shape[i] != 1)
        return (gradient.sum(dims, keepdim=True) if dims else gradient).unsqueeze(1)  # (N, 1, ...)
    if leading > 1:
        gradient = gradient.sum(tuple(range(1, leading)))  # the dimensions the operand lacked, but the batch's
    dims = tuple(i + 1 for i, size in enumerate(shape) if size == 1 and gradient.shape[i + 1] != 1)
    return gradient.sum(dims, keepdim=True) if dims else gradient


# ----------------------------------------------------------------------------------------------
# The Function and the public function
# ----------------------------------------------------------------------------------------------


class MatmulFunction(LayerFunction):
    """C = A B with the hand-written backward δA = δC Bᵀ, δB = Aᵀ δC; saves A and B only."""

    @staticmethod
    def forward(first, second):
        return matmul_forward(first, second)

    @staticmethod
    def setup_context(ctx, inputs, output):
        first, second = inputs
        ctx.shapes = first.shape, second.shape
        # δA needs B, δB needs A: keep each only where the other wants a gradient.
        ctx.save_for_backward(first if ctx.needs_input_grad[1] else None,
                              second if ctx.needs_input_grad[0] else None)
        ctx.save_for_forward(first, second)

    @staticmethod
    def backward(ctx, grad_output):
        first, second = ctx.saved_tensors
        return matmul_backward(grad_output, first, second, ctx.shapes, ctx.needs_input_grad[:2])

    @staticmethod
    def jvp(ctx, first_tangent, second_tangent):
        first, second = ctx.saved_tensors
        tangent = 0  # Ċ = Ȧ B + A Ḃ
        if first_tangent is not None:
            tangent = tangent + torch.matmul(first_tangent, second)
        if second_tangent is not None:
            tangent = tangent + torch.matmul(first, second_tangent)
        return tangent


@hand_writes(torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.bmm, Tensor.bmm)
def matmul(input: Tensor, other: Tensor, *, out: Tensor | None = None) -> Tensor:
    """A B like ``torch.matmul`` for operands of at least two dimensions (leading dimensions
    broadcast), with the hand-written backward. input ``(*, n, k)``, other ``(*, k, m)`` -> ``(*, n, m)``.

    A vector operand (1-D) or ``out=`` is not supported (NotImplementedError: under
    ``manualbp.hand_written()`` PyTorch's matmul runs instead)."""
    if out is not None:
        raise NotImplementedError("matmul: out= is not supported (autograd cannot record it)")
    if input.dim() < 2 or other.dim() < 2:
        raise NotImplementedError(
            f"matmul: expected operands of at least 2 dimensions, got {tuple(input.shape)} and "
            f"{tuple(other.shape)}; unsqueeze a vector to a (1, k) or (k, 1) matrix"
        )
    check_floating("matmul", "input", input)
    check_floating("matmul", "other", other)
    if input.shape[-1] != other.shape[-2]:
        raise ValueError(f"matmul: expected input (*, n, k) and other (*, k, m), got {tuple(input.shape)} and "
                         f"{tuple(other.shape)} (k = {input.shape[-1]} ≠ {other.shape[-2]})")
    try:
        torch.broadcast_shapes(input.shape[:-2], other.shape[:-2])
    except RuntimeError:
        raise ValueError(f"matmul: the leading dimensions of {tuple(input.shape)} and {tuple(other.shape)} "
                         f"do not broadcast") from None
    if input.dtype != other.dtype and not autocast_enabled(input.device.type):
        raise TypeError(f"matmul: expected operands of one dtype, got {input.dtype} and {other.dtype}; "
                        f"convert one of them, e.g. other.to(input.dtype)")
    return apply(MatmulFunction, input, other, autocast_to="lower")
