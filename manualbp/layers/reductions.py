"""Reductions over some dimensions of A (all of them by default): sum, mean, variance, standard
deviation, maximum and minimum, what model code writes as ``x.mean(-1, keepdim=True)``,
``x.var(dim, unbiased=False)``, ``x.amax(dim)``. N is the number of elements each output gathers.

    Z = Σ A                  δA = δZ                         (δZ copied back over the summed elements)
    Z = (1/N) Σ A            δA = δZ/N
    Z = Σ (A − μ)²/(N − c)   δA = 2/(N − c)·δZ·(A − μ)       (c: the correction, 1 = unbiased)
    Z = √var                 δA = δZ/(2Z)·2/(N − c)·(A − μ)  (0 where Z = 0)
    Z = max A                δA = δZ·1[A = Z]/#{A = Z}       (amax, amin, max of all: ties share δZ evenly)
    Z = max_dim A, i         δA = δZ at the index i it picked (max(dim), min(dim): ties go to that one)

Each δZ is first given back the reduced dimensions (size 1) and then broadcast over them, as the
slides copy δb to every row of the batch. Floating-point tensors only; anything else raises
NotImplementedError, so that ``manualbp.hand_written()`` runs PyTorch's op instead.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from manualbp.layers.base import LayerFunction, apply, hand_writes
from manualbp.layers.elementwise import check_operands, maximum, minimum, refuse_out

__all__ = [
    "SumFunction", "sum",
    "MeanFunction", "mean",
    "VarFunction", "var", "var_backward",
    "StdFunction", "std",
    "AmaxFunction", "amax", "amin",
    "MaxDimFunction", "max", "min",
    "normalize_forward", "normalize_backward", "NormalizeFunction", "normalize",
]


def reduced_dims(rank: int, dim) -> tuple[int, ...]:
    """The dimensions a reduction over ``dim`` (None, an int, or a list; empty = all) gathers, as
    sorted non-negative indices. Named dimensions are left to PyTorch (NotImplementedError)."""
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(rank))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if not all([isinstance(d, int) for d in dims]):
        raise NotImplementedError(f"expected integer dimensions, got {dim!r}; PyTorch's reduction takes names")
    return tuple(sorted([d % (rank or 1) for d in dims]))  # lists, not generators: torch.compile traces this


def kept_shape(shape: torch.Size, dims: tuple[int, ...]) -> list[int]:
    """``shape`` with the reduced ``dims`` as 1: the shape δZ takes before it is broadcast back."""
    return [1 if i in dims else size for i, size in enumerate(shape)]


def count(shape: torch.Size, dims: tuple[int, ...]) -> int:
    """N: how many elements of A each output gathers."""
    return math.prod([shape[d] for d in dims]) if shape else 1


class SumFunction(LayerFunction):
    """Z = Σ A over ``dims``, δA = δZ copied back over them."""

    @staticmethod
    def forward(input, dims, keepdim):
        return torch.sum(input, dims, keepdim=keepdim)  # Z = Σ A

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.dims, ctx.keepdim = inputs
        ctx.shape, ctx.kept = input.shape, kept_shape(input.shape, ctx.dims)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output.reshape(ctx.kept).expand(ctx.shape), None, None  # δA = δZ

    @staticmethod
    def jvp(ctx, input_tangent, _, __):
        return input_tangent.sum(ctx.dims, keepdim=ctx.keepdim)


class MeanFunction(LayerFunction):
    """Z = (1/N) Σ A over ``dims``, δA = δZ/N copied back over them."""

    @staticmethod
    def forward(input, dims, keepdim):
        return torch.mean(input, dims, keepdim=keepdim)  # Z = (1/N) Σ A

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.dims, ctx.keepdim = inputs
        ctx.shape, ctx.kept = input.shape, kept_shape(input.shape, ctx.dims)
        ctx.count = count(input.shape, ctx.dims)

    @staticmethod
    def backward(ctx, grad_output):
        return (grad_output / ctx.count).reshape(ctx.kept).expand(ctx.shape), None, None  # δA = δZ/N

    @staticmethod
    def jvp(ctx, input_tangent, _, __):
        return input_tangent.mean(ctx.dims, keepdim=ctx.keepdim)


def _reduction_arguments(name: str, input, dim, keepdim, dtype):
    check_operands(name, input)
    if dtype is not None and dtype != input.dtype:
        if not dtype.is_floating_point:
            raise NotImplementedError(f"{name}: expected a floating-point dtype=, got {dtype}")
        input = input.to(dtype)  # the sum in that dtype: PyTorch's dtype= casts first too
    if not isinstance(keepdim, bool):
        raise NotImplementedError(f"{name}: expected keepdim True or False, got {keepdim!r}")
    return input, reduced_dims(input.dim(), dim), keepdim


@hand_writes(torch.sum, Tensor.sum)
def sum(input: Tensor, dim=None, keepdim: bool = False, *, dtype=None, out=None) -> Tensor:  # noqa: A001
    """Σ over ``dim`` (all by default) like ``torch.sum``."""
    refuse_out("sum", out)
    return apply(SumFunction, *_reduction_arguments("sum", input, dim, keepdim, dtype))


@hand_writes(torch.mean, Tensor.mean)
def mean(input: Tensor, dim=None, keepdim: bool = False, *, dtype=None, out=None) -> Tensor:
    """The mean over ``dim`` (all by default) like ``torch.mean``."""
    refuse_out("mean", out)
    return apply(MeanFunction, *_reduction_arguments("mean", input, dim, keepdim, dtype))


# ----------------------------------------------------------------------------------------------
# Variance and standard deviation
# ----------------------------------------------------------------------------------------------


def var_backward(grad_output: Tensor, input: Tensor, dims: tuple[int, ...], correction: float) -> Tensor:
    """δA = 2/(N − c)·δZ·(A − μ) of Z = Σ(A − μ)²/(N − c); grad_output δZ with the reduced ``dims`` kept (size 1)."""
    n = count(input.shape, dims)
    return (2.0 / (n - correction)) * grad_output * (input - input.mean(dims, keepdim=True))  # δA = 2/(N−c)·δZ·(A−μ)


class VarFunction(LayerFunction):
    """Z = Σ(A − μ)²/(N − c) over ``dims``, δA = 2/(N − c)·δZ·(A − μ)."""

    @staticmethod
    def forward(input, dims, correction, keepdim):
        return torch.var(input, dims, correction=correction, keepdim=keepdim)  # Z = Σ(A−μ)²/(N−c)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.dims, ctx.correction, ctx.keepdim = inputs
        ctx.kept = kept_shape(input.shape, ctx.dims)
        ctx.save_for_backward(input)
        ctx.save_for_forward(input)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        return var_backward(grad_output.reshape(ctx.kept), input, ctx.dims, ctx.correction), None, None, None

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        (input,) = ctx.saved_tensors
        ones = torch.ones(ctx.kept, dtype=input.dtype, device=input.device)
        return (var_backward(ones, input, ctx.dims, ctx.correction) * input_tangent).sum(ctx.dims, keepdim=ctx.keepdim)


class StdFunction(LayerFunction):
    """Z = √var over ``dims``, δA = δZ/(2Z)·2/(N − c)·(A − μ), 0 where Z = 0 (as PyTorch's)."""

    @staticmethod
    def forward(input, dims, correction, keepdim):
        return torch.std(input, dims, correction=correction, keepdim=keepdim)  # Z = √(Σ(A−μ)²/(N−c))

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.dims, ctx.correction, ctx.keepdim = inputs
        ctx.kept = kept_shape(input.shape, ctx.dims)
        ctx.save_for_backward(input, output)
        ctx.save_for_forward(input, output)

    @staticmethod
    def backward(ctx, grad_output):
        input, output = ctx.saved_tensors
        output = output.reshape(ctx.kept)
        grad_var = (grad_output.reshape(ctx.kept) / (output * 2)).masked_fill(output == 0, 0)  # δvar = δZ/(2Z)
        return var_backward(grad_var, input, ctx.dims, ctx.correction), None, None, None

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        input, output = ctx.saved_tensors
        ones = torch.ones(ctx.kept, dtype=input.dtype, device=input.device)
        tangent = var_backward(ones, input, ctx.dims, ctx.correction) * input_tangent
        tangent = tangent.sum(ctx.dims, keepdim=ctx.keepdim)
        return (tangent / (output * 2)).masked_fill(output == 0, 0)


def _spread_arguments(name: str, input, dim, unbiased, keepdim, correction):
    """torch.var/std's overloads: (dim, unbiased, keepdim), (unbiased) or (dim, *, correction, keepdim)."""
    if isinstance(dim, bool):  # var(input, unbiased)
        dim, unbiased = None, dim
    if correction is None:
        correction = 0 if unbiased is False else 1
    elif unbiased is not None:
        raise NotImplementedError(f"{name}: expected unbiased= or correction=, got both")
    input, dims, keepdim = _reduction_arguments(name, input, dim, keepdim, None)
    return input, dims, correction, keepdim


@hand_writes(torch.var, Tensor.var)
def var(input: Tensor, dim=None, unbiased=None, keepdim: bool = False, *, correction=None, out=None) -> Tensor:
    """The variance over ``dim`` like ``torch.var`` (``correction`` 1, unbiased, by default)."""
    refuse_out("var", out)
    return apply(VarFunction, *_spread_arguments("var", input, dim, unbiased, keepdim, correction))


@hand_writes(torch.std, Tensor.std)
def std(input: Tensor, dim=None, unbiased=None, keepdim: bool = False, *, correction=None, out=None) -> Tensor:
    """The standard deviation over ``dim`` like ``torch.std`` (``correction`` 1 by default)."""
    refuse_out("std", out)
    return apply(StdFunction, *_spread_arguments("std", input, dim, unbiased, keepdim, correction))


# ----------------------------------------------------------------------------------------------
# Maximum and minimum
# ----------------------------------------------------------------------------------------------


class AmaxFunction(LayerFunction):
    """Z = max A (``largest``) or min A over ``dims``, δA = δZ·1[A = Z]/#{A = Z}: ties share δZ evenly."""

    @staticmethod
    def forward(input, dims, keepdim, largest):
        return (torch.amax if largest else torch.amin)(input, dims, keepdim=keepdim)  # Z = max A

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.dims, ctx.keepdim, _ = inputs
        ctx.kept = kept_shape(input.shape, ctx.dims)
        ctx.save_for_backward(input, output)
        ctx.save_for_forward(input, output)

    @staticmethod
    def backward(ctx, grad_output):
        input, output = ctx.saved_tensors
        reached = input == output.reshape(ctx.kept)
        ties = reached.sum(ctx.dims, keepdim=True)
        return (grad_output.reshape(ctx.kept) / ties) * reached, None, None, None  # δA = δZ·1[A=Z]/#{A=Z}

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        input, output = ctx.saved_tensors
        reached = input == output.reshape(ctx.kept)
        return ((input_tangent * reached).sum(ctx.dims, keepdim=ctx.keepdim)
                / reached.sum(ctx.dims, keepdim=ctx.keepdim))


class MaxDimFunction(LayerFunction):
    """Z, i = max (``largest``) or min of A along ``dim`` and where; δA = δZ at the index i it
    picked, 0 elsewhere (the indices get no gradient)."""

    @staticmethod
    def forward(input, dim, keepdim, largest):
        return tuple((torch.max if largest else torch.min)(input, dim, keepdim))  # Z, i = max_dim A

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.dim, ctx.keepdim, _ = inputs
        values, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.shape = input.shape
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)

    @staticmethod
    def backward(ctx, grad_output, _):
        (indices,) = ctx.saved_tensors
        if not ctx.keepdim and len(ctx.shape):
            grad_output, indices = grad_output.unsqueeze(ctx.dim), indices.unsqueeze(ctx.dim)
        zeros = grad_output.new_zeros(ctx.shape)
        return zeros.scatter(ctx.dim, indices, grad_output), None, None, None  # δA[i] = δZ

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        (indices,) = ctx.saved_tensors
        if not ctx.keepdim and len(ctx.shape):
            return input_tangent.gather(ctx.dim, indices.unsqueeze(ctx.dim)).squeeze(ctx.dim), None
        return input_tangent.gather(ctx.dim, indices), None


