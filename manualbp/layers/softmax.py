"""Softmax and log-softmax over any dimension, with hand-written backward.

Along ``dim``, for one row x of n values:

    y = softmax(x):      y_i = e^(x_i) / Σ_j e^(x_j)
    backward:            δx = y·(δy − Σ_j δy_j·y_j)          (the Jacobian diag(y) − y yᵀ times δy)
    y = log_softmax(x):  y_i = x_i − log Σ_j e^(x_j)
    backward:            δx = δy − e^y·Σ_j δy_j               (e^y = softmax(x))

Both Jacobians are those of the lecture's softmax layer (its yp − y is the cross-entropy's δ
through this softmax). Shapes: any; the output has the input's shape.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from manualbp.layers.base import Layer, LayerFunction, apply, check_floating, hand_writes, owns_buffers

__all__ = [
    "softmax_forward",
    "softmax_backward",
    "log_softmax_forward",
    "log_softmax_backward",
    "SoftmaxFunction",
    "LogSoftmaxFunction",
    "softmax",
    "log_softmax",
    "Softmax",
    "LogSoftmax",
]


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------


# Rows of at most this many values (a 10-class classifier's logits) take PyTorch's softmax kernels on
# a CPU 3-5x as long as the formula's own few ops (1,024 × 10 in float32, one thread: softmax 180 µs
# against 38, log_softmax 154 against 40); from 64 values a row the kernels are the faster.
_SHORT_ROW = 16


def _in_separate_ops(input: Tensor, dim: int, short_rows_in_ops: bool) -> bool:
    """Whether softmax or log_softmax of ``input`` along ``dim`` runs as the formula's own ops: asked
    for, short rows along the last dimension, float32 (float64, the dtype of the checks and the
    notebooks' comparisons, keeps the kernel's values to the bit; a lower precision keeps the kernel,
    which sums in float32), and not recorded by autograd (the ops write over their own fresh buffers)."""
    return (short_rows_in_ops and input.dtype == torch.float32 and 0 < input.shape[dim] <= _SHORT_ROW
            and dim % input.dim() == input.dim() - 1 and not torch.is_grad_enabled())


def softmax_forward(input: Tensor, dim: int, short_rows_in_ops: bool = False) -> Tensor:
    """y = e^x / Σ e^x along ``dim``, the row maximum subtracted first, so any x is safe (PyTorch's
    kernel). ``short_rows_in_ops``: float32 rows of at most ``_SHORT_ROW`` values as the formula's own
    ops, faster, equal to the kernel's values to an ulp (the losses ask for it; the softmax layer keeps
    the kernel's values to the bit)."""
    if _in_separate_ops(input, dim, short_rows_in_ops):
        exponentials = (input - input.amax(dim, keepdim=True)).exp_()  # e^(x_i − max x)
        return exponentials.div_(exponentials.sum(dim, keepdim=True))  # y_i = e^(x_i) / Σ_j e^(x_j)
    return torch.softmax(input, dim)  # y_i = e^(x_i) / Σ_j e^(x_j)


def softmax_backward(grad_output: Tensor, output: Tensor, dim: int) -> Tensor:
    """δx = y·(δy − Σ δy·y) along ``dim``, from the saved output y; shape of y.

    One buffer where it is ours (:func:`owns_buffers`): δy·y, then δy − Σ, then ·y, in place."""
    if not owns_buffers(grad_output):
        row_sums = (grad_output * output).sum(dim, keepdim=True)  # Σ_j δy_j·y_j
        return output * (grad_output - row_sums)  # δx = y·(δy − Σ δy·y)
    buffer = grad_output * output
    row_sums = buffer.sum(dim, keepdim=True)  # Σ_j δy_j·y_j
    return torch.sub(grad_output, row_sums, out=buffer).mul_(output)  # δx = y·(δy − Σ δy·y)


def log_softmax_forward(input: Tensor, dim: int, short_rows_in_ops: bool = False) -> Tensor:
    """y = x − log Σ e^x along ``dim``, the row maximum subtracted first (stable for any x; PyTorch's
    kernel). ``short_rows_in_ops``: as in :func:`softmax_forward`."""
    if _in_separate_ops(input, dim, short_rows_in_ops):
        shifted = input - input.amax(dim, keepdim=True)  # x − max x
        return shifted.sub_(shifted.exp().sum(dim, keepdim=True).log_())  # y_i = x_i − log Σ_j e^(x_j)
    return torch.log_softmax(input, dim)  # y_i = x_i − log Σ_j e^(x_j)


def log_softmax_backward(grad_output: Tensor, output: Tensor, dim: int) -> Tensor:
    """δx = δy − e^y·Σ δy along ``dim``, from the saved output y = log softmax(x); shape of y."""
    row_sums = grad_output.sum(dim, keepdim=True)  # Σ_j δy_j
    if not owns_buffers(grad_output):
        return grad_output - torch.exp(output) * row_sums  # δx = δy − softmax(x)·Σ δy
    buffer = torch.exp(output).mul_(row_sums)  # one buffer: e^y·Σ δy, then δy minus it
    return torch.sub(grad_output, buffer, out=buffer)  # δx = δy − softmax(x)·Σ δy


