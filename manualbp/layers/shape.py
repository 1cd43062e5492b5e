"""Flatten and Unflatten: reshapes, whose backward reshapes δ back. Flatten: (N, d1, d2, ...) ->
(N, d1·d2·...) for the default dims; Unflatten the inverse, e.g. (N, 784) -> (N, 1, 28, 28)."""

from __future__ import annotations

import torch
from torch import Tensor

from manualbp.layers.base import LayerFunction
from manualbp.layers.sharing import SharesState

__all__ = ["FlattenFunction", "Flatten", "UnflattenFunction", "Unflatten"]


class FlattenFunction(LayerFunction):
    """Z = X with dims start_dim..end_dim merged; backward δX = δZ reshaped to X's shape (what the
    explicit engine runs; under autograd Flatten is torch's own view)."""

    @staticmethod
    def forward(input, start_dim, end_dim):
        return input.flatten(start_dim, end_dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, *ctx.dims = inputs
        ctx.input_shape = tuple(input.shape)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output.reshape(ctx.input_shape), None, None  # δX = δZ in X's shape

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        return input_tangent.flatten(*ctx.dims)  # linear: Ż = Ẋ flattened


class Flatten(torch.nn.Flatten, SharesState, torch_twin=torch.nn.Flatten):
    """``torch.nn.Flatten``: a view under autograd (nothing to hand-write), FlattenFunction in the
    explicit engine. Registered so that convert, strict convert and the engine know it."""

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(), (torch.randn(6, 2, 2, dtype=dtype),)

    def function_and_arguments(self, input: Tensor):
        return FlattenFunction, (input, self.start_dim, self.end_dim)


class UnflattenFunction(LayerFunction):
    """Z = X with dim ``dim`` split into ``sizes``; backward δX = δZ reshaped to X's shape (what
    the explicit engine runs; under autograd Unflatten is torch's own view)."""

    @staticmethod
    def forward(input, dim, sizes):
        return input.unflatten(dim, sizes)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, *ctx.dim_and_sizes = inputs
        ctx.input_shape = tuple(input.shape)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output.reshape(ctx.input_shape), None, None  # δX = δZ in X's shape

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        return input_tangent.unflatten(*ctx.dim_and_sizes)  # linear: Ż = Ẋ unflattened


class Unflatten(torch.nn.Unflatten, SharesState, torch_twin=torch.nn.Unflatten):
    """``torch.nn.Unflatten``: a view under autograd (nothing to hand-write), UnflattenFunction in
    the explicit engine. Registered so that convert, strict convert and the engine know it."""

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(1, (2, 2)), (torch.randn(6, 4, dtype=dtype),)

    def function_and_arguments(self, input: Tensor):
        return UnflattenFunction, (input, self.dim, tuple(self.unflattened_size))
