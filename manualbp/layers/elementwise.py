"""Tensor arithmetic, elementwise: Z = A·B, A/B, A + αB, −A, Aᵖ, cᴬ, Aᴮ, √A, 1/√A, 1/A, eᴬ, ln A,
|A|, clamp(A, lo, hi): what model code writes as ``x * gamma``, ``x ** 2``, ``1 - x``,
``torch.rsqrt(var + eps)``. Under ``manualbp.hand_written()`` every spelling (``torch.mul(a, b)``,
``a.mul(b)``, ``a * b``, ``2 * a``) runs these Functions.

Each is the chain rule through one elementwise function, so its Jacobian is diagonal:

    Z = A·B          δA = B·δZ,                 δB = A·δZ
    Z = A/B          δA = δZ/B,                 δB = −δZ·Z/B   (as (A/B)/B)
    Z = A + αB       δA = δZ,                   δB = α·δZ
    Z = −A           δA = −δZ
    Z = Aᵖ           δA = p·Aᵖ⁻¹·δZ
    Z = Aᴮ           δA = B·Aᴮ⁻¹·δZ,            δB = Z·ln A·δZ      (cᴬ: δA = Z·ln c·δZ)
    Z = √A           δA = δZ/(2Z)
    Z = 1/√A         δA = −½·Z³·δZ
    Z = 1/A          δA = −Z²·δZ
    Z = eᴬ           δA = Z·δZ
    Z = ln A         δA = δZ/A
    Z = |A|          δA = sign(A)·δZ
    Z = clamp(A)     δA = 1[lo ≤ A ≤ hi]·δZ, δlo = 1[A < lo]·δZ, δhi = 1[A > hi]·δZ

Broadcasting is part of the formula: where an operand was broadcast (a (C,) scale against (N, C)
activations, as the bias b against the batch), its δ is δZ's summed over the broadcast dimensions,
as the slides sum δZ over the batch for δb (``sum_to_shape``, written once in ``matmul.py``).

Operands are floating-point tensors or Python numbers (``x * 0.5``, ``1 - x``); tensors of two
floating dtypes are first cast to the one PyTorch computes in (``promoted``). Any
other argument (integer, bool or complex tensors, ``out=``) raises NotImplementedError,
so that ``manualbp.hand_written()`` runs PyTorch's op instead. The in-place spellings (``x.mul_(g)``,
``x += y``) are left to PyTorch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from manualbp.layers.base import LayerFunction, apply, hand_writes
from manualbp.layers.matmul import sum_to_shape, sum_to_shape_per_example

__all__ = [
    "MulFunction", "mul",
    "DivFunction", "RoundedDivFunction", "div",
    "ReciprocalFunction", "reciprocal",
    "AddFunction", "add", "sub", "rsub", "reflected_sub",
    "NegFunction", "neg",
    "PowFunction", "PowTensorFunction", "ExponentialFunction", "pow", "square",
    "SqrtFunction", "sqrt",
    "RsqrtFunction", "rsqrt",
    "ExpFunction", "exp",
    "LogFunction", "log",
    "AbsFunction", "abs",
    "ClampFunction", "clamp", "clamp_max", "MaximumFunction", "maximum", "minimum", "rdiv", "rpow",
]


# ----------------------------------------------------------------------------------------------
# What every operation here checks and keeps
# ----------------------------------------------------------------------------------------------


def check_operands(name: str, *operands) -> None:
    """NotImplementedError (PyTorch's op runs instead) unless every operand is a floating-point
    tensor or a real Python number, and the tensors share one dtype. The first must be a tensor."""
    dtype = None
    for operand in operands:
        if isinstance(operand, Tensor):
            if not operand.is_floating_point():
                raise NotImplementedError(f"{name}: expected floating-point tensors, got dtype {operand.dtype}; "
                                          f"PyTorch's {name} computes it (no gradient flows to it)")
            if dtype is not None and operand.dtype != dtype:
                raise NotImplementedError(f"{name}: expected tensors of one dtype, got {dtype} and {operand.dtype}; "
                                          f"convert one with .to(), or let PyTorch's {name} promote them")
            dtype = operand.dtype
        elif not isinstance(operand, (int, float)) and operand is not None:
            raise NotImplementedError(f"{name}: expected a tensor or a real number, got {type(operand).__name__}; "
                                      f"PyTorch's {name} computes that")
    if not isinstance(operands[0], Tensor):
        raise NotImplementedError(f"{name}: expected a tensor first, got {type(operands[0]).__name__}")


def promoted(*operands) -> tuple:
    """The operands with their floating-point tensors cast to the dtype PyTorch computes in
    (``torch.result_type``: float32 · float64 is float64; a 0-d tensor does not widen a bigger one),
    as model code does when it normalizes in float32 (``x * torch.rsqrt(x.float().pow(2).mean(-1))``).
    The cast is an ordinary copy node (its backward casts δ back), the op then one dtype throughout."""
    tensors = [operand for operand in operands if isinstance(operand, Tensor)]
    if len(tensors) < 2 or all(tensor.dtype == tensors[0].dtype for tensor in tensors):
        return operands  # the common case, one dtype: nothing to do
    if not all(tensor.is_floating_point() for tensor in tensors):
        return operands  # integer, bool, complex: check_operands leaves them to PyTorch
    dtype = torch.result_type(tensors[0], tensors[1])
    for tensor in tensors[2:]:  # clamp's second bound
        dtype = torch.promote_types(dtype, tensor.dtype)
    return tuple(operand.to(dtype) if isinstance(operand, Tensor) and operand.dtype != dtype else operand
                 for operand in operands)


def refuse_out(name: str, out) -> None:
    if out is not None:
        raise NotImplementedError(f"{name}: out= is not supported (autograd cannot record it); drop out=")


def keep(ctx, *operands) -> None:
    """Save the tensor operands for backward and forward AD, keep the numbers on ctx."""
    ctx.numbers = [None if isinstance(operand, Tensor) else operand for operand in operands]
    tensors = [operand if isinstance(operand, Tensor) else None for operand in operands]
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)


def kept(ctx) -> list:
    """The operands ``keep`` saved, tensors and numbers in their places."""
    return [number if tensor is None else tensor for tensor, number in zip(ctx.saved_tensors, ctx.numbers, strict=True)]


def shape_of(operand) -> torch.Size | None:
    return operand.shape if isinstance(operand, Tensor) else None


def tangent_sum(*terms) -> Tensor:
    """Ż: the sum of the terms of the operands that carry a tangent (Ż = Ȧ·B + A·Ḃ)."""
    present = [term for term in terms if term is not None]
    tangent = present[0]
    for term in present[1:]:
        tangent = tangent + term
    return tangent


# ----------------------------------------------------------------------------------------------
# Products and quotients
# ----------------------------------------------------------------------------------------------


class MulFunction(LayerFunction):
    """Z = A·B (B a tensor or a number), δA = B·δZ, δB = A·δZ, each summed to its operand's shape."""

    @staticmethod
    def forward(first, second):
        return torch.mul(first, second)  # Z = A·B

    @staticmethod
    def setup_context(ctx, inputs, output):
        first, second = inputs
        ctx.shapes = shape_of(first), shape_of(second)
        keep(ctx, first, second)

    @staticmethod
    def backward(ctx, grad_output):
        first, second = kept(ctx)
        grad_first = grad_second = None
        if ctx.needs_input_grad[0]:
            grad_first = sum_to_shape(grad_output * second, ctx.shapes[0])  # δA = B·δZ
        if ctx.needs_input_grad[1]:
            grad_second = sum_to_shape(grad_output * first, ctx.shapes[1])  # δB = A·δZ
        return grad_first, grad_second

    @staticmethod
    def jvp(ctx, first_tangent, second_tangent):
        first, second = kept(ctx)
        return tangent_sum(None if first_tangent is None else first_tangent * second,
                           None if second_tangent is None else first * second_tangent)

    @staticmethod
    def per_example(ctx, grad_output):
        """Each example's term of δA and δB: B·δZ and A·δZ summed to the operand's shape, not over the
        batch (a layer scale γ in ``x * gamma``: δγₖ = Σ xₖ·δzₖ over example k's positions)."""
        first, second = kept(ctx)
        return tuple(sum_to_shape_per_example(grad_output * other, shape) if needed else None
                     for needed, other, shape in zip(ctx.needs_input_grad, (second, first), ctx.shapes, strict=True))


@hand_writes(torch.mul, torch.multiply, Tensor.mul, Tensor.multiply, Tensor.__mul__, Tensor.__rmul__)
def mul(input, other, *, out: Tensor | None = None) -> Tensor:
    """A·B like ``torch.mul``, leading and size-1 dimensions broadcast; either may be a number."""
    refuse_out("mul", out)
    if not isinstance(input, Tensor):  # 2 * x: the product is the same either way round
        input, other = other, input
    input, other = promoted(input, other)
    check_operands("mul", input, other)
    return apply(MulFunction, input, other)


class DivFunction(LayerFunction):
    """Z = A/B (B a tensor or a number), δA = δZ/B, δB = −δZ·(A/B)/B, each summed to its operand's shape."""

    @staticmethod
    def forward(first, second):
        return torch.div(first, second)  # Z = A/B

    @staticmethod
    def setup_context(ctx, inputs, output):
        first, second = inputs
        ctx.shapes = shape_of(first), shape_of(second)
        keep(ctx, first if ctx.needs_input_grad[1] else None, second)

    @staticmethod
    def backward(ctx, grad_output):
        first, second = kept(ctx)
        grad_first = grad_second = None
        if ctx.needs_input_grad[0]:
            grad_first = sum_to_shape(grad_output / second, ctx.shapes[0])  # δA = δZ/B
        if ctx.needs_input_grad[1]:
            grad_second = sum_to_shape(-grad_output * ((first / second) / second), ctx.shapes[1])  # δB = −δZ·A/B²
        return grad_first, grad_second

    @staticmethod
    def jvp(ctx, first_tangent, second_tangent):
        first, second = kept(ctx)
        return tangent_sum(None if first_tangent is None else first_tangent / second,
                           None if second_tangent is None else -second_tangent * ((first / second) / second))


@hand_writes(torch.div, torch.divide, torch.true_divide, Tensor.div, Tensor.divide, Tensor.true_divide,
             Tensor.__truediv__, Tensor.__div__)
def div(input, other, *, rounding_mode: str | None = None, out: Tensor | None = None) -> Tensor:
    """A/B like ``torch.div`` (true division), broadcasting; ``other`` may be a number."""
    refuse_out("div", out)
    input, other = promoted(input, other)
    check_operands("div", input, other)
    if rounding_mode is not None:
        return apply(RoundedDivFunction, input, other, rounding_mode)
    return apply(DivFunction, input, other)


class RoundedDivFunction(LayerFunction):
    """Z = ⌊A/B⌋ or trunc(A/B) (``rounding_mode``), a staircase: δA = δB = 0 (its derivative
    wherever it has one, as PyTorch's)."""

    @staticmethod
    def forward(first, second, rounding_mode):
        return torch.div(first, second, rounding_mode=rounding_mode)  # Z = round(A/B)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shapes = shape_of(inputs[0]), shape_of(inputs[1])

    @staticmethod
    def backward(ctx, grad_output):
        return tuple(None if shape is None else grad_output.new_zeros(shape) for shape in ctx.shapes) + (None,)  # δ = 0

    @staticmethod
    def jvp(ctx, first_tangent, second_tangent, _):
        return torch.zeros_like(first_tangent if first_tangent is not None else second_tangent)


class ReciprocalFunction(LayerFunction):
    """Z = 1/A, δA = −Z²·δZ (from the saved output)."""

    @staticmethod
    def forward(input):
        return torch.reciprocal(input)  # Z = 1/A

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return -grad_output * (output * output)  # δA = −Z²·δZ

    jvp = backward


@hand_writes(torch.reciprocal, Tensor.reciprocal)
def reciprocal(input: Tensor, *, out: Tensor | None = None) -> Tensor:
    """1/A like ``torch.reciprocal``."""
    refuse_out("reciprocal", out)
    check_operands("reciprocal", input)
    return apply(ReciprocalFunction, input)


@hand_writes(Tensor.__rtruediv__, Tensor.__rdiv__)
def rdiv(self: Tensor, other) -> Tensor:
    """c/A (``2 / x``, Tensor.__rtruediv__'s signature), as PyTorch computes it: c·(1/A)."""
    check_operands("rdiv", self, other)
    return mul(reciprocal(self), other)


# ----------------------------------------------------------------------------------------------
# Sums and differences
# ----------------------------------------------------------------------------------------------


class AddFunction(LayerFunction):
    """Z = A + α·B (either A or B may be a number), δA = δZ, δB = α·δZ, each summed to its operand's shape."""

    @staticmethod
    def forward(first, second, alpha):
        if isinstance(first, Tensor):
            return torch.add(first, second, alpha=alpha)  # Z = A + αB
        return torch.rsub(second, first, alpha=-alpha)  # Z = c + αB, as PyTorch's rsub computes c − (−α)B

    @staticmethod
    def setup_context(ctx, inputs, output):
        first, second, ctx.alpha = inputs
        ctx.shapes = shape_of(first), shape_of(second)

    @staticmethod
    def backward(ctx, grad_output):
        grad_first = grad_second = None
        if ctx.needs_input_grad[0]:
            grad_first = sum_to_shape(grad_output, ctx.shapes[0])  # δA = δZ
        if ctx.needs_input_grad[1]:
            scaled = grad_output if ctx.alpha == 1 else grad_output * ctx.alpha  # δB = α·δZ
            grad_second = sum_to_shape(scaled, ctx.shapes[1])
        return grad_first, grad_second, None

    @staticmethod
    def jvp(ctx, first_tangent, second_tangent, _):
        return tangent_sum(first_tangent, None if second_tangent is None else second_tangent * ctx.alpha)

    @staticmethod
    def per_example(ctx, grad_output):
        """Each example's term of δA = δZ and δB = α·δZ, summed to the operand's shape, not over the batch
        (a position embedding added to every sequence: its δₖ is sequence k's δZ)."""
        first = sum_to_shape_per_example(grad_output, ctx.shapes[0]) if ctx.needs_input_grad[0] else None
        second = sum_to_shape_per_example(grad_output * ctx.alpha, ctx.shapes[1]) if ctx.needs_input_grad[1] else None
        return first, second, None


@hand_writes(torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__)
def add(input, other, *, alpha=1, out: Tensor | None = None) -> Tensor:
    """A + α·B like ``torch.add``, broadcasting; ``other`` may be a number."""
    refuse_out("add", out)
    if not isinstance(input, Tensor) and alpha == 1:  # 1 + x
        input, other = other, input
    input, other = promoted(input, other)
    check_operands("add", input, other, alpha)
    return apply(AddFunction, input, other, alpha)


@hand_writes(torch.sub, torch.subtract, Tensor.sub, Tensor.subtract, Tensor.__sub__)
def sub(input, other, *, alpha=1, out: Tensor | None = None) -> Tensor:
    """A − α·B like ``torch.sub``: A + (−α)·B, which PyTorch computes the same way."""
    refuse_out("sub", out)
    input, other = promoted(input, other)
    check_operands("sub", input, other, alpha)
    return apply(AddFunction, input, other, -alpha)


@hand_writes(torch.rsub)
def rsub(input, other, *, alpha=1) -> Tensor:
    """B − α·A like ``torch.rsub`` (``1 - x`` is ``x.__rsub__(1)``)."""
    input, other = promoted(input, other)
    check_operands("rsub", input, other, alpha)
    return apply(AddFunction, other, input, -alpha)


@hand_writes(Tensor.__rsub__)
def reflected_sub(self: Tensor, other) -> Tensor:
    """B − A for ``1 - x`` (Tensor.__rsub__'s signature)."""
    return rsub(self, other)


class NegFunction(LayerFunction):
    """Z = −A, δA = −δZ."""

    @staticmethod
    def forward(input):
        return torch.neg(input)  # Z = −A

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_output):
        return -grad_output  # δA = −δZ

    jvp = backward