def _log_softmax_tangent(input_tangent: Tensor, output: Tensor, dim: int) -> Tensor:
    """ẏ = ẋ − Σ e^y·ẋ (the Jacobian I − 1·softmaxᵀ is not symmetric: its transpose is the backward)."""
    return input_tangent - (torch.exp(output) * input_tangent).sum(dim, keepdim=True)


# ----------------------------------------------------------------------------------------------
# The Functions, public functions and Modules
# ----------------------------------------------------------------------------------------------


class SoftmaxFunction(LayerFunction):
    """softmax along dim, with backward y·(δy − Σ δy·y) from the saved output."""

    @staticmethod
    def forward(input, dim):
        return softmax_forward(input, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return softmax_backward(grad_output, output, ctx.dim), None

    @staticmethod
    def jvp(ctx, input_tangent, dim_tangent):
        (output,) = ctx.saved_tensors
        return softmax_backward(input_tangent, output, ctx.dim)  # the Jacobian is symmetric


class LogSoftmaxFunction(LayerFunction):
    """log softmax along dim, with backward δy − e^y·Σ δy from the saved output."""

    @staticmethod
    def forward(input, dim):
        return log_softmax_forward(input, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return log_softmax_backward(grad_output, output, ctx.dim), None

    @staticmethod
    def jvp(ctx, input_tangent, dim_tangent):
        (output,) = ctx.saved_tensors
        return _log_softmax_tangent(input_tangent, output, ctx.dim)


def _checked(name: str, input: Tensor, dim: int | None, dtype: torch.dtype | None) -> tuple[Tensor, int]:
    """The input (cast to ``dtype`` first, as torch does) and ``dim`` as a non-negative index."""
    if dim is None:
        dim = _implicit_dim(name, input.dim())
    if dtype is not None:
        input = input.to(dtype)
    check_floating(name, "input", input)
    rank = max(input.dim(), 1)
    if not -rank <= dim < rank:
        raise IndexError(f"{name}: dim {dim} out of range for an input of shape {tuple(input.shape)} "
                         f"(expected -{rank} ≤ dim < {rank})")
    return input, dim % rank


@hand_writes(torch.nn.functional.softmax, torch.softmax, Tensor.softmax)
def softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None) -> Tensor:
    """softmax along ``dim``, like ``torch.nn.functional.softmax``; any shape (``dtype``: cast the input first)."""
    input, dim = _checked("softmax", input, dim, dtype)
    return apply(SoftmaxFunction, input, dim)


@hand_writes(torch.nn.functional.log_softmax, torch.log_softmax, Tensor.log_softmax)
def log_softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3,
                dtype: torch.dtype | None = None) -> Tensor:
    """log softmax along ``dim``, like ``torch.nn.functional.log_softmax``; any shape."""
    input, dim = _checked("log_softmax", input, dim, dtype)
    return apply(LogSoftmaxFunction, input, dim)


def _implicit_dim(name: str, rank: int) -> int:
    """PyTorch's choice of dim when none is given (``torch.nn.functional._get_softmax_dim``), with its
    deprecation warning: 0 for an input of rank 0, 1 or 3, else 1."""
    warnings.warn(
        f"Implicit dimension choice for {name} has been deprecated. Change the call to include dim=X as an argument.",
        UserWarning,
        stacklevel=4,
    )
    return 0 if rank in (0, 1, 3) else 1


class Softmax(torch.nn.Softmax, Layer, torch_twin=torch.nn.Softmax):
    """softmax along ``dim`` with backward y·(δy − Σ δy·y); any shape. A drop-in for ``torch.nn.Softmax``."""

    def forward(self, input: Tensor) -> Tensor:
        return softmax(input, self.dim)

    @classmethod
    def from_torch(cls, module: torch.nn.Softmax) -> Softmax:
        return cls(module.dim)

    def to_torch(self) -> torch.nn.Softmax:
        return torch.nn.Softmax(self.dim)

    def function_and_arguments(self, input: Tensor):
        return SoftmaxFunction, _checked("softmax", input, self.dim, None)

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(dim=-1).to(dtype), (torch.randn(6, 4, dtype=dtype),)


class LogSoftmax(torch.nn.LogSoftmax, Layer, torch_twin=torch.nn.LogSoftmax):
    """log softmax along ``dim`` with backward δy − e^y·Σ δy; any shape. A drop-in for ``torch.nn.LogSoftmax``."""

    def forward(self, input: Tensor) -> Tensor:
        return log_softmax(input, self.dim)

    @classmethod
    def from_torch(cls, module: torch.nn.LogSoftmax) -> LogSoftmax:
        return cls(module.dim)

    def to_torch(self) -> torch.nn.LogSoftmax:
        return torch.nn.LogSoftmax(self.dim)

    def function_and_arguments(self, input: Tensor):
        return LogSoftmaxFunction, _checked("log_softmax", input, self.dim, None)

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(dim=-1).to(dtype), (torch.randn(6, 4, dtype=dtype),)