def _extreme(name: str, largest: bool, input, dim, keepdim, out):
    refuse_out(name, out)
    if isinstance(dim, Tensor):  # max(input, other): elementwise
        return (maximum if largest else minimum)(input, dim)
    if dim is None:  # max of all: ties share δZ evenly, as PyTorch's
        input, dims, keepdim = _reduction_arguments(name, input, None, keepdim, None)
        return apply(AmaxFunction, input, dims, keepdim, largest)
    input, (dim,), keepdim = _reduction_arguments(name, input, dim, keepdim, None)
    values, indices = apply(MaxDimFunction, input, dim, keepdim, largest)
    return (torch.return_types.max if largest else torch.return_types.min)((values, indices))


@hand_writes(torch.max, Tensor.max)
def max(input: Tensor, dim=None, keepdim: bool = False, *, out=None):  # noqa: A001 -- torch's name
    """max A like ``torch.max``: of all elements (ties share δZ), or ``(values, indices)`` along
    ``dim`` (δZ goes to the index picked)."""
    return _extreme("max", True, input, dim, keepdim, out)


@hand_writes(torch.min, Tensor.min)
def min(input: Tensor, dim=None, keepdim: bool = False, *, out=None):  # noqa: A001 -- torch's name
    """min A like ``torch.min``, as :func:`max`."""
    return _extreme("min", False, input, dim, keepdim, out)