@hand_writes(torch.neg, torch.negative, Tensor.neg, Tensor.negative, Tensor.__neg__)
def neg(input: Tensor, *, out: Tensor | None = None) -> Tensor:
    """−A like ``torch.neg``."""
    refuse_out("neg", out)
    check_operands("neg", input)
    return apply(NegFunction, input)


# ----------------------------------------------------------------------------------------------
# Powers
# ----------------------------------------------------------------------------------------------


class PowFunction(LayerFunction):
    """Z = Aᵖ for a number p, δA = p·Aᵖ⁻¹·δZ (0 for p = 0, as PyTorch's)."""

    @staticmethod
    def forward(input, exponent):
        return torch.pow(input, exponent)  # Z = Aᵖ

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.exponent = inputs
        ctx.save_for_backward(input)
        ctx.save_for_forward(input)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        if ctx.exponent == 0:
            return torch.zeros_like(input), None
        return grad_output * (ctx.exponent * input.pow(ctx.exponent - 1)), None  # δA = p·Aᵖ⁻¹·δZ

    @staticmethod
    def jvp(ctx, input_tangent, _):
        return PowFunction.backward(ctx, input_tangent)[0]


class PowTensorFunction(LayerFunction):
    """Z = Aᴮ for tensors, δA = B·Aᴮ⁻¹·δZ (0 where B = 0), δB = Z·ln A·δZ (0 where A = 0 ≤ B), each
    summed to its operand's shape; as PyTorch's, which picks the limits at 0 that way."""

    @staticmethod
    def forward(base, exponent):
        return torch.pow(base, exponent)  # Z = Aᴮ

    @staticmethod
    def setup_context(ctx, inputs, output):
        base, exponent = inputs
        ctx.shapes = base.shape, exponent.shape
        ctx.save_for_backward(base, exponent, output)
        ctx.save_for_forward(base, exponent, output)

    @staticmethod
    def backward(ctx, grad_output):
        base, exponent, output = ctx.saved_tensors
        grad_base = grad_exponent = None
        if ctx.needs_input_grad[0]:
            grad_base = grad_output * (exponent * base.pow(exponent - 1))  # δA = B·Aᴮ⁻¹·δZ
            grad_base = sum_to_shape(torch.where(exponent == 0, 0.0, grad_base), ctx.shapes[0])
        if ctx.needs_input_grad[1]:
            grad_exponent = grad_output * (output * base.log())  # δB = Z·ln A·δZ
            grad_exponent = sum_to_shape(torch.where((base == 0) & (exponent >= 0), 0.0, grad_exponent), ctx.shapes[1])
        return grad_base, grad_exponent

    @staticmethod
    def jvp(ctx, base_tangent, exponent_tangent):
        base, exponent, output = ctx.saved_tensors
        return tangent_sum(
            None if base_tangent is None
            else torch.where(exponent == 0, 0.0, base_tangent * (exponent * base.pow(exponent - 1))),
            None if exponent_tangent is None else torch.where((base == 0) & (exponent >= 0), 0.0,
                                                              exponent_tangent * (output * base.log())))


