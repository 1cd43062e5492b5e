"""Resizing images: nearest and bilinear interpolation (``F.interpolate``, ``torch.nn.Upsample``).

Each output row is a fixed weighting of input rows, and each output column of input columns, so
resizing is average pooling's kind of linear map, one matrix per side:

    Z = R_h X R_wᵀ      (per image and channel; R_h: H_out × H, R_w: W_out × W)
    δX = R_hᵀ δZ R_w    (pooling.py's ``average_pool_backward``: the linear layer's δX = δZ W from both sides)

Nearest: row i of R has a 1 at the input index PyTorch reads, min(⌊i·s⌋, H − 1), s the scale.
Bilinear: row i has 1 − λ and λ at the two input indices around the source position
x = (i + ½)·s − ½ (clamped at 0; with ``align_corners``: x = i·(H − 1)/(H_out − 1)), λ its fraction.
The forward is PyTorch's interpolation kernel; the matrices are only built for the backward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from manualbp.layers.base import LayerFunction, apply, hand_writes
from manualbp.layers.pooling import average_pool_backward
from manualbp.layers.sharing import SharesState

__all__ = ["interpolation_matrix", "InterpolateFunction", "interpolate", "Upsample"]


def interpolation_matrix(in_size: int, out_size: int, mode: str, align_corners: bool, scale: float | None,
                         dtype: torch.dtype, device=None) -> Tensor:
    """R: (out_size, in_size), Z = R X along one side, for ``mode`` "nearest" or "bilinear". ``scale``:
    1/scale_factor where the caller gave one (and did not ask to recompute it), else None (in/out).
    The source positions are computed as PyTorch's kernels do (in float32, or float64 for float64)."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    positions = torch.arange(out_size, dtype=compute, device=device)
    matrix = torch.zeros(out_size, in_size, dtype=dtype, device=device)
    rows = torch.arange(out_size, device=device)
    if mode == "nearest":
        if out_size == in_size:
            source = rows
        elif out_size == 2 * in_size:
            source = rows // 2
        else:
            step = torch.tensor(scale if scale is not None else in_size / out_size, dtype=torch.float32)
            source = torch.floor(positions.float() * step).long().clamp_max(in_size - 1)  # min(⌊i·s⌋, H − 1)
        matrix[rows, source] = 1
        return matrix
    if align_corners:
        step = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        source = positions * step  # x = i·(H − 1)/(H_out − 1)
    else:
        step = scale if scale is not None else in_size / out_size
        source = ((positions + 0.5) * step - 0.5).clamp_min(0)  # x = (i + ½)·s − ½, at least 0
    first = source.long()
    fraction = (source - first).clamp(0, 1)  # λ
    second = torch.where(first < in_size - 1, first + 1, first)
    matrix.index_put_((rows, first), (1 - fraction).to(dtype), accumulate=True)  # 1 − λ
    matrix.index_put_((rows, second), fraction.to(dtype), accumulate=True)  # λ
    return matrix


class InterpolateFunction(LayerFunction):
    """Z = R_h X R_wᵀ (nearest or bilinear resizing of (N, C, H, W) images) with δX = R_hᵀ δZ R_w.
    ``scales``: (1/scale_factor per side) where the caller gave a scale_factor (PyTorch's kernel then
    places its source positions by it), else (None, None) and ``size`` is used. Saves nothing: the
    matrices follow from the sizes and the settings."""

    @staticmethod
    def forward(input, size, mode, align_corners, scales):
        if scales[0] is not None:
            factors = tuple(1 / scale for scale in scales)
            return torch.nn.functional.interpolate(input, scale_factor=factors, mode=mode, align_corners=align_corners)
        return torch.nn.functional.interpolate(input, size=size, mode=mode, align_corners=align_corners)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.size, ctx.mode, ctx.align_corners, ctx.scales = inputs
        ctx.input_shape = tuple(input.shape)

    @staticmethod
    def backward(ctx, grad_output):
        (in_height, in_width), (out_height, out_width) = ctx.input_shape[-2:], grad_output.shape[-2:]
        settings = (ctx.mode, bool(ctx.align_corners), grad_output.dtype, grad_output.device)
        rows = interpolation_matrix(in_height, out_height, settings[0], settings[1], ctx.scales[0], *settings[2:])
        columns = interpolation_matrix(in_width, out_width, settings[0], settings[1], ctx.scales[1], *settings[2:])
        return average_pool_backward(grad_output, rows, columns), None, None, None, None  # δX = R_hᵀ δZ R_w

    @staticmethod
    def jvp(ctx, input_tangent, *_):  # linear: Ż = R_h Ẋ R_wᵀ, the same resizing of the tangent
        return InterpolateFunction.forward(input_tangent, ctx.size, ctx.mode, ctx.align_corners, ctx.scales)


