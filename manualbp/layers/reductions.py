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
from manualbp.layers.elementwise import check_operands, refuse_out

__all__ = [
    "SumFunction", "sum",
    "MeanFunction", "mean",
]


def reduced_dims(rank: int, dim) -> tuple[int, ...]:
    """The dimensions a reduction over ``dim`` (None, an int, or a list; empty = all) gathers, as
    sorted non-negative indices. Named dimensions are left to PyTorch (NotImplementedError)."""
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(rank))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if not all([isinstance(d, int) for d in dims]):
        raise NotImplementedError(f"expected integer dimensions, got {dim!r}; PyTorch's reduction takes names")
    return tuple(sorted([d % max(rank, 1) for d in dims]))  # lists, not generators: torch.compile traces this


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
