"""Pooling with hand-written backward passes: δ goes back to where the forward took its values.

* Max pooling takes one value per window, so δZ goes to that one place (the window's argmax, as
  torch's forward found it; overlapping windows that share an argmax add up their δ).
* Average pooling is linear and separable: each output row averages a window of input rows and
  each output column a window of columns, so Z = A_h X A_wᵀ for two averaging matrices, and the
  backward is the slides' linear-layer formula δX = A_hᵀ δZ A_w. ``avg_pool2d`` and
  ``adaptive_avg_pool2d`` differ only in where their windows lie and what they divide by.

Shapes: input (N, C, H, W) or (C, H, W); output (N, C, H_out, W_out) or (C, H_out, W_out).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from manualbp.layers.base import LayerFunction, apply, hand_writes, is_traced
from manualbp.layers.conv import Pair, int_pair
from manualbp.layers.sharing import SharesState

__all__ = [
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "adaptive_avg_pool2d_forward",
    "average_pool_backward",
    "global_average_pool_backward_fast",
    "avg_pool2d_matrices",
    "adaptive_avg_pool2d_matrices", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "ZeroDerivativeInInput"]


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------


def max_pool2d_forward(
    input: Tensor, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil_mode: bool
) -> tuple[Tensor, Tensor]:
    """Z = the max of each window, and where it is.

    input X: (N, C, H, W) or (C, H, W). Returns Z: (N, C, H_out, W_out) and the argmax of each
    window as an index into its H·W plane (int64, Z's shape); ties as torch breaks them.

    The kernel: torch's CPU max pool over an (N, C, H, W) layout takes one value at a time, over a
    channels-last layout a vector of channels at a time (same values, same argmax, NaN and ties
    alike). With at least a vector's worth of channels (8 float32 with AVX2) the channels-last
    round trip is 2.5-4x faster on this project's CPU (LeNet's second pool, 16 channels: 1.85 ms
    -> 0.55 ms at batch 128); with fewer it is not, so they keep the layout they come in.
    """
    if _channels_last_pays(input):
        output, indices = torch.nn.functional.max_pool2d(  # Z = max over each window, and its argmax
            input.contiguous(memory_format=torch.channels_last), kernel_size, stride, padding, dilation, ceil_mode,
            return_indices=True,
        )
        return output.contiguous(), indices.contiguous()  # in the layout torch's op gives this input
    return torch.nn.functional.max_pool2d(  # Z = max over each window, and its argmax
        input, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True
    )


_CHANNELS_PER_VECTOR = 8  # float32 lanes of an AVX2 register


def _channels_last_pays(input: Tensor) -> bool:
    """Whether max pooling ``input`` through a channels-last copy is faster: a plain eager CPU batch
    (N, C, H, W) with ≥ 8 channels, not channels-last already (torch.compile and torch.func
    transforms make their own kernels, and read no layout choice)."""
    return (
        input.dim() == 4 and input.shape[1] >= _CHANNELS_PER_VECTOR and input.device.type == "cpu"
        and not is_traced(input)  # first: vmap cannot answer the layout question below
        and not input.is_contiguous(memory_format=torch.channels_last)
    )


def max_pool2d_backward(grad_output: Tensor, indices: Tensor, input_shape: tuple[int, ...]) -> Tensor:
    """δX[argmax of window] += δZ[window]; 0 where no window took its value.

    grad_output δZ and indices: (N, C, H_out, W_out) or (C, H_out, W_out);
    input_shape: X's shape. Returns δX: X's shape.
    """
    planes, windows = math.prod(input_shape[:-2]), grad_output.shape[-2] * grad_output.shape[-1]
    grad_input = grad_output.new_zeros(planes, input_shape[-2] * input_shape[-1])  # a row per (image, channel)
    indices, grad_output = indices.reshape(planes, windows), grad_output.reshape(planes, windows)
    grad_input.scatter_add_(1, indices, grad_output)  # δX[argmax] += δZ
    return grad_input.view(input_shape)


def _planes(tensor: Tensor) -> Tensor:
    """``(*, H, W)`` -> ``(*, H·W)``: each plane as a row (reshape, so non-contiguous input is fine)."""
    return tensor.reshape(*tensor.shape[:-2], -1)


def avg_pool2d_forward(
    input: Tensor,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Tensor:
    """Z = the mean of each window (Z = A_h X A_wᵀ, see :func:`avg_pool2d_matrices`).

    input X: (N, C, H, W) or (C, H, W). Returns Z: (N, C, H_out, W_out) or (C, H_out, W_out).
    """
    return torch.nn.functional.avg_pool2d(  # Z = A_h X A_wᵀ: the mean of each window
        input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )


def adaptive_avg_pool2d_forward(input: Tensor, output_size: Pair) -> Tensor:
    """Z = the mean of each of H_out × W_out nearly equal windows (Z = A_h X A_wᵀ).

    input X: (N, C, H, W) or (C, H, W). Returns Z: (N, C, H_out, W_out) or (C, H_out, W_out).
    """
    return torch.nn.functional.adaptive_avg_pool2d(input, output_size)  # Z = A_h X A_wᵀ


def average_pool_backward(grad_output: Tensor, row_matrix: Tensor, column_matrix: Tensor) -> Tensor:
    """δX = A_hᵀ δZ A_w for Z = A_h X A_wᵀ (the linear layer's δX = δZ Wᵀ, from both sides).

    grad_output δZ: ``(*, H_out, W_out)``; row_matrix A_h: (H_out, H); column_matrix A_w: (W_out, W).
    Returns δX: ``(*, H, W)``.
    """
    return row_matrix.t() @ (grad_output @ column_matrix)  # δX = A_hᵀ δZ A_w


def global_average_pool_backward_fast(grad_output: Tensor, input_shape: tuple[int, ...]) -> Tensor:
    """:func:`average_pool_backward` for a 1 × 1 output, where A_h = 1/H and A_w = 1/W are rows of
    constants: δX = δZ/(H·W) at every position, with no matrices built or multiplied.
    grad_output δZ: ``(*, 1, 1)`` -> δX: input_shape ``(*, H, W)``."""
    height, width = input_shape[-2:]
    return (grad_output / (height * width)).expand(input_shape).contiguous()  # δX = A_hᵀ δZ A_w = δZ/(HW)


def _averaging_matrix(starts: Tensor, ends: Tensor, divisors: Tensor, size: int, like: Tensor) -> Tensor:
    """A: (len(starts), size) with A[i, h] = 1/divisors[i] for starts[i] ≤ h < ends[i], else 0."""
    positions = torch.arange(size, device=like.device)
    inside = (starts[:, None] <= positions) & (positions < ends[:, None])
    return inside.to(like.dtype) / divisors.clamp_min(1)[:, None].to(like.dtype)


def avg_pool2d_matrices(
    input_shape, output_shape, kernel_size, stride, padding, count_include_pad, divisor_override, like: Tensor
) -> tuple[Tensor, Tensor]:
    """A_h (H_out, H) and A_w (W_out, W) with avg_pool2d(X) = A_h X A_wᵀ, windows as torch lays
    them: window i spans [i·stride − padding, i·stride − padding + kernel) clipped to the padded
    input (its size is the divisor with ``count_include_pad``), then clipped to the input (its
    size is the divisor without); ``divisor_override`` replaces both."""
    matrices = []
    for axis in (0, 1):
        size, out_size = input_shape[-2 + axis], output_shape[-2 + axis]
        starts = torch.arange(out_size, device=like.device) * stride[axis] - padding[axis]
        ends = (starts + kernel_size[axis]).clamp_max(size + padding[axis])
        clipped_starts, clipped_ends = starts.clamp_min(0), ends.clamp_max(size)
        divisors = (ends - starts) if count_include_pad else (clipped_ends - clipped_starts)
        if divisor_override is not None:  # the whole divisor on the rows, none on the columns
            divisors = torch.full_like(divisors, divisor_override if axis == 0 else 1)
        matrices.append(_averaging_matrix(clipped_starts, clipped_ends, divisors, size, like))
    return matrices[0], matrices[1]


def adaptive_avg_pool2d_matrices(input_shape, output_shape, like: Tensor) -> tuple[Tensor, Tensor]:
    """A_h (H_out, H) and A_w (W_out, W) with adaptive_avg_pool2d(X) = A_h X A_wᵀ: window i
    spans [⌊i·H/H_out⌋, ⌈(i+1)·H/H_out⌉), as in torch."""
    matrices = []
    for axis in (0, 1):
        size, out_size = input_shape[-2 + axis], output_shape[-2 + axis]
        index = torch.arange(out_size, device=like.device)
        starts = torch.div(index * size, out_size, rounding_mode="floor")
        ends = torch.div((index + 1) * size + out_size - 1, out_size, rounding_mode="floor")
        matrices.append(_averaging_matrix(starts, ends, ends - starts, size, like))
    return matrices[0], matrices[1]


# ----------------------------------------------------------------------------------------------
# The autograd Functions
# ----------------------------------------------------------------------------------------------


class ZeroDerivativeInInput(LayerFunction):
    """δX of a pool, ``grad_input``, tied to the pool's input X by a derivative of 0: a pool's
    backward reads no value of X (the argmax indices, or the averaging matrices, are fixed), so
    ∂δX/∂X = 0. Used when the backward is recorded (``create_graph=True``), so that a second
    derivative with respect to X is 0, as PyTorch's, rather than an error that X is not in the graph."""

    @staticmethod
    def forward(grad_input, input):
        return grad_input.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        input = inputs[1]
        ctx.input_layout = input.shape, input.dtype, input.device

    @staticmethod
    def backward(ctx, grad):
        shape, dtype, device = ctx.input_layout
        return grad, torch.zeros(shape, dtype=dtype, device=device) if ctx.needs_input_grad[1] else None  # ∂δX/∂X = 0

    @staticmethod
    def jvp(ctx, grad_input_tangent, input_tangent):
        return grad_input_tangent


def _recorded(grad_input: Tensor, input: Tensor) -> Tensor:
    """``grad_input``, tied to ``input`` by a zero derivative where the backward is being recorded."""
    return apply(ZeroDerivativeInInput, grad_input, input) if torch.is_grad_enabled() else grad_input


class MaxPool2dFunction(LayerFunction):
    """Max pooling; backward routes δZ to each window's argmax. Returns (Z, argmax indices) and
    saves only the indices (an output; torch also keeps the input)."""


    @staticmethod
    def forward(input, kernel_size, stride, padding, dilation, ceil_mode):
        return max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.input_shape = tuple(inputs[0].shape)
        ctx.save_for_backward(indices, inputs[0])  # X for a recorded backward only (as PyTorch keeps it)
        ctx.save_for_forward(indices)

    @staticmethod
    def backward(ctx, grad_output, grad_indices):
        indices, input = ctx.saved_tensors
        grad_input = _recorded(max_pool2d_backward(grad_output, indices, ctx.input_shape), input)
        return grad_input, None, None, None, None, None

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        indices = ctx.saved_tensors[0]  # Ż = Ẋ[argmax]: the tangent at the place the max came from
        tangent = _planes(input_tangent).gather(-1, _planes(indices)).view(indices.shape)
        return tangent, None


class AvgPool2dFunction(LayerFunction):
    """Average pooling Z = A_h X A_wᵀ with backward δX = A_hᵀ δZ A_w. Saves nothing: the
    averaging matrices follow from the shapes and the arguments."""


    @staticmethod
    def forward(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        return avg_pool2d_forward(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, *ctx.pool_args = inputs
        ctx.input_shape = tuple(input.shape)
        ctx.save_for_backward(input)  # for a recorded backward only (as PyTorch keeps it)

    @staticmethod
    def backward(ctx, grad_output):
        kernel_size, stride, padding, _, count_include_pad, divisor_override = ctx.pool_args
        row_matrix, column_matrix = avg_pool2d_matrices(
            ctx.input_shape, grad_output.shape, kernel_size, stride, padding, count_include_pad, divisor_override,
            grad_output,
        )
        grad_input = _recorded(average_pool_backward(grad_output, row_matrix, column_matrix), ctx.saved_tensors[0])
        return grad_input, *([None] * 6)

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        return avg_pool2d_forward(input_tangent, *ctx.pool_args)  # linear: Ż = A_h Ẋ A_wᵀ


class AdaptiveAvgPool2dFunction(LayerFunction):
    """Adaptive average pooling Z = A_h X A_wᵀ with backward δX = A_hᵀ δZ A_w; saves nothing."""


    @staticmethod
    def forward(input, output_size):
        return adaptive_avg_pool2d_forward(input, output_size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.output_size = inputs
        ctx.input_shape = tuple(input.shape)

    @staticmethod
    def backward(ctx, grad_output):
        if grad_output.shape[-2:] == (1, 1):  # global average pooling (ResNet's, MobileNet's head)
            return global_average_pool_backward_fast(grad_output, ctx.input_shape), None
        row_matrix, column_matrix = adaptive_avg_pool2d_matrices(ctx.input_shape, grad_output.shape, grad_output)
        return average_pool_backward(grad_output, row_matrix, column_matrix), None

    @staticmethod
    def jvp(ctx, input_tangent, output_size_tangent):
        return adaptive_avg_pool2d_forward(input_tangent, ctx.output_size)  # linear: Ż = A_h Ẋ A_wᵀ


# ----------------------------------------------------------------------------------------------
# The public functions: check the arguments, apply the Function
# ----------------------------------------------------------------------------------------------


def _check_pool_input(function: str, input: Tensor) -> None:
    if input.dim() not in (3, 4):
        raise ValueError(
            f"{function}: expected an input of shape (N, C, H, W) or (C, H, W), got shape {tuple(input.shape)}"
        )
    if not input.is_floating_point():
        raise TypeError(
            f"{function}: expected a floating-point input, got dtype {input.dtype}; convert it, e.g. input.float()"
        )


def _pool_geometry(function: str, kernel_size, stride, padding, dilation=1) -> tuple[Pair, Pair, Pair, Pair]:
    kernel_size = int_pair(function, "kernel_size", kernel_size, 1)
    stride = kernel_size if stride is None or stride == [] else int_pair(function, "stride", stride, 1)
    padding = int_pair(function, "padding", padding, 0)
    dilation = int_pair(function, "dilation", dilation, 1)
    for pad, k, d in zip(padding, kernel_size, dilation, strict=True):
        if pad > (d * (k - 1) + 1) // 2:
            raise ValueError(
                f"{function}: padding must be at most half the kernel size, got padding {padding} for "
                f"kernel_size {kernel_size}; reduce the padding"
            )
    return kernel_size, stride, padding, dilation


def _max_pool2d_arguments(input, kernel_size, stride, padding, dilation, ceil_mode) -> tuple:
    _check_pool_input("max_pool2d", input)
    kernel_size, stride, padding, dilation = _pool_geometry("max_pool2d", kernel_size, stride, padding, dilation)
    return input, kernel_size, stride, padding, dilation, bool(ceil_mode)


@hand_writes(torch.nn.functional.max_pool2d)
def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """2-D max pooling like ``torch.nn.functional.max_pool2d``, with the hand-written backward.

    input: (N, C, H, W) or (C, H, W); kernel_size, stride (default: kernel_size), padding
    (≤ half the kernel; pads with −inf), dilation: int or pair. Returns (N, C, H_out, W_out), and
    with ``return_indices`` also each window's argmax as an index into its H·W plane.
    """
    output, indices = apply(MaxPool2dFunction, *_max_pool2d_arguments(input, kernel_size, stride, padding, dilation,
                                                                       ceil_mode))
    return (output, indices) if return_indices else output


def _avg_pool2d_arguments(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    _check_pool_input("avg_pool2d", input)
    kernel_size, stride, padding, _ = _pool_geometry("avg_pool2d", kernel_size, stride, padding)
    if divisor_override is not None and not (isinstance(divisor_override, int) and divisor_override > 0):
        raise ValueError(f"avg_pool2d: divisor_override must be a positive int or None, got {divisor_override!r}")
    return input, kernel_size, stride, padding, bool(ceil_mode), bool(count_include_pad), divisor_override


@hand_writes(torch.nn.functional.avg_pool2d)
def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """2-D average pooling like ``torch.nn.functional.avg_pool2d``, with the hand-written backward.

    input: (N, C, H, W) or (C, H, W); kernel_size, stride (default: kernel_size), padding (≤ half
    the kernel; zeros): int or pair; ``count_include_pad`` counts the padding in the divisor;
    ``divisor_override`` replaces the divisor. Returns (N, C, H_out, W_out) or (C, H_out, W_out).
    """
    return apply(AvgPool2dFunction, *_avg_pool2d_arguments(input, kernel_size, stride, padding, ceil_mode,
                                                           count_include_pad, divisor_override))


def _adaptive_avg_pool2d_arguments(input: Tensor, output_size) -> tuple:
    _check_pool_input("adaptive_avg_pool2d", input)
    sizes = (output_size, output_size) if isinstance(output_size, int) or output_size is None else output_size
    if isinstance(sizes, (tuple, list)) and len(sizes) == 2:
        sizes = tuple(size if size is not None else input.shape[-2 + axis] for axis, size in enumerate(sizes))
    output_size = int_pair("adaptive_avg_pool2d", "output_size", sizes, 1)
    return input, output_size


@hand_writes(torch.nn.functional.adaptive_avg_pool2d)
def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """Adaptive 2-D average pooling like ``torch.nn.functional.adaptive_avg_pool2d``.

    input: (N, C, H, W) or (C, H, W); output_size: int or pair (an entry None keeps that input
    size). Returns (N, C, H_out, W_out) or (C, H_out, W_out).
    """
    return apply(AdaptiveAvgPool2dFunction, *_adaptive_avg_pool2d_arguments(input, output_size))


# ----------------------------------------------------------------------------------------------
# The Modules
# ----------------------------------------------------------------------------------------------


class MaxPool2d(torch.nn.MaxPool2d, SharesState, torch_twin=torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` with the hand-written backward (δ to each window's argmax)."""

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(2), (torch.randn(6, 2, 4, 4, dtype=dtype),)

    def forward(self, input: Tensor):
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                          self.return_indices)

    def function_and_arguments(self, input: Tensor):
        return MaxPool2dFunction, _max_pool2d_arguments(input, self.kernel_size, self.stride, self.padding,
                                                        self.dilation, self.ceil_mode)


class AvgPool2d(torch.nn.AvgPool2d, SharesState, torch_twin=torch.nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` with the hand-written backward δX = A_hᵀ δZ A_w."""

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(2), (torch.randn(6, 2, 4, 4, dtype=dtype),)

    def forward(self, input: Tensor) -> Tensor:
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                          self.divisor_override)

    def function_and_arguments(self, input: Tensor):
        return AvgPool2dFunction, _avg_pool2d_arguments(input, self.kernel_size, self.stride, self.padding,
                                                        self.ceil_mode, self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d, SharesState, torch_twin=torch.nn.AdaptiveAvgPool2d):
    """``torch.nn.AdaptiveAvgPool2d`` with the hand-written backward δX = A_hᵀ δZ A_w."""

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(3), (torch.randn(6, 2, 4, 4, dtype=dtype),)

    def forward(self, input: Tensor) -> Tensor:
        return adaptive_avg_pool2d(input, self.output_size)

    def function_and_arguments(self, input: Tensor):
        return AdaptiveAvgPool2dFunction, _adaptive_avg_pool2d_arguments(input, self.output_size)