class ExponentialFunction(LayerFunction):
    """Z = cᴬ for a number c > 0, δA = Z·ln c·δZ (from the saved output)."""

    @staticmethod
    def forward(base, exponent):
        return torch.pow(base, exponent)  # Z = cᴬ

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.log_base = math.log(inputs[0])
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return None, grad_output * (output * ctx.log_base)  # δA = Z·ln c·δZ

    @staticmethod
    def jvp(ctx, _, exponent_tangent):
        return ExponentialFunction.backward(ctx, exponent_tangent)[1]


@hand_writes(torch.pow, Tensor.pow, Tensor.__pow__)
def pow(input, exponent, *, out: Tensor | None = None) -> Tensor:  # noqa: A001 -- torch's name
    """Aᵖ, cᴬ or Aᴮ like ``torch.pow`` (broadcasting). A base c ≤ 0 under a tensor exponent is left
    to PyTorch (NotImplementedError), as are integer exponents of integer tensors."""
    refuse_out("pow", out)
    if not isinstance(input, Tensor):
        check_operands("pow", exponent, input)
        if input <= 0:
            raise NotImplementedError(f"pow: expected a positive number as the base of a tensor exponent, got "
                                      f"{input}; PyTorch's pow computes it")
        return apply(ExponentialFunction, float(input), exponent)
    input, exponent = promoted(input, exponent)
    check_operands("pow", input, exponent)
    if isinstance(exponent, Tensor):
        return apply(PowTensorFunction, input, exponent)
    return apply(PowFunction, input, exponent)


