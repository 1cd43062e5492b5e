"""Activations, elementwise: sigmoid, ReLU, ELU, tanh, leaky ReLU, GELU, SiLU, hardtanh / ReLU6. Any input
shape; the output has the same shape.

For an elementwise layer the Jacobian is diagonal, so the backward formula (δX = f'(X)·δZ) also
pushes a tangent forward (Ẋ ↦ f'(X)·Ẋ): each Function's ``jvp`` calls the same ``<layer>_backward``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from manualbp.layers.base import (
    Activation,
    LayerFunction,
    apply,
    apply_inplace,
    check_floating,
    hand_writes,
    multiply,
    one_minus,
    owns_buffers,
    refuse_inplace,
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
    "tanh_backward_fast",
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
    "LeakyReLUBackwardFunction",
    "leaky_relu",
    "LeakyReLU",
    "gelu_forward",
    "gelu_backward",
    "GELUFunction",
    "gelu",
    "GELU",
    "silu_forward",
    "silu_backward",
    "SiLUFunction",
    "silu",
    "SiLU",
    "hardtanh_forward",
    "hardtanh_backward",
    "HardtanhFunction",
    "HardtanhOutputSavedFunction",
    "HardtanhInplaceFunction",
    "hardtanh",
    "relu6",
    "Hardtanh",
    "ReLU6",
    "hardswish_backward", "HardswishFunction", "hardswish", "Hardswish",
    "hardsigmoid_backward", "HardsigmoidFunction", "hardsigmoid", "Hardsigmoid",
    "softplus_backward", "SoftplusFunction", "softplus", "Softplus",
    "mish_backward", "MishFunction", "mish", "Mish",
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


def elu_backward(
    grad_output: Tensor, input: Tensor, output: Tensor, alpha: float = 1.0, into_output: bool = False
) -> Tensor:
    """δX = δZ·(Z + α if X ≤ 0 else 1): for X ≤ 0, d/dx α(eˣ − 1) = αeˣ = Z + α; same shape.

    Tested as X ≤ 0 (not X > 0), so that a NaN input takes the 1 branch, as in PyTorch's ELU.
    ``into_output``: Z + α written over Z, for a caller that computed Z for this call alone.
    """
    in_place = owns_buffers(grad_output)
    shifted = output.add_(alpha) if into_output else output + alpha  # Z + α
    grad_negative = multiply(shifted, grad_output, into_first=in_place)  # δZ·(Z+α), for X ≤ 0
    # The select, into the same buffer where it is ours (torch.where takes out= aliasing an input).
    out = grad_negative if in_place else None
    return torch.where(input <= 0, grad_negative, grad_output, out=out)  # δX = δZ·(Z+α | 1)


def tanh_forward(input: Tensor) -> Tensor:
    """tanh x = (eˣ − e⁻ˣ)/(eˣ + e⁻ˣ), elementwise; any shape."""
    return torch.tanh(input)  # Y = tanh X


def tanh_backward(grad_output: Tensor, output: Tensor) -> Tensor:
    """δX = (1 − Y²)·δZ, from the saved output Y = tanh X; same shape."""
    return (1 - output * output) * grad_output  # δX = (1 − y²)·δZ


def tanh_backward_fast(grad_output: Tensor, output: Tensor) -> Tensor:
    """:func:`tanh_backward` in the one buffer it makes (1 − y², then ·δZ in place): the same
    numbers to the bit, half the peak memory; where ``owns_buffers`` allows it."""
    return one_minus(output * output, True).mul_(grad_output)  # δX = (1 − y²)·δZ


def leaky_relu_forward(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    """Z = X if X > 0 else a·X (a = negative_slope), elementwise; any shape."""
    return torch.nn.functional.leaky_relu(input, negative_slope)  # Z = X if X>0 else a·X (one fused kernel)


def leaky_relu_backward(grad_output: Tensor, saved: Tensor, negative_slope: float = 0.01) -> Tensor:
    """δX = δZ if X > 0 else a·δZ; any shape.

    ``saved`` is X (or Z when a ≥ 0: then Z > 0 exactly where X > 0). At X = 0 (and for NaN X)
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


@hand_writes(torch.nn.functional.sigmoid, torch.sigmoid, Tensor.sigmoid)
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


