"""Matrix products with an added term, Z = β·C + α·A B (``torch.addmm`` for matrices, the way
Hugging Face's GPT-2 ``Conv1D`` computes its layers; ``torch.baddbmm`` for batches of them):

    δC = β·δZ          (summed over the dimensions C was broadcast along, as δb over the batch)
    δA = α·δZ Bᵀ       (the linear layer's δX = δZ W)
    δB = α·Aᵀ δZ       (its δW = XᵀδZ)

The plain product (``torch.bmm``, ``@``) is ``matmul.py``'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manualbp.layers.base import LayerFunction, apply, hand_writes
from manualbp.layers.elementwise import check_operands, refuse_out
from manualbp.layers.matmul import matmul_backward, sum_to_shape

__all__ = ["AddmmFunction", "addmm", "baddbmm"]


class AddmmFunction(LayerFunction):
    """Z = β·C + α·A B (``batched``: baddbmm), δC = β·δZ, δA = α·δZ Bᵀ, δB = α·Aᵀ δZ."""

    @staticmethod
    def forward(added, first, second, beta, alpha, batched):
        product = torch.baddbmm if batched else torch.addmm
        return product(added, first, second, beta=beta, alpha=alpha)  # Z = βC + α·A B

    @staticmethod
    def setup_context(ctx, inputs, output):
        added, first, second, ctx.beta, ctx.alpha, _ = inputs
        ctx.shapes = added.shape, first.shape, second.shape
        ctx.save_for_backward(first if ctx.needs_input_grad[2] else None, second if ctx.needs_input_grad[1] else None)
        ctx.save_for_forward(first, second)

    @staticmethod
    def backward(ctx, grad_output):
        first, second = ctx.saved_tensors
        grad_added = None
        if ctx.needs_input_grad[0]:
            scaled = grad_output if ctx.beta == 1 else grad_output * ctx.beta  # δC = β·δZ
            grad_added = sum_to_shape(scaled, ctx.shapes[0])
        grad_first, grad_second = matmul_backward(grad_output, first, second, ctx.shapes[1:], ctx.needs_input_grad[1:3])
        if ctx.alpha != 1:  # δA = α·δZ Bᵀ, δB = α·Aᵀ δZ
            grad_first = None if grad_first is None else grad_first * ctx.alpha
            grad_second = None if grad_second is None else grad_second * ctx.alpha
        return grad_added, grad_first, grad_second, None, None, None

    @staticmethod
    def jvp(ctx, added_tangent, first_tangent, second_tangent, *_):
        first, second = ctx.saved_tensors
        tangent = 0  # Ż = β·Ċ + α·(Ȧ B + A Ḃ)
        if added_tangent is not None:
            tangent = tangent + added_tangent * ctx.beta
        if first_tangent is not None:
            tangent = tangent + torch.matmul(first_tangent, second) * ctx.alpha
        if second_tangent is not None:
            tangent = tangent + torch.matmul(first, second_tangent) * ctx.alpha
        return tangent


def _checked(name: str, input, mat1, mat2, beta, alpha, dims: int, out) -> None:
    refuse_out(name, out)
    check_operands(name, input, mat1, mat2, beta, alpha)
    if not (isinstance(mat1, Tensor) and isinstance(mat2, Tensor)) or mat1.dim() != dims or mat2.dim() != dims:
        raise NotImplementedError(f"{name}: expected two {dims}-D tensors to multiply; PyTorch's {name} handles others")
    if beta == 0:
        raise NotImplementedError(f"{name}: beta=0 ignores input (NaN included), which the formula does not; "
                                  f"PyTorch's {name} computes it")


@hand_writes(torch.addmm, Tensor.addmm)
def addmm(input: Tensor, mat1: Tensor, mat2: Tensor, *, beta=1, alpha=1, out: Tensor | None = None) -> Tensor:
    """β·C + α·A B like ``torch.addmm``: input C broadcast to (n, m), mat1 A (n, k), mat2 B (k, m)."""
    _checked("addmm", input, mat1, mat2, beta, alpha, 2, out)
    return apply(AddmmFunction, input, mat1, mat2, beta, alpha, False)


@hand_writes(torch.baddbmm, Tensor.baddbmm)
def baddbmm(input: Tensor, batch1: Tensor, batch2: Tensor, *, beta=1, alpha=1, out: Tensor | None = None) -> Tensor:
    """β·C + α·A B per batch like ``torch.baddbmm``: C broadcast to (b, n, m), A (b, n, k), B (b, k, m)."""
    _checked("baddbmm", input, batch1, batch2, beta, alpha, 3, out)
    return apply(AddmmFunction, input, batch1, batch2, beta, alpha, True)