@hand_writes(torch.square, Tensor.square)
def square(input: Tensor, *, out: Tensor | None = None) -> Tensor:
    """A² like ``torch.square`` (PyTorch's is pow(A, 2)): δA = 2·A·δZ."""
    return pow(input, 2, out=out)


@hand_writes(Tensor.__rpow__)
def rpow(self: Tensor, other) -> Tensor:
    """cᴬ for ``2 ** x`` (``x.__rpow__(2)``, Tensor.__rpow__'s signature)."""
    return pow(other, self)


# ----------------------------------------------------------------------------------------------
# Roots, exponential, logarithm, absolute value
# ----------------------------------------------------------------------------------------------


class SqrtFunction(LayerFunction):
    """Z = √A, δA = δZ/(2Z) (from the saved output)."""

    @staticmethod
    def forward(input):
        return torch.sqrt(input)  # Z = √A

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return grad_output / (2 * output)  # δA = δZ/(2√A)

    jvp = backward


class RsqrtFunction(LayerFunction):
    """Z = 1/√A, δA = −½·Z³·δZ (from the saved output)."""

    @staticmethod
    def forward(input):
        return torch.rsqrt(input)  # Z = A^(−1/2)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return -0.5 * grad_output * output.pow(3)  # δA = −½·A^(−3/2)·δZ

    jvp = backward