@hand_writes(torch.nn.functional.relu, torch.relu, Tensor.relu)
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
    """x if x>0 else α(eˣ−1), with backward δZ·(1 if x>0 else y+α).

    Saves X only, as PyTorch's ELU does, and takes Z again from it in the backward: a saved Z would
    make ``h = elu(x); h += skip`` fail there."""

    @staticmethod
    def forward(input, alpha):
        return elu_forward(input, alpha)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, alpha = inputs
        ctx.alpha = alpha
        ctx.save_for_backward(input)
        ctx.save_for_forward(input)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        return elu_backward(grad_output, input, _elu_output(input, ctx.alpha), ctx.alpha, into_output=True), None

    @staticmethod
    def jvp(ctx, input_tangent, alpha_tangent):
        (input,) = ctx.saved_tensors
        return elu_backward(input_tangent, input, _elu_output(input, ctx.alpha), ctx.alpha, into_output=True)


def _elu_output(input: Tensor, alpha: float) -> Tensor:
    """Z = ELU(X) for the backward; through ELUFunction where a second derivative is being recorded."""
    if torch.is_grad_enabled() and input.requires_grad:
        return ELUFunction.apply(input, alpha)
    return elu_forward(input, alpha)


@hand_writes(torch.nn.functional.elu)
def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """x if x > 0 else α(eˣ − 1) elementwise, like ``torch.nn.functional.elu``; any shape.
    ``inplace=True`` raises NotImplementedError (the backward needs the input it would overwrite)."""
    if inplace:
        refuse_inplace("elu", "its backward needs the input it would overwrite")
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
        backward = tanh_backward_fast if owns_buffers(grad_output) else tanh_backward
        return backward(grad_output, output)

    @staticmethod
    def jvp(ctx, input_tangent):
        (output,) = ctx.saved_tensors
        return tanh_backward(input_tangent, output)