@hand_writes(torch.amax, Tensor.amax)
def amax(input: Tensor, dim=(), keepdim: bool = False, *, out=None) -> Tensor:
    """max A over ``dim`` (all by default) like ``torch.amax``; ties share δZ evenly."""
    refuse_out("amax", out)
    return apply(AmaxFunction, *_reduction_arguments("amax", input, dim, keepdim, None), True)


@hand_writes(torch.amin, Tensor.amin)
def amin(input: Tensor, dim=(), keepdim: bool = False, *, out=None) -> Tensor:
    """min A over ``dim`` (all by default) like ``torch.amin``; ties share δZ evenly."""
    refuse_out("amin", out)
    return apply(AmaxFunction, *_reduction_arguments("amin", input, dim, keepdim, None), False)


# ----------------------------------------------------------------------------------------------
# F.normalize: each vector divided by its length
# ----------------------------------------------------------------------------------------------


def normalize_backward(grad_output: Tensor, output: Tensor, norm: Tensor, eps: float, dim: int) -> Tensor:
    """δx of y = x / max(‖x‖, ε) along ``dim``, d = max(‖x‖, ε): δx = (δy − y·Σ(δy·y)) / d where
    ‖x‖ ≥ ε (the length moves with x: ∂‖x‖/∂x = x/‖x‖ = y), δx = δy / ε where ‖x‖ < ε (the length is
    the constant ε). grad_output δy, output y: x's shape; norm ‖x‖: keepdim along ``dim``."""
    denominator = norm.clamp_min(eps)  # d = max(‖x‖, ε)
    projection = (grad_output * output).sum(dim, keepdim=True) * (norm >= eps)  # Σ δy·y, where ‖x‖ ≥ ε
    return (grad_output - output * projection) / denominator  # δx = (δy − y·Σ(δy·y)) / d