class ExpFunction(LayerFunction):
    """Z = eᴬ, δA = Z·δZ (from the saved output)."""

    @staticmethod
    def forward(input):
        return torch.exp(input)  # Z = eᴬ

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return grad_output * output  # δA = eᴬ·δZ

    jvp = backward


class LogFunction(LayerFunction):
    """Z = ln A, δA = δZ/A."""

    @staticmethod
    def forward(input):
        return torch.log(input)  # Z = ln A

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        return grad_output / input  # δA = δZ/A

    jvp = backward


class AbsFunction(LayerFunction):
    """Z = |A|, δA = sign(A)·δZ (0 at A = 0, as PyTorch's)."""

    @staticmethod
    def forward(input):
        return torch.abs(input)  # Z = |A|

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        return grad_output * input.sgn()  # δA = sign(A)·δZ

    jvp = backward


def _unary(name: str, function: type[LayerFunction], *torch_callables):
    @hand_writes(*torch_callables)
    def public(input: Tensor, *, out: Tensor | None = None) -> Tensor:
        refuse_out(name, out)
        check_operands(name, input)
        return apply(function, input)

    public.__name__ = public.__qualname__ = name
    formula = function.__doc__.split(",")[0].removeprefix("Z = ")
    public.__doc__ = f"{formula} like ``torch.{name}``, with the hand-written backward."
    return public