@hand_writes(torch.nn.functional.tanh, torch.tanh, Tensor.tanh)
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
        # X, as PyTorch saves: a saved Z would make ``h = leaky_relu(x); h += skip`` fail in backward.
        ctx.save_for_backward(input)
        ctx.save_for_forward(input)

    @staticmethod
    def backward(ctx, grad_output):
        (saved,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # a second derivative is being recorded
            return apply(LeakyReLUBackwardFunction, grad_output, saved, ctx.negative_slope), None
        return leaky_relu_backward(grad_output, saved, ctx.negative_slope), None

    @staticmethod
    def jvp(ctx, input_tangent, slope_tangent):
        (saved,) = ctx.saved_tensors
        return leaky_relu_backward(input_tangent, saved, ctx.negative_slope)  # diagonal: Ż = f'(X)·Ẋ


class LeakyReLUBackwardFunction(LayerFunction):
    """The backward δX = δZ if X > 0 else a·δZ as a function of (δZ, X), for second derivatives:
    linear in δZ (its derivative is the same select) and piecewise constant in X (derivative 0,
    which PyTorch gives too where nothing else depends on X)."""

    @staticmethod
    def forward(grad_output, saved, negative_slope):
        return leaky_relu_backward(grad_output, saved, negative_slope)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, saved, ctx.negative_slope = inputs
        ctx.save_for_backward(saved)
        ctx.save_for_forward(saved)

    @staticmethod
    def backward(ctx, grad_grad):
        (saved,) = ctx.saved_tensors
        grad_saved = torch.zeros_like(saved) if ctx.needs_input_grad[1] else None  # ∂(δX)/∂X = 0
        return apply(LeakyReLUBackwardFunction, grad_grad, saved, ctx.negative_slope), grad_saved, None

    @staticmethod
    def jvp(ctx, grad_output_tangent, saved_tangent, slope_tangent):
        (saved,) = ctx.saved_tensors
        return leaky_relu_backward(grad_output_tangent, saved, ctx.negative_slope)


@hand_writes(torch.nn.functional.leaky_relu)
def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """X if X > 0 else negative_slope·X elementwise, like ``torch.nn.functional.leaky_relu``; any shape.
    ``inplace=True`` raises NotImplementedError (manualbp's leaky ReLU never runs in place)."""
    if inplace:
        refuse_inplace("leaky_relu", "manualbp's leaky ReLU never runs in place")
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


# ----------------------------------------------------------------------------------------------
# The transformer's and MobileNet's activations: GELU, SiLU, hardtanh / ReLU6
# ----------------------------------------------------------------------------------------------

_TANH_GELU_SCALE = math.sqrt(2 / math.pi)  # √(2/π)
_TANH_GELU_CUBIC = 0.044715
_INVERSE_SQRT_2 = 1 / math.sqrt(2)
_INVERSE_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def gelu_forward(input: Tensor, approximate: str = "none") -> Tensor:
    """GELU(x) = x·Φ(x), Φ the standard normal CDF; ``approximate="tanh"``: ½x(1 + tanh(√(2/π)(x + 0.044715x³))),
    GPT-2's. Elementwise; any shape. PyTorch's one kernel for it (one buffer, no temporaries)."""
    return torch.nn.functional.gelu(input, approximate=approximate)  # Z = x·Φ(x)


def gelu_backward(grad_output: Tensor, input: Tensor, approximate: str = "none") -> Tensor:
    """δX = GELU'(X)·δZ; same shape as grad_output.

    "none": GELU'(x) = Φ(x) + x·φ(x), φ(x) = e^(−x²/2)/√(2π).
    "tanh": with u = √(2/π)(x + 0.044715x³), t = tanh u: GELU'(x) = ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²).
    """
    if approximate == "tanh" and owns_buffers(grad_output):
        return _tanh_gelu_backward_in_buffers(grad_output, input)
    if approximate == "tanh":
        inner = _TANH_GELU_SCALE * (input + _TANH_GELU_CUBIC * input**3)  # u = √(2/π)(x + 0.044715x³)
        t = torch.tanh(inner)
        inner_slope = _TANH_GELU_SCALE * (1 + 3 * _TANH_GELU_CUBIC * input * input)  # du/dx
        return grad_output * (0.5 * (1 + t) + 0.5 * input * (1 - t * t) * inner_slope)  # δX = GELU'(X)·δZ
    if owns_buffers(grad_output):  # the same products, in two buffers of our own
        slope = (input * input).mul_(-0.5).exp_().mul_(_INVERSE_SQRT_2PI).mul_(input)  # X·φ(X)
        cdf = (input * _INVERSE_SQRT_2).erf_().add_(1).mul_(0.5)  # Φ(X)
        return slope.add_(cdf).mul_(grad_output)  # δX = (Φ(X) + X·φ(X))·δZ
    cdf = 0.5 * (1 + torch.erf(input * _INVERSE_SQRT_2))  # Φ(x)
    density = torch.exp(-0.5 * input * input) * _INVERSE_SQRT_2PI  # φ(x)
    return grad_output * (cdf + input * density)  # δX = (Φ(X) + X·φ(X))·δZ


def _tanh_gelu_backward_in_buffers(grad_output: Tensor, input: Tensor) -> Tensor:
    """The tanh form's δX in two buffers and 11 passes (the formula above takes ~20 passes and five
    buffers), by ½(1 + tanh u) = σ(2u): GELU(x) = x·σ(2u), so GELU'(x) = σ(2u)·(1 + 2x·u'·(1 − σ(2u)))
    -- the same derivative, and σ costs a fifth of tanh on a CPU."""
    square = input * input  # x²
    gate = torch.addcmul(input, square, input, value=_TANH_GELU_CUBIC).mul_(2 * _TANH_GELU_SCALE).sigmoid_()  # σ(2u)
    slope = square.mul_(6 * _TANH_GELU_CUBIC * _TANH_GELU_SCALE).add_(2 * _TANH_GELU_SCALE).mul_(input)  # 2x·u'
    slope.addcmul_(slope, gate, value=-1).add_(1)  # 1 + 2x·u'·(1 − σ(2u))
    return slope.mul_(gate).mul_(grad_output)  # δX = σ(2u)(1 + 2x·u'(1 − σ(2u)))·δZ


class GELUFunction(LayerFunction):
    """x·Φ(x) (or its tanh form) with backward (Φ(x) + x·φ(x))·δZ from the saved input."""

    @staticmethod
    def forward(input, approximate):
        return gelu_forward(input, approximate)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.approximate = inputs
        ctx.save_for_backward(input)
        ctx.save_for_forward(input)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        return gelu_backward(grad_output, input, ctx.approximate), None

    @staticmethod
    def jvp(ctx, input_tangent, approximate_tangent):
        (input,) = ctx.saved_tensors
        return gelu_backward(input_tangent, input, ctx.approximate)  # diagonal: Ż = GELU'(X)·Ẋ


@hand_writes(torch.nn.functional.gelu)
def gelu(input: Tensor, *, approximate: str = "none") -> Tensor:
    """x·Φ(x) elementwise, like ``torch.nn.functional.gelu`` (``approximate`` "none" or "tanh"); any shape."""
    check_floating("gelu", "input", input)
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: expected approximate 'none' or 'tanh', got {approximate!r}")
    return apply(GELUFunction, input, approximate)


class GELU(torch.nn.GELU, Activation, torch_twin=torch.nn.GELU, name="gelu"):
    """x·Φ(x) elementwise (``approximate="tanh"``: GPT-2's tanh form) with backward (Φ(x) + x·φ(x))·δZ."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__(approximate=approximate)

    def forward(self, input: Tensor) -> Tensor:
        return gelu(input, approximate=self.approximate)

    @classmethod
    def from_torch(cls, module: torch.nn.GELU) -> GELU:
        return cls(module.approximate)

    def to_torch(self) -> torch.nn.GELU:
        return torch.nn.GELU(self.approximate)

    def function_and_arguments(self, input: Tensor):
        return GELUFunction, (input, self.approximate)

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls("tanh").to(dtype), (torch.randn(6, 4, dtype=dtype),)


def silu_forward(input: Tensor) -> Tensor:
    """SiLU(x) = x·σ(x) (swish), elementwise; any shape. PyTorch's one kernel."""
    return torch.nn.functional.silu(input)  # Z = x·σ(x)


def silu_backward(grad_output: Tensor, input: Tensor) -> Tensor:
    """δX = σ(X)(1 + X(1 − σ(X)))·δZ; same shape."""
    sigma = torch.sigmoid(input)
    if owns_buffers(grad_output):  # two buffers of our own: σ, and 1 + X(1 − σ) built over it
        slope = one_minus(sigma.clone(), True).mul_(input).add_(1)  # 1 + X(1 − σ)
        return slope.mul_(sigma).mul_(grad_output)  # δX = σ(1 + X(1 − σ))·δZ
    return grad_output * sigma * (1 + input * (1 - sigma))  # δX = σ(1 + X(1 − σ))·δZ


class SiLUFunction(LayerFunction):
    """x·σ(x) with backward σ(x)(1 + x(1 − σ(x)))·δZ from the saved input."""

    @staticmethod
    def forward(input):
        return silu_forward(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        return silu_backward(grad_output, input)

    @staticmethod
    def jvp(ctx, input_tangent):
        (input,) = ctx.saved_tensors
        return silu_backward(input_tangent, input)


@hand_writes(torch.nn.functional.silu)
def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """x·σ(x) elementwise, like ``torch.nn.functional.silu``; any shape. (Never in place: the
    backward needs the input; ``inplace=True`` raises NotImplementedError.)"""
    if inplace:
        raise NotImplementedError("silu: manualbp's SiLU keeps its input for the backward; use inplace=False")
    check_floating("silu", "input", input)
    return apply(SiLUFunction, input)


class SiLU(torch.nn.SiLU, Activation, torch_twin=torch.nn.SiLU, name="silu"):
    """x·σ(x) elementwise with backward σ(x)(1 + x(1 − σ(x)))·δZ; any shape. (Never in place.)"""

    def __init__(self) -> None:
        super().__init__(inplace=False)

    def forward(self, input: Tensor) -> Tensor:
        return silu(input)

    @classmethod
    def from_torch(cls, module: torch.nn.SiLU) -> SiLU:
        return cls()  # inplace=True gives the same values unless the model reuses the SiLU's input

    def to_torch(self) -> torch.nn.SiLU:
        return torch.nn.SiLU()

    def function_and_arguments(self, input: Tensor):
        return SiLUFunction, (input,)


def hardtanh_forward(input: Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Tensor:
    """Z = clamp(X, min_val, max_val), elementwise; any shape (ReLU6: min 0, max 6)."""
    return input.clamp_(min_val, max_val) if inplace else input.clamp(min_val, max_val)  # Z = min(max(X, a), b)


def hardtanh_backward(grad_output: Tensor, saved: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    """δX = 1[a < X < b]·δZ, from the saved input X, or the output Z of the in-place form (a < Z < b
    exactly where a < X < b).

    A select, not a product: exactly 0 outside (an infinite δZ there gives 0, not NaN). aten's
    ``hardtanh_backward`` is that select in one pass, as torch's op runs it (also for a NaN input,
    where PyTorch's own vectorised and scalar CPU paths differ: 0 and δZ)."""
    return _hardtanh_backward(grad_output, saved, min_val, max_val)  # δX = 1[a<X<b]·δZ


_hardtanh_backward = torch.ops.aten.hardtanh_backward.default


class HardtanhFunction(LayerFunction):
    """clamp(x, a, b) with backward 1[a < x < b]·δZ from the saved input (as PyTorch saves: a saved
    output would make ``h = hardtanh(x); h += skip`` fail in backward)."""

    @staticmethod
    def forward(input, min_val, max_val):
        return hardtanh_forward(input, min_val, max_val)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.min_val, ctx.max_val = inputs
        ctx.save_for_backward(input)
        ctx.save_for_forward(input)

    @staticmethod
    def backward(ctx, grad_output):
        (saved,) = ctx.saved_tensors
        return hardtanh_backward(grad_output, saved, ctx.min_val, ctx.max_val), None, None

    @staticmethod
    def jvp(ctx, input_tangent, min_tangent, max_tangent):
        (saved,) = ctx.saved_tensors
        return hardtanh_backward(input_tangent, saved, ctx.min_val, ctx.max_val)


class HardtanhOutputSavedFunction(HardtanhFunction):
    """:class:`HardtanhFunction` that saves its output Z instead of X (a < Z < b exactly where
    a < X < b): the form whose result is written over its input, where X is gone."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.min_val, ctx.max_val = inputs
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)


class HardtanhInplaceFunction(HardtanhOutputSavedFunction):
    """clamp(x, a, b) written over x (``ReLU6(inplace=True)``, MobileNetV2's), with the same backward
    from the saved output; the input is marked dirty (see ``ReLUInplaceFunction``)."""

    @staticmethod
    def forward(input, min_val, max_val):
        return hardtanh_forward(input, min_val, max_val, inplace=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_dirty(inputs[0])
        HardtanhOutputSavedFunction.setup_context(ctx, inputs, output)

    @staticmethod
    def jvp(ctx, input_tangent, min_tangent, max_tangent):
        (output,) = ctx.saved_tensors
        return input_tangent.copy_(hardtanh_backward(input_tangent, output, ctx.min_val, ctx.max_val))


@hand_writes(torch.nn.functional.hardtanh)
def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Tensor:
    """clamp(x, min_val, max_val) elementwise, like ``torch.nn.functional.hardtanh``; any shape.
    ``inplace=True`` overwrites ``input`` and returns it, as torch's does."""
    return _clamped("hardtanh", input, min_val, max_val, inplace)


def _clamped(name: str, input: Tensor, min_val: float, max_val: float, inplace: bool) -> Tensor:
    """hardtanh's checks (errors named after the public function ``name``) and apply."""
    check_floating(name, "input", input)
    if not min_val < max_val:
        raise ValueError(f"{name}: expected min_val < max_val, got min_val={min_val}, max_val={max_val}")
    min_val, max_val = float(min_val), float(max_val)
    if inplace:
        return apply_inplace(HardtanhInplaceFunction, HardtanhOutputSavedFunction, input, min_val, max_val)
    return apply(HardtanhFunction, input, min_val, max_val)


@hand_writes(torch.nn.functional.relu6)
def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    """min(max(x, 0), 6) elementwise, like ``torch.nn.functional.relu6`` (hardtanh with a = 0, b = 6)."""
    return _clamped("relu6", input, 0.0, 6.0, inplace)


class Hardtanh(torch.nn.Hardtanh, Activation, torch_twin=torch.nn.Hardtanh, name="hardtanh"):
    """clamp(x, min_val, max_val) elementwise with backward 1[a < x < b]·δZ; any shape; in place if asked."""

    def forward(self, input: Tensor) -> Tensor:
        return hardtanh(input, self.min_val, self.max_val, self.inplace)

    @classmethod
    def from_torch(cls, module: torch.nn.Hardtanh) -> Hardtanh:
        return cls(module.min_val, module.max_val, module.inplace)

    def to_torch(self) -> torch.nn.Hardtanh:
        return torch.nn.Hardtanh(self.min_val, self.max_val, self.inplace)

    def function_and_arguments(self, input: Tensor):
        return HardtanhFunction, (input, float(self.min_val), float(self.max_val))  # out of place, as for ReLU

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(), (2 * torch.randn(6, 4, dtype=dtype),)


class ReLU6(torch.nn.ReLU6, Activation, torch_twin=torch.nn.ReLU6, name="relu6"):
    """min(max(x, 0), 6) elementwise with backward 1[0 < x < 6]·δZ (MobileNetV2's); in place if asked."""

    def forward(self, input: Tensor) -> Tensor:
        return relu6(input, self.inplace)

    @classmethod
    def from_torch(cls, module: torch.nn.ReLU6) -> ReLU6:
        return cls(module.inplace)

    def to_torch(self) -> torch.nn.ReLU6:
        return torch.nn.ReLU6(self.inplace)

    def function_and_arguments(self, input: Tensor):
        return HardtanhFunction, (input, 0.0, 6.0)

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(), (4 * torch.randn(6, 4, dtype=dtype),)


# ----------------------------------------------------------------------------------------------
# MobileNetV3's and YOLO's activations: hard swish, hard sigmoid, softplus, mish
# ----------------------------------------------------------------------------------------------


def hardswish_backward(grad_output: Tensor, input: Tensor) -> Tensor:
    """δX = 0 for X < −3, (X/3 + ½)·δZ for −3 ≤ X ≤ 3 (d/dx x(x+3)/6 = (2x+3)/6), δZ for X > 3."""
    inside = grad_output * (input / 3 + 0.5)  # (2X+3)/6·δZ
    return torch.where(input < -3, 0.0, torch.where(input <= 3, inside, grad_output))  # δX = hardswish'(X)·δZ


def hardsigmoid_backward(grad_output: Tensor, input: Tensor) -> Tensor:
    """δX = δZ/6 for −3 < X < 3, else 0 (Z = relu6(X + 3)/6 is flat outside). As PyTorch's kernel, 1/6 is
    taken in float32 precision (a relative 3e-8 off in float64), so that the values agree to the bit."""
    return torch.where((input > -3) & (input < 3), grad_output * _ONE_SIXTH, 0.0)  # δX = 1[−3<X<3]·δZ/6


_ONE_SIXTH = float(torch.tensor(1 / 6, dtype=torch.float32))  # PyTorch's hardsigmoid_backward: 1.0f / 6.0f


def softplus_backward(grad_output: Tensor, input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """δX = σ(βX)·δZ (as e^(βX)/(e^(βX) + 1)), δZ where βX > threshold (there Z = X)."""
    exp_beta_x = (input * beta).exp()
    sigmoid_grad = grad_output * exp_beta_x / (exp_beta_x + 1)  # δX = σ(βX)·δZ
    return torch.where(input * beta > threshold, grad_output, sigmoid_grad)


def mish_backward(grad_output: Tensor, input: Tensor) -> Tensor:
    """δX = (tanh(sp(X)) + X·σ(X)·(1 − tanh²(sp(X))))·δZ of Z = X·tanh(sp(X)), sp = softplus."""
    sigmoid_x = torch.sigmoid(input)
    tanh_softplus = torch.tanh(torch.nn.functional.softplus(input))
    return grad_output * (tanh_softplus + input * sigmoid_x * (1 - tanh_softplus * tanh_softplus))  # δX = mish'(X)·δZ


def _keep_input(ctx, inputs, output):
    """setup_context of the four below: their backward (and jvp, the same formula on the tangent:
    the Jacobian is diagonal) reads the input X and the settings."""
    ctx.save_for_backward(inputs[0])
    ctx.save_for_forward(inputs[0])
    ctx.settings = inputs[1:]


class HardswishFunction(LayerFunction):
    """X·relu6(X + 3)/6 with backward hardswish_backward from the saved input."""

    setup_context = staticmethod(_keep_input)

    @staticmethod
    def forward(input):
        return torch.nn.functional.hardswish(input)  # Z = X·relu6(X+3)/6

    @staticmethod
    def backward(ctx, grad_output):
        return hardswish_backward(grad_output, ctx.saved_tensors[0])

    jvp = backward


class HardsigmoidFunction(LayerFunction):
    """relu6(X + 3)/6 with backward hardsigmoid_backward from the saved input."""

    setup_context = staticmethod(_keep_input)

    @staticmethod
    def forward(input):
        return torch.nn.functional.hardsigmoid(input)  # Z = relu6(X+3)/6

    @staticmethod
    def backward(ctx, grad_output):
        return hardsigmoid_backward(grad_output, ctx.saved_tensors[0])

    jvp = backward


class SoftplusFunction(LayerFunction):
    """(1/β)·ln(1 + e^(βX)) (X above the threshold) with backward softplus_backward."""

    setup_context = staticmethod(_keep_input)

    @staticmethod
    def forward(input, beta, threshold):
        return torch.nn.functional.softplus(input, beta, threshold)  # Z = ln(1+e^(βX))/β

    @staticmethod
    def backward(ctx, grad_output):
        return softplus_backward(grad_output, ctx.saved_tensors[0], *ctx.settings), None, None

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        return softplus_backward(input_tangent, ctx.saved_tensors[0], *ctx.settings)


class MishFunction(LayerFunction):
    """X·tanh(softplus(X)) with backward mish_backward from the saved input."""

    setup_context = staticmethod(_keep_input)

    @staticmethod
    def forward(input):
        return torch.nn.functional.mish(input)  # Z = X·tanh(ln(1+e^X))

    @staticmethod
    def backward(ctx, grad_output):
        return mish_backward(grad_output, ctx.saved_tensors[0])

    jvp = backward


def _not_inplace(name: str, inplace: bool, input: Tensor) -> None:
    if inplace:
        refuse_inplace(name, "the backward needs the input")
    check_floating(name, "input", input)


@hand_writes(torch.nn.functional.hardswish)
def hardswish(input: Tensor, inplace: bool = False) -> Tensor:
    """X·relu6(X + 3)/6 like ``torch.nn.functional.hardswish``; any shape."""
    _not_inplace("hardswish", inplace, input)
    return apply(HardswishFunction, input)


@hand_writes(torch.nn.functional.hardsigmoid)
def hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor:
    """relu6(X + 3)/6 like ``torch.nn.functional.hardsigmoid``; any shape."""
    _not_inplace("hardsigmoid", inplace, input)
    return apply(HardsigmoidFunction, input)


@hand_writes(torch.nn.functional.softplus)
def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """ln(1 + e^(βX))/β like ``torch.nn.functional.softplus`` (X where βX > threshold); any shape."""
    check_floating("softplus", "input", input)
    return apply(SoftplusFunction, input, float(beta), float(threshold))


@hand_writes(torch.nn.functional.mish)
def mish(input: Tensor, inplace: bool = False) -> Tensor:
    """X·tanh(softplus(X)) like ``torch.nn.functional.mish``; any shape."""
    _not_inplace("mish", inplace, input)
    return apply(MishFunction, input)


class Hardswish(torch.nn.Hardswish, Activation, torch_twin=torch.nn.Hardswish, name="hardswish"):
    """X·relu6(X + 3)/6 elementwise with the hand-written backward; any shape. (Never in place.)"""

    def __init__(self) -> None:
        super().__init__(inplace=False)

    def forward(self, input: Tensor) -> Tensor:
        return hardswish(input)

    def function_and_arguments(self, input: Tensor):
        return HardswishFunction, (input,)


class Hardsigmoid(torch.nn.Hardsigmoid, Activation, torch_twin=torch.nn.Hardsigmoid, name="hardsigmoid"):
    """relu6(X + 3)/6 elementwise with the hand-written backward; any shape. (Never in place.)"""

    def __init__(self) -> None:
        super().__init__(inplace=False)

    def forward(self, input: Tensor) -> Tensor:
        return hardsigmoid(input)

    def function_and_arguments(self, input: Tensor):
        return HardsigmoidFunction, (input,)


class Mish(torch.nn.Mish, Activation, torch_twin=torch.nn.Mish, name="mish"):
    """X·tanh(softplus(X)) elementwise with the hand-written backward; any shape. (Never in place.)"""

    def __init__(self) -> None:
        super().__init__(inplace=False)

    def forward(self, input: Tensor) -> Tensor:
        return mish(input)

    def function_and_arguments(self, input: Tensor):
        return MishFunction, (input,)


class Softplus(torch.nn.Softplus, Activation, torch_twin=torch.nn.Softplus, name="softplus"):
    """ln(1 + e^(βX))/β elementwise with the hand-written backward; any shape."""

    def forward(self, input: Tensor) -> Tensor:
        return softplus(input, self.beta, self.threshold)

    @classmethod
    def from_torch(cls, module: torch.nn.Softplus) -> Softplus:
        return cls(module.beta, module.threshold)

    def to_torch(self) -> torch.nn.Softplus:
        return torch.nn.Softplus(self.beta, self.threshold)

    def function_and_arguments(self, input: Tensor):
        return SoftplusFunction, (input, float(self.beta), float(self.threshold))