@hand_writes(torch.nn.functional.interpolate)
def interpolate(input: Tensor, size=None, scale_factor=None, mode: str = "nearest", align_corners: bool | None = None,
                recompute_scale_factor: bool | None = None, antialias: bool = False) -> Tensor:
    """Resize (N, C, H, W) images like ``torch.nn.functional.interpolate`` with mode "nearest" or
    "bilinear", with the hand-written backward δX = R_hᵀ δZ R_w. Other modes, ranks and antialias are
    left to PyTorch (NotImplementedError)."""
    arguments = _interpolate_arguments(input, size, scale_factor, mode, align_corners, recompute_scale_factor,
                                       antialias)
    return apply(InterpolateFunction, *arguments)


def _interpolate_arguments(input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias):
    """InterpolateFunction's arguments for ``interpolate``'s, checked: (input, output size, mode,
    align_corners, scales)."""
    if mode not in ("nearest", "bilinear") or antialias or not isinstance(input, Tensor) or input.dim() != 4:
        raise NotImplementedError(f"interpolate: mode={mode!r}, antialias={antialias} on a "
                                  f"{getattr(input, 'dim', lambda: '?')()}-D input is left to PyTorch's interpolate "
                                  f"(manualbp's: nearest and bilinear on (N, C, H, W) images)")
    if not input.is_floating_point():
        raise NotImplementedError(f"interpolate: a {input.dtype} input is left to PyTorch's interpolate")
    if mode == "nearest" and align_corners is not None:
        raise ValueError("align_corners option can only be set with the interpolating modes: linear | bilinear | "
                         "bicubic | trilinear")
    in_size = input.shape[-2:]
    if size is not None:
        if scale_factor is not None:
            raise ValueError("only one of size or scale_factor should be defined")
        out_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        scales = (None, None)
    elif scale_factor is not None:
        factors = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
        out_size = tuple(int(math.floor(float(n) * float(f))) for n, f in zip(in_size, factors, strict=True))
        scales = (None, None) if recompute_scale_factor else tuple(1 / float(f) for f in factors)
    else:
        raise ValueError("either size or scale_factor should be defined")
    if len(out_size) != 2 or any(not isinstance(n, int) or n < 1 for n in out_size):
        raise NotImplementedError(f"interpolate: output size {out_size} is left to PyTorch's interpolate")
    return input, out_size, mode, align_corners, scales


class Upsample(SharesState, torch.nn.Upsample, torch_twin=torch.nn.Upsample):
    """``torch.nn.Upsample`` (same settings) whose resizing has the hand-written backward
    δX = R_hᵀ δZ R_w: nearest and bilinear on (N, C, H, W) images (other modes run PyTorch's)."""

    def forward(self, input: Tensor) -> Tensor:
        try:
            return interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                               recompute_scale_factor=self.recompute_scale_factor)
        except NotImplementedError:
            return super().forward(input)

    def function_and_arguments(self, input: Tensor):
        return InterpolateFunction, _interpolate_arguments(input, self.size, self.scale_factor, self.mode,
                                                           self.align_corners, self.recompute_scale_factor, False)

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(scale_factor=2, mode="bilinear"), (torch.randn(2, 3, 4, 5, dtype=dtype),)
