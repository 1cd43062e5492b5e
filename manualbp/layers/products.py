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

__all__ = ["AddmmFunction", "addmm", "baddbmm", "einsum_backward_equations", "EinsumFunction", "einsum"]


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


# ----------------------------------------------------------------------------------------------
# einsum: a product of any number of tensors, summed over the letters the output leaves out
# ----------------------------------------------------------------------------------------------


def einsum_backward_equations(equation: str) -> list[str]:
    """For ``"ij,jk->ik"``, operand i's δ as an einsum of δZ and the other operands, which the
    chain rule gives for a multilinear map: δA = einsum("ik,jk->ij", δZ, B), δB = einsum("ij,ik->jk", A, δZ)
    -- each letter of the operand is kept, every other letter summed. ``equation``: explicit
    (``->``), letters only, no letter twice in one operand (the checks of :func:`einsum` ensure it)."""
    inputs, output = equation.split("->")
    subscripts = inputs.split(",")
    equations = []
    for index, own in enumerate(subscripts):
        others = [output] + [s for i, s in enumerate(subscripts) if i != index]
        kept = "".join(letter for letter in own if any(letter in other for other in others))  # letters δ can carry
        equations.append(f"{','.join(others)}->{kept}")
    return equations


class EinsumFunction(LayerFunction):
    """Z = einsum(equation, A, B, ...), δA = einsum(δZ, B, ... → A's letters) (and so for each operand),
    a letter that only A has (summed inside A alone) broadcast back over A's extent."""

    @staticmethod
    def forward(equation, *operands):
        return torch.einsum(equation, *operands)  # Z = Σ over the letters the output leaves out of Π operands

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.equation, *operands = inputs
        ctx.save_for_backward(*operands)
        ctx.save_for_forward(*operands)

    @staticmethod
    def backward(ctx, grad_output):
        operands = ctx.saved_tensors
        own_subscripts = ctx.equation.split("->")[0].split(",")
        grads = []
        for index, (equation, own) in enumerate(zip(einsum_backward_equations(ctx.equation), own_subscripts,
                                                    strict=True)):
            if not ctx.needs_input_grad[index + 1]:
                grads.append(None)
                continue
            others = [operand for i, operand in enumerate(operands) if i != index]
            grad = torch.einsum(equation, grad_output, *others)  # δA = einsum(δZ, B, ... -> A)
            kept = equation.split("->")[1]
            if kept != own:  # letters only A has: δ is the same all along them
                shape = operands[index].shape
                grad = grad.reshape([shape[own.index(letter)] if letter in kept else 1 for letter in own]).expand(shape)
            grads.append(grad)
        return None, *grads

    @staticmethod
    def jvp(ctx, equation_tangent, *tangents):
        operands = ctx.saved_tensors
        tangent = 0  # Ż = Σᵢ einsum(..., Ȧᵢ, ...): the product rule
        for index, operand_tangent in enumerate(tangents):
            if operand_tangent is not None:
                with_tangent = [operand_tangent if i == index else operand for i, operand in enumerate(operands)]
                tangent = tangent + torch.einsum(ctx.equation, *with_tangent)
        return tangent


def _explicit_equation(equation: str, operands: tuple[Tensor, ...]) -> str:
    """``equation`` with its output written out (``"ij,jk"`` is ``"ij,jk->ik"``: the letters used once,
    in alphabetical order) and spaces removed; NotImplementedError for what einsum's formula here does
    not cover (``...``, a letter twice in one operand, a letter of different sizes, broadcast size-1 dims)."""
    equation = equation.replace(" ", "")
    if "." in equation:
        raise NotImplementedError("einsum: '...' is left to PyTorch's einsum; write the dimensions out")
    inputs, arrow, output = equation.partition("->")
    subscripts = inputs.split(",")
    if len(subscripts) != len(operands) or not all(s.isalpha() for s in subscripts) or not output.isalpha() and output:
        raise NotImplementedError(f"einsum: expected {len(operands)} subscripts of letters, got {equation!r}")
    if not arrow:
        counts = {letter: inputs.count(letter) for letter in set(inputs.replace(",", ""))}
        output = "".join(sorted(letter for letter, count in counts.items() if count == 1))
    sizes: dict[str, int] = {}
    for subscript, operand in zip(subscripts, operands, strict=True):
        if len(set(subscript)) != len(subscript) or len(subscript) != operand.dim():
            raise NotImplementedError(f"einsum: a letter twice in one operand (a diagonal), or subscripts that do not "
                                      f"match the operand's dimensions, in {equation!r}: PyTorch's einsum computes it")
        for letter, size in zip(subscript, operand.shape, strict=True):
            if sizes.setdefault(letter, size) != size:
                raise NotImplementedError(f"einsum: letter {letter!r} has sizes {sizes[letter]} and {size} "
                                          f"(broadcast): PyTorch's einsum computes it")
    return f"{inputs}->{output}"


@hand_writes(torch.einsum)
def einsum(equation, *operands) -> Tensor:
    """Like ``torch.einsum(equation, *operands)`` (operands also as one list), with the hand-written backward:
    each operand's δ is the einsum of δZ with the others (see :func:`einsum_backward_equations`)."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not isinstance(equation, str) or not operands or not all(isinstance(o, Tensor) for o in operands):
        raise NotImplementedError("einsum: expected an equation string and tensors; PyTorch's einsum takes the rest")
    check_operands("einsum", *operands)
    return apply(EinsumFunction, _explicit_equation(equation, operands), *operands)
