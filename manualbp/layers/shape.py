"""Flatten: a reshape, whose backward reshapes δ back. Any input (N, d1, d2, ...) ->
(N, d1·d2·...) for the default dims."""

from __future__ import annotations

import torch
from torch import Tensor

from manualbp.layers.base import LayerFunction
from manualbp.layers.sharing import SharesState

__all__ = ["FlattenFunction", "Flatten"]


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

    def function_and_arguments(self, input: Tensor):
        return FlattenFunction, (input, self.start_dim, self.end_dim)