sqrt = _unary("sqrt", SqrtFunction, torch.sqrt, Tensor.sqrt)
rsqrt = _unary("rsqrt", RsqrtFunction, torch.rsqrt, Tensor.rsqrt)
exp = _unary("exp", ExpFunction, torch.exp, Tensor.exp)
log = _unary("log", LogFunction, torch.log, Tensor.log)
abs = _unary("abs", AbsFunction, torch.abs, torch.absolute, Tensor.abs, Tensor.absolute, Tensor.__abs__)  # noqa: A001


# ----------------------------------------------------------------------------------------------
# Clamp
# ----------------------------------------------------------------------------------------------


class ClampFunction(LayerFunction):
    """Z = min(max(A, lo), hi) (lo, hi numbers, tensors or None), δA = 1[lo ≤ A ≤ hi]·δZ,
    δlo = 1[A < lo, lo < hi]·δZ, δhi = 1[A > hi or hi ≤ lo]·δZ, each summed to its operand's shape
    (where lo > hi, Z = hi: PyTorch's rule)."""

    @staticmethod
    def forward(input, min, max):
        return torch.clamp(input, min, max)  # Z = min(max(A, lo), hi)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shapes = tuple(shape_of(operand) for operand in inputs)
        keep(ctx, *inputs)

    @staticmethod
    def backward(ctx, grad_output):
        inside, below, above = clamp_masks(*kept(ctx))
        grads = [None, None, None]
        if ctx.needs_input_grad[0]:
            grads[0] = sum_to_shape(torch.where(inside, grad_output, 0.0), ctx.shapes[0])  # δA = 1[lo≤A≤hi]·δZ
        if ctx.needs_input_grad[1]:
            grads[1] = sum_to_shape(torch.where(below, grad_output, 0.0), ctx.shapes[1])  # δlo = 1[A<lo]·δZ
        if ctx.needs_input_grad[2]:
            grads[2] = sum_to_shape(torch.where(above, grad_output, 0.0), ctx.shapes[2])  # δhi = 1[A>hi]·δZ
        return tuple(grads)

    @staticmethod
    def jvp(ctx, input_tangent, low_tangent, high_tangent):
        masks = clamp_masks(*kept(ctx))
        return tangent_sum(*(None if tangent is None else torch.where(mask, tangent, 0.0)
                             for mask, tangent in zip(masks, (input_tangent, low_tangent, high_tangent), strict=True)))


