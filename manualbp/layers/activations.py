"""Activations, elementwise: sigmoid, ReLU, ELU, tanh, leaky ReLU. Any input shape; the output has the same shape.

For an elementwise layer the Jacobian is diagonal, so the backward formula (δX = f'(X)·δZ) also
pushes a tangent forward (Ẋ ↦ f'(X)·Ẋ): each Function's ``jvp`` calls the same ``<layer>_backward``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from manualbp.layers.base import (
    Activation,
    LayerFunction,
    apply,
    apply_inplace,
    check_floating,
    multiply,
    one_minus,
    owns_buffers,
)

__all__ = [
    "sigmoid_forward",
    "sigmoid_backward",
    "relu_forward",
    "relu_backward",
    "elu_forward",
    "elu_backward",
    "tanh_forward",
    "tanh_backward",
    "SigmoidFunction",
    "sigmoid",
    "Sigmoid",
    "ReLUFunction",
    "ReLUInplaceFunction",
    "relu",
    "ReLU",
    "ELUFunction",
    "elu",
    "ELU",
    "TanhFunction",
    "tanh",
    "Tanh",
    "leaky_relu_forward",
    "leaky_relu_backward",
    "LeakyReLUFunction",
    "leaky_relu",
    "LeakyReLU",
]


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------


def sigmoid_forward(input: Tensor) -> Tensor:
    """σ(a) = 1/(1 + e^(−a)), elementwise; any shape.

    PyTorch's one kernel for it (as ``tanh_forward`` uses ``torch.tanh``): one buffer, where
    the expression written out would hold three at once, and finite for every a.
    """
    return torch.sigmoid(input)  # σ(a) = 1/(1+e^(−a))


def sigmoid_backward(grad_output: Tensor, output: Tensor) -> Tensor:
    """δA = σ(A)(1 − σ(A))·δZ, from the saved output Z = σ(A); same shape as grad_output.

    Multiplied in PyTorch's order, (1 − σ)·δZ·σ (so the values agree to the bit), in one new buffer.
    """
    return multiply(1 - output, grad_output, output, into_first=owns_buffers(grad_output))  # δA = σ(1−σ)·δZ


def relu_forward(input: Tensor, inplace: bool = False) -> Tensor:
    """max(0, x), elementwise; any shape. ``inplace=True`` writes Z over X (and returns X)."""
    return input.clamp_min_(0) if inplace else input.clamp_min(0)  # Z = max(0, X)


def relu_backward(grad_output: Tensor, output: Tensor, into_grad_output: bool = False) -> Tensor:
    """δX = 1[X > 0]·δZ, from the saved output Z = max(0, X); same shape.

    Read as a select, not a product: δZ where Z > 0, else exactly 0, as PyTorch's ReLU does --
    so an infinite or NaN δZ at X ≤ 0 gives 0 (a product would give inf·0 = NaN), and a NaN input
    (Z = NaN, not ≤ 0) passes δZ through. aten's ``threshold_backward(δZ, Z, 0)`` is that select
    in one pass and one output buffer (``torch.where(output > 0, grad_output, 0)`` is the same
    select, but builds a boolean mask first and runs ~10x slower on CPU).
    ``into_grad_output``: write δX over δZ, for a caller that made δZ itself and needs it no more
    (the one-node MLP: no new buffer per hidden layer and step).
    """
    if into_grad_output:  # the out= overload, named: resolving it from keywords costs ~5 µs a call
        return _threshold_backward.grad_input(grad_output, output, 0, grad_input=grad_output)  # δX = 1[Z>0]·δZ
    return _threshold_backward.default(grad_output, output, 0)  # δX = 1[Z>0]·δZ


_threshold_backward = torch.ops.aten.threshold_backward


def elu_forward(input: Tensor, alpha: float = 1.0) -> Tensor:
    """x if x > 0 else α(eˣ − 1), elementwise; any shape."""
    return torch.nn.functional.elu(input, alpha)  # Z = X if X>0 else α(e^X − 1) (one kernel, one buffer)


def elu_backward(grad_output: Tensor, input: Tensor, output: Tensor, alpha: float = 1.0) -> Tensor:
    """δX = δZ·(Z + α if X ≤ 0 else 1): for X ≤ 0, d/dx α(eˣ − 1) = αeˣ = Z + α; same shape.

    Tested as X ≤ 0 (not X > 0), so that a NaN input takes the 1 branch, as in PyTorch's ELU.
    """
    in_place = owns_buffers(grad_output)
    grad_negative = multiply(output + alpha, grad_output, into_first=in_place)  # δZ·(Z+α), for X ≤ 0
    # The select, into the same buffer where it is ours (torch.where takes out= aliasing an input).
    out = grad_negative if in_place else None
    return torch.where(input <= 0, grad_negative, grad_output, out=out)  # δX = δZ·(Z+α | 1)


def tanh_forward(input: Tensor) -> Tensor:
    """tanh x = (eˣ − e⁻ˣ)/(eˣ + e⁻ˣ), elementwise; any shape."""
    return torch.tanh(input)  # Y = tanh X


def tanh_backward(grad_output: Tensor, output: Tensor) -> Tensor:
    """δX = (1 − Y²)·δZ, from the saved output Y = tanh X; same shape."""
    in_place = owns_buffers(grad_output)
    return multiply(one_minus(output * output, in_place), grad_output, into_first=in_place)  # δX = (1 − y²)·δZ


def leaky_relu_forward(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    """Z = X if X > 0 else a·X (a = negative_slope), elementwise; any shape."""
    return torch.nn.functional.leaky_relu(input, negative_slope)  # Z = X if X>0 else a·X (one fused kernel)


def leaky_relu_backward(grad_output: Tensor, saved: Tensor, negative_slope: float = 0.01) -> Tensor:
    """δX = δZ if X > 0 else a·δZ; any shape.

    ``saved`` is X, or Z when a ≥ 0 (then Z > 0 exactly where X > 0). At X = 0 (and for NaN X)
    the slope is a, as in torch.
    """
    return torch.where(saved > 0, grad_output, grad_output * negative_slope)  # δX = δZ if X>0 else a·δZ


# ----------------------------------------------------------------------------------------------
# The layers: Function, public function, Module
# ----------------------------------------------------------------------------------------------


class SigmoidFunction(LayerFunction):
    """σ(a) = 1/(1+e^(−a)) with backward σ(1−σ)·δZ from the saved output."""

    @staticmethod
    def forward(input):
        return sigmoid_forward(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return sigmoid_backward(grad_output, output)

    @staticmethod
    def jvp(ctx, input_tangent):
        (output,) = ctx.saved_tensors
        return sigmoid_backward(input_tangent, output)


def sigmoid(input: Tensor) -> Tensor:
    """σ(a) = 1/(1 + e^(−a)) elementwise, like ``torch.sigmoid``; any shape, floating point."""
    check_floating("sigmoid", "input", input)
    return apply(SigmoidFunction, input)


class Sigmoid(torch.nn.Sigmoid, Activation, torch_twin=torch.nn.Sigmoid, name="sigmoid"):
    """σ(a) = 1/(1 + e^(−a)) elementwise with backward σ(1−σ)·δZ; any shape."""

    def forward(self, input: Tensor) -> Tensor:
        return sigmoid(input)

    def function_and_arguments(self, input: Tensor):
        return SigmoidFunction, (input,)


class ReLUFunction(LayerFunction):
    """max(0, x) with backward 1[x>0]·δZ (a select: δZ where Z > 0, else 0) from the saved output."""

    @staticmethod
    def forward(input):
        return relu_forward(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return relu_backward(grad_output, output)

    @staticmethod
    def jvp(ctx, input_tangent):
        (output,) = ctx.saved_tensors
        return relu_backward(input_tangent, output)


class ReLUInplaceFunction(ReLUFunction):
    """max(0, x) written over x (``ReLU(inplace=True)``), with the same backward from the saved
    output: the input is marked dirty, so autograd knows it now holds Z, as for torch's ``relu_``.
    Eager autograd only: :func:`manualbp.layers.base.apply_inplace` says what runs elsewhere."""

    @staticmethod
    def forward(input):
        return relu_forward(input, inplace=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_dirty(*inputs)
        ReLUFunction.setup_context(ctx, inputs, output)

    @staticmethod
    def jvp(ctx, input_tangent):
        (output,) = ctx.saved_tensors
        return input_tangent.copy_(relu_backward(input_tangent, output))  # Ż = 1[Z>0]·Ẋ, over Ẋ as Z over X


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """max(0, x) elementwise, like ``torch.nn.functional.relu``; any shape, floating point.

    ``inplace=True`` overwrites ``input`` with the result and returns it, as ``F.relu(x, inplace=True)``
    does (and, like it, fails for a leaf that requires grad or a tensor autograd still needs).
    """
    check_floating("relu", "input", input)
    return apply_inplace(ReLUInplaceFunction, ReLUFunction, input) if inplace else apply(ReLUFunction, input)


class ReLU(torch.nn.ReLU, Activation, torch_twin=torch.nn.ReLU, name="relu"):
    """max(0, x) elementwise with backward 1[x>0]·δZ; any shape. ``inplace=True`` overwrites the
    input, as ``torch.nn.ReLU(inplace=True)`` does (so ``h + relu(h)`` means the same after convert)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=inplace)

    def forward(self, input: Tensor) -> Tensor:
        return relu(input, inplace=self.inplace)

    @classmethod
    def from_torch(cls, module: torch.nn.ReLU) -> ReLU:
        return cls(module.inplace)

    def to_torch(self) -> torch.nn.ReLU:
        return torch.nn.ReLU(self.inplace)

    def function_and_arguments(self, input: Tensor):
        # Out of place even for inplace=True: the explicit engine keeps each layer's input for the
        # layer below's backward (e.g. a Tanh's saved output), so it must not be overwritten.
        return ReLUFunction, (input,)