def normalize_forward(input: Tensor, dim: int, eps: float) -> tuple[Tensor, Tensor]:
    """y = x / max(‖x‖, ε) along ``dim``, and ‖x‖ (keepdim): input x, any shape."""
    norm = torch.linalg.vector_norm(input, 2, dim, keepdim=True)  # ‖x‖ along dim
    return input / norm.clamp_min(eps), norm  # y = x / max(‖x‖, ε)


class NormalizeFunction(LayerFunction):
    """y = x / max(‖x‖₂, ε) along one dimension, with the backward of :func:`normalize_backward`.
    Saves x; the backward recomputes ‖x‖ and y from it (so that a recorded backward, for second
    derivatives, sees how they depend on x)."""

    @staticmethod
    def forward(input, dim, eps):
        return normalize_forward(input, dim, eps)[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.dim, ctx.eps = inputs
        ctx.save_for_backward(input)
        ctx.save_for_forward(input)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        output, norm = normalize_forward(input, ctx.dim, ctx.eps)
        return normalize_backward(grad_output, output, norm, ctx.eps, ctx.dim), None, None

    @staticmethod
    def jvp(ctx, input_tangent, dim_tangent, eps_tangent):
        (input,) = ctx.saved_tensors  # ∂y/∂x is symmetric: the tangent is the backward formula of ẋ
        output, norm = normalize_forward(input, ctx.dim, ctx.eps)
        return normalize_backward(input_tangent, output, norm, ctx.eps, ctx.dim)


@hand_writes(torch.nn.functional.normalize)
def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out: Tensor | None = None) -> Tensor:
    """x / max(‖x‖_p, ε) along ``dim`` like ``torch.nn.functional.normalize``, for p = 2 (other p are
    left to PyTorch)."""
    refuse_out("normalize", out)
    check_operands("normalize", input)
    if p != 2 or isinstance(dim, (tuple, list)) or input.dim() == 0:
        raise NotImplementedError(f"normalize: p={p}, dim={dim!r} on a {input.dim()}-D tensor is left to PyTorch's "
                                  f"normalize (manualbp's is the L2 length along one dimension)")
    return apply(NormalizeFunction, input, dim, float(eps))