def clamp_masks(input: Tensor, low, high) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Where δZ goes: to A where lo ≤ A ≤ hi, to lo where A < lo < hi, to hi where A > hi or hi ≤ lo
    (PyTorch's rule: Z = hi where lo > hi). A bound that is None or a number gets no mask."""
    inside = None
    if low is not None:
        inside = input >= low
    if high is not None:
        inside = input <= high if inside is None else inside & (input <= high)
    below = above = None
    if isinstance(low, Tensor):
        below = input < low if high is None else (input < low) & (low < high)
    if isinstance(high, Tensor):
        above = input > high if low is None else (input > high) | (high <= low)
    return inside, below, above


@hand_writes(torch.clamp, torch.clip, Tensor.clamp, Tensor.clip, torch.clamp_min, Tensor.clamp_min)
def clamp(input: Tensor, min=None, max=None, *, out: Tensor | None = None) -> Tensor:  # noqa: A002 -- torch's names
    """min(max(A, lo), hi) like ``torch.clamp`` (bounds numbers, tensors that broadcast, or None)."""
    refuse_out("clamp", out)
    if min is None and max is None:
        raise NotImplementedError("clamp: expected min or max, got neither; pass at least one bound")
    input, min, max = promoted(input, min, max)
    check_operands("clamp", input, min, max)
    return apply(ClampFunction, input, min, max)


@hand_writes(torch.clamp_max, Tensor.clamp_max)
def clamp_max(input: Tensor, max) -> Tensor:  # noqa: A002 -- torch's name
    """min(A, hi) like ``torch.clamp_max``."""
    return clamp(input, None, max)


class MaximumFunction(LayerFunction):
    """Z = max(A, B) elementwise (``largest``; else min), δA = δZ where A wins, δB = δZ where B
    wins, each δZ/2 where they tie (as PyTorch's), summed to its operand's shape."""

    @staticmethod
    def forward(first, second, largest):
        return (torch.maximum if largest else torch.minimum)(first, second)  # Z = max(A, B)

    @staticmethod
    def setup_context(ctx, inputs, output):
        first, second, ctx.largest = inputs
        ctx.shapes = first.shape, second.shape
        ctx.save_for_backward(first, second)
        ctx.save_for_forward(first, second)

    @staticmethod
    def backward(ctx, grad_output):
        first, second = ctx.saved_tensors
        shared = torch.where(first == second, grad_output / 2, grad_output)  # a tie: δZ/2 each
        first_loses, second_loses = losers(first, second, ctx.largest)
        grad_first = grad_second = None
        if ctx.needs_input_grad[0]:
            grad_first = sum_to_shape(shared.masked_fill(first_loses, 0), ctx.shapes[0])  # δA = 1[A wins]·δZ
        if ctx.needs_input_grad[1]:
            grad_second = sum_to_shape(shared.masked_fill(second_loses, 0), ctx.shapes[1])  # δB = 1[B wins]·δZ
        return grad_first, grad_second, None

    @staticmethod
    def jvp(ctx, first_tangent, second_tangent, _):
        first, second = ctx.saved_tensors
        first_loses, second_loses = losers(first, second, ctx.largest)
        tie = first == second
        return tangent_sum(*(None if tangent is None else torch.where(tie, tangent / 2, tangent).masked_fill(loses, 0)
                             for tangent, loses in ((first_tangent, first_loses), (second_tangent, second_loses))))


def losers(first: Tensor, second: Tensor, largest: bool) -> tuple[Tensor, Tensor]:
    """Where A loses to B and where B loses to A, for max (``largest``) or min."""
    return (first < second, first > second) if largest else (first > second, first < second)


@hand_writes(torch.maximum, Tensor.maximum)
def maximum(input: Tensor, other: Tensor, *, out: Tensor | None = None) -> Tensor:
    """max(A, B) elementwise like ``torch.maximum`` (broadcasting)."""
    refuse_out("maximum", out)
    input, other = promoted(input, other)
    check_operands("maximum", input, other)
    if not isinstance(other, Tensor):
        raise NotImplementedError("maximum: expected a tensor other, got a number; use clamp(min=...)")
    return apply(MaximumFunction, input, other, True)


@hand_writes(torch.minimum, Tensor.minimum)
def minimum(input: Tensor, other: Tensor, *, out: Tensor | None = None) -> Tensor:
    """min(A, B) elementwise like ``torch.minimum`` (broadcasting)."""
    refuse_out("minimum", out)
    input, other = promoted(input, other)
    check_operands("minimum", input, other)
    if not isinstance(other, Tensor):
        raise NotImplementedError("minimum: expected a tensor other, got a number; use clamp(max=...)")
    return apply(MaximumFunction, input, other, False)