class ELUFunction(LayerFunction):
    """x if x>0 else α(eˣ−1), with backward δZ·(1 if x>0 else y+α)."""

    @staticmethod
    def forward(input, alpha):
        return elu_forward(input, alpha)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, alpha = inputs
        ctx.alpha = alpha
        ctx.save_for_backward(input, output)
        ctx.save_for_forward(input, output)

    @staticmethod
    def backward(ctx, grad_output):
        input, output = ctx.saved_tensors
        return elu_backward(grad_output, input, output, ctx.alpha), None

    @staticmethod
    def jvp(ctx, input_tangent, alpha_tangent):
        input, output = ctx.saved_tensors
        return elu_backward(input_tangent, input, output, ctx.alpha)


def elu(input: Tensor, alpha: float = 1.0) -> Tensor:
    """x if x > 0 else α(eˣ − 1) elementwise, like ``torch.nn.functional.elu``; any shape."""
    check_floating("elu", "input", input)
    return apply(ELUFunction, input, float(alpha))


class ELU(torch.nn.ELU, Activation, torch_twin=torch.nn.ELU, name="elu"):
    """x if x > 0 else α(eˣ − 1) elementwise with backward δZ·(1 if x>0 else y+α); any shape."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__(alpha=alpha, inplace=False)

    def forward(self, input: Tensor) -> Tensor:
        return elu(input, self.alpha)

    @classmethod
    def from_torch(cls, module: torch.nn.ELU) -> ELU:
        if module.inplace:  # its backward needs the input, which in place would be gone
            raise ValueError(
                f"convert: manualbp's ELU has no in-place form, got {module!r}; build the model with "
                f"ELU(alpha={module.alpha}, inplace=False) first (the same values unless the model reuses "
                f"the ELU's input afterwards)"
            )
        return cls(module.alpha)

    def to_torch(self) -> torch.nn.ELU:
        return torch.nn.ELU(self.alpha)

    def function_and_arguments(self, input: Tensor):
        return ELUFunction, (input, float(self.alpha))


class TanhFunction(LayerFunction):
    """tanh x with backward (1 − y²)·δZ from the saved output."""

    @staticmethod
    def forward(input):
        return tanh_forward(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return tanh_backward(grad_output, output)

    @staticmethod
    def jvp(ctx, input_tangent):
        (output,) = ctx.saved_tensors
        return tanh_backward(input_tangent, output)


def tanh(input: Tensor) -> Tensor:
    """tanh x elementwise, like ``torch.tanh``; any shape, floating point."""
    check_floating("tanh", "input", input)
    return apply(TanhFunction, input)


class Tanh(torch.nn.Tanh, Activation, torch_twin=torch.nn.Tanh, name="tanh"):
    """tanh x elementwise with backward (1 − y²)·δZ; any shape. A drop-in for ``torch.nn.Tanh``."""

    def forward(self, input: Tensor) -> Tensor:
        return tanh(input)

    def function_and_arguments(self, input: Tensor):
        return TanhFunction, (input,)


class LeakyReLUFunction(LayerFunction):
    """Z = X if X > 0 else a·X, with backward δZ if X > 0 else a·δZ."""

    @staticmethod
    def forward(input, negative_slope):
        return leaky_relu_forward(input, negative_slope)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.negative_slope = inputs
        # Z tells where X > 0 when a ≥ 0, and the next layer often keeps Z anyway (no extra memory).
        saved = output if ctx.negative_slope >= 0 else input
        ctx.save_for_backward(saved)
        ctx.save_for_forward(saved)

    @staticmethod
    def backward(ctx, grad_output):
        (saved,) = ctx.saved_tensors
        return leaky_relu_backward(grad_output, saved, ctx.negative_slope), None

    @staticmethod
    def jvp(ctx, input_tangent, slope_tangent):
        (saved,) = ctx.saved_tensors
        return leaky_relu_backward(input_tangent, saved, ctx.negative_slope)  # diagonal: Ż = f'(X)·Ẋ


def leaky_relu(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    """X if X > 0 else negative_slope·X elementwise, like ``torch.nn.functional.leaky_relu``; any shape."""
    check_floating("leaky_relu", "input", input)
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise TypeError(f"leaky_relu: expected negative_slope as a number, got {negative_slope!r}")
    return apply(LeakyReLUFunction, input, float(negative_slope))


class LeakyReLU(torch.nn.LeakyReLU, Activation, torch_twin=torch.nn.LeakyReLU, name="leaky_relu"):
    """X if X > 0 else a·X elementwise with backward δZ if X > 0 else a·δZ; any shape. (Never in place.)"""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__(negative_slope=negative_slope, inplace=False)

    def forward(self, input: Tensor) -> Tensor:
        return leaky_relu(input, self.negative_slope)

    @classmethod
    def from_torch(cls, module: torch.nn.LeakyReLU) -> LeakyReLU:
        return cls(module.negative_slope)

    def to_torch(self) -> torch.nn.LeakyReLU:
        return torch.nn.LeakyReLU(self.negative_slope)

    def function_and_arguments(self, input: Tensor):
        return LeakyReLUFunction, (input, float(self.negative_slope))
