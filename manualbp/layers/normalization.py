"""Batch normalization with a hand-written backward, in training and in evaluation mode; layer
normalization (the same formulas per row, at the end of this file).

Per channel c, over the M = N·H·W values x of that channel in the batch (M = N for (N, C) input):

    μ = mean(x),  σ² = mean((x − μ)²),  σ = √(σ² + ε),  x̂ = (x − μ)/σ,  y = γ x̂ + β

Backward (training: μ and σ depend on every x of the channel, which adds the two mean terms):

    δβ = Σ δy,   δγ = Σ δy·x̂,   δx = (γ/σ)(δy − mean(δy) − x̂·mean(δy·x̂))

In evaluation mode μ and σ² are the running statistics, constants, and δx = (γ/σ)·δy.
Training also updates the running statistics in place, as torch does:
running_mean ← (1 − momentum)·running_mean + momentum·μ, and the same for running_var with the
unbiased variance σ²·M/(M − 1).

Shapes: input (N, C) or ``(N, C, *)`` (e.g. (N, C, H, W)); γ, β, μ, σ²: (C,).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from manualbp.errors import PerExampleError
from manualbp.layers.base import (
    LayerFunction,
    apply,
    check_floating,
    computes_in_float32,
    hand_writes,
    is_traced,
    owns_buffers,
)
from manualbp.layers.sharing import SharesState

__all__ = [
    "batch_norm",
    "batch_norm_statistics",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_training_backward_fast",
    "batch_norm_eval_backward_fast",
    "batch_norm_training_forward_fast",
    "batch_norm_training_backward_fast32",
    "batch_norm_eval_backward_fast32",
    "BatchNormTrainingFunction",
    "BatchNormEvalFunction",
    "update_running_statistics",
    "BatchNorm1d",
    "BatchNorm2d",
    "layer_norm_forward",
    "layer_norm_forward_fast",
    "layer_norm_backward",
    "LayerNormFunction",
    "layer_norm",
    "LayerNorm",
    "group_norm_forward",
    "group_norm_backward",
    "GroupNormFunction",
    "group_norm",
    "GroupNorm",
]


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------


def _channel_dims(input: Tensor) -> tuple[int, ...]:
    return (0, *range(2, input.dim()))  # every dimension but the channels'


def _per_channel(values: Tensor, input: Tensor) -> Tensor:
    """(C,) -> (1, C, 1, ...): broadcastable against the input."""
    return values.reshape(1, -1, *([1] * (input.dim() - 2)))


def _centered_and_variance(input: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """μ = mean(x), x − μ and the biased σ² = mean((x − μ)²) over ``dims`` (kept, so that they
    broadcast against x): the statistics of batch, layer and group norm, in two passes
    (``torch.var_mean`` is 10-15x slower on a CPU at the shapes of ResNet's and GPT's norms)."""
    mean = input.mean(dims, keepdim=True)  # μ
    centered = input - mean  # x − μ
    return mean, centered, (centered * centered).mean(dims, keepdim=True)  # σ² = mean((x − μ)²)


def batch_norm_statistics(input: Tensor) -> tuple[Tensor, Tensor]:
    """μ = mean(x) and the biased σ² = mean((x − μ)²) per channel. input: ``(N, C, *)`` -> (C,), (C,)."""
    if input.numel() == 0:  # no values: the mean of nothing (NaN), without var_mean's warning about it
        nothing = input.new_full((input.shape[1],), float("nan"))
        return nothing, nothing.clone()
    mean, _, variance = _centered_and_variance(input, _channel_dims(input))  # over N and *
    return mean.reshape(-1), variance.reshape(-1)


def batch_norm_forward(
    input: Tensor, mean: Tensor, variance: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """y = γ (x − μ)/√(σ² + ε) + β (γ = 1, β = 0 when None).

    input x: ``(N, C, *)``; mean μ, variance σ², weight γ, bias β: (C,). Returns y: x's shape.
    """
    scale = torch.rsqrt(variance + eps)  # 1/σ
    if weight is not None:
        scale = scale * weight  # γ/σ
    shift = _per_channel(-mean * scale if bias is None else bias - mean * scale, input)  # β − μγ/σ
    # x·(γ/σ), then + (β − μγ/σ) over that fresh buffer (torch.addcmul with a per-channel term broadcast
    # takes 2-3x as long on a CPU from 16 values per channel up); under torch.func the shift may be
    # batched where the product is not: added anew there
    output = input * _per_channel(scale, input)
    return output + shift if is_traced(shift) else output.add_(shift)  # y = γ(x − μ)/σ + β


def batch_norm_backward(
    grad_output: Tensor,
    input: Tensor,
    mean: Tensor,
    variance: Tensor,
    weight: Tensor | None,
    eps: float,
    training: bool,
    needs_grad: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """δx, δγ, δβ of y = γ (x − μ)/σ + β; ``training``: μ, σ² are the batch's own statistics.

    grad_output δy and input x: ``(N, C, *)``; mean μ, variance σ², weight γ (or None): (C,).
    Returns δx: x's shape, δγ: (C,), δβ: (C,) (each None unless ``needs_grad`` asks for it).
    """
    dims = _channel_dims(input)
    inverse_std = torch.rsqrt(variance + eps)  # 1/σ
    normalized = (input - _per_channel(mean, input)) * _per_channel(inverse_std, input)  # x̂ = (x − μ)/σ
    sums_needed = training and needs_grad[0]  # the training δx uses both sums
    grad_bias = grad_output.sum(dims) if needs_grad[2] or sums_needed else None  # δβ = Σ δy
    grad_weight = (grad_output * normalized).sum(dims) if needs_grad[1] or sums_needed else None  # δγ = Σ δy·x̂
    grad_input = None
    if needs_grad[0]:
        scale = _per_channel(inverse_std if weight is None else weight * inverse_std, input)  # γ/σ
        if training:
            count = input.numel() // input.shape[1]  # M
            mean_grad = _per_channel(grad_bias / count, input)  # mean(δy)
            mean_grad_x_hat = _per_channel(grad_weight / count, input)  # mean(δy·x̂)
            projected = grad_output - mean_grad - normalized * mean_grad_x_hat  # δy − mean(δy) − x̂·mean(δy·x̂)
            grad_input = scale * projected  # δx = (γ/σ)(δy − mean(δy) − x̂·mean(δy·x̂))
        else:
            grad_input = grad_output * scale  # δx = (γ/σ)·δy
    return grad_input, (grad_weight if needs_grad[1] else None), (grad_bias if needs_grad[2] else None)


def batch_norm_training_backward_fast(
    grad_output: Tensor, input: Tensor, weight: Tensor | None, eps: float,
    needs_grad: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """:func:`batch_norm_backward` in training (μ, σ² recomputed from x, as the Function does),
    its products written over two buffers of x's size instead of seven (see ``owns_buffers``):
    x − μ once for σ² and x̂, and one scratch buffer for δy·x̂ and x̂·mean(δy·x̂). Shapes as there."""
    dims = _channel_dims(input)
    count = input.numel() // input.shape[1]  # M
    _, normalized, variance = _centered_and_variance(input, dims)  # x − μ, σ²
    inverse_std = torch.rsqrt(variance + eps)  # 1/σ
    normalized.mul_(inverse_std)  # x̂ = (x − μ)/σ, over x − μ's buffer
    grad_bias = grad_output.sum(dims, keepdim=True)  # δβ = Σ δy
    scratch = grad_output * normalized
    grad_weight = scratch.sum(dims, keepdim=True)  # δγ = Σ δy·x̂
    grad_input = None
    if needs_grad[0]:
        scale = inverse_std if weight is None else inverse_std * _per_channel(weight, input)  # γ/σ
        correction = torch.mul(normalized, grad_weight / count, out=scratch)  # x̂·mean(δy·x̂)
        grad_input = torch.sub(grad_output, grad_bias / count, out=normalized)  # δy − mean(δy)
        grad_input.sub_(correction).mul_(scale)  # δx = (γ/σ)(δy − mean(δy) − x̂·mean(δy·x̂))
    return (grad_input, grad_weight.reshape(-1) if needs_grad[1] else None,
            grad_bias.reshape(-1) if needs_grad[2] else None)


def batch_norm_eval_backward_fast(
    grad_output: Tensor, input: Tensor, mean: Tensor, variance: Tensor, weight: Tensor | None, eps: float,
    needs_grad: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """:func:`batch_norm_backward` in evaluation (μ, σ² given), with one buffer of x's size for δγ
    instead of three (see ``owns_buffers``): δy·(x − μ) written over x − μ and summed, then times 1/σ
    per channel (δγ = Σ δy·x̂ = (1/σ)·Σ δy·(x − μ): 1/σ is constant over the sum). Shapes as there."""
    dims = _channel_dims(input)
    inverse_std = torch.rsqrt(variance + eps)  # 1/σ
    grad_input = grad_weight = grad_bias = None
    if needs_grad[1]:
        products = (input - _per_channel(mean, input)).mul_(grad_output)  # δy·(x − μ)
        grad_weight = products.sum(dims).mul_(inverse_std)  # δγ = Σ δy·x̂ = (1/σ)·Σ δy·(x − μ)
    if needs_grad[2]:
        grad_bias = grad_output.sum(dims)  # δβ = Σ δy
    if needs_grad[0]:
        scale = inverse_std if weight is None else weight * inverse_std  # γ/σ
        grad_input = grad_output * _per_channel(scale, input)  # δx = (γ/σ)·δy
    return grad_input, grad_weight, grad_bias


# ----------------------------------------------------------------------------------------------
# Float32 forms of the training forward and of both backwards (what the Functions run in float32;
# tests/test_gradients.py holds each to the formula functions above and to torch's gradients)
# ----------------------------------------------------------------------------------------------
#
# At ResNet-18's shapes each op over the batch costs its passes over memory, a fresh buffer's page
# faults, and for small images a per-channel loop only H·W values long. So: the batch's statistics
# kept from the forward (not recomputed), the fewest buffers and passes, and for small images
# per-channel sums and factors laid out over (C, H, W) so that every inner loop runs C·H·W long.

# Below this many values per channel and image, sum over the images first, then over the positions
# (torch's reduction over (N, H, W) at once took 3-6x as long at 4×4 and 2×2 images, batch 32).
_FEW_POSITIONS = 64


def _fast_float32(*tensors: Tensor | None) -> bool:
    """Whether the float32 forms apply: the input (first) batched ``(N, C, *)`` and non-empty, every
    tensor given float32, contiguous and not traced."""
    input = tensors[0]
    return (input.dim() >= 2 and input.numel() > 0
            and all(t is None or (t.dtype == torch.float32 and t.is_contiguous() and not is_traced(t))
                    for t in tensors))


def _channel_sums(values: Tensor) -> Tensor:
    """Σ over every dimension but the channels': ``(N, C, *)`` contiguous -> (C,)."""
    rows = values.reshape(values.shape[0], values.shape[1], -1)  # (N, C, H·W)
    if rows.shape[-1] < _FEW_POSITIONS:
        return rows.sum(0).sum(-1)  # over the images, then each channel's positions
    return rows.sum(-1).sum(0)


def _channel_factor(values: Tensor, input: Tensor) -> Tensor:
    """(C,) -> broadcastable against input ``(N, C, *)``: (1, C, 1, ...), or for few positions per
    channel the values repeated over them, ``(1, C, *)`` (C·H·W values: the broadcast's inner loop runs
    over all of them instead of H·W at a time)."""
    factor = _per_channel(values, input)
    if 1 < math.prod(input.shape[2:]) < _FEW_POSITIONS:
        factor = factor.expand(1, *input.shape[1:]).contiguous()
    return factor


def batch_norm_training_forward_fast(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`batch_norm_statistics` then :func:`batch_norm_forward` in float32, over one buffer:
    x − μ written once, σ² summed from its squares, then scaled and shifted in place.

    input x: ``(N, C, *)`` contiguous float32; weight γ, bias β: (C,) or None.
    Returns y: x's shape, μ: (C,), σ²: (C,) (biased)."""
    count = input.numel() // input.shape[1]  # M
    mean = _channel_sums(input) / count  # μ = mean(x)
    output = input - _channel_factor(mean, input)  # x − μ
    variance = _channel_sums(output * output) / count  # σ² = mean((x − μ)²)
    scale = torch.rsqrt(variance + eps)  # 1/σ
    if weight is not None:
        scale = scale * weight  # γ/σ
    output.mul_(_channel_factor(scale, input))  # γ(x − μ)/σ
    if bias is not None:
        output.add_(_channel_factor(bias, input))  # y = γ(x − μ)/σ + β
    return output, mean, variance


def batch_norm_training_backward_fast32(
    grad_output: Tensor, input: Tensor, mean: Tensor, variance: Tensor, weight: Tensor | None, eps: float,
    needs_grad: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """:func:`batch_norm_backward` in training, float32, with the forward's μ and σ² (the batch's
    own), in one buffer of x's size (the δx it returns; see ``owns_buffers``): δy·(x − μ) written
    there and summed, then x − μ again and δx made over it. Uses 1/σ constant over each sum:
    δγ = Σ δy·x̂ = (1/σ)·Σ δy·(x − μ), and x̂·mean(δy·x̂) = (x − μ)·(mean(δy·x̂)/σ).

    grad_output δy, input x: ``(N, C, *)`` contiguous float32; mean μ, variance σ², weight γ (or None):
    (C,). Returns δx: x's shape, δγ, δβ: (C,) (each None unless ``needs_grad`` asks for it)."""
    count = input.numel() // input.shape[1]  # M
    inverse_std = torch.rsqrt(variance + eps)  # 1/σ
    mean_factor = _channel_factor(mean, input)
    buffer = (input - mean_factor).mul_(grad_output)  # δy·(x − μ)
    grad_weight = _channel_sums(buffer).mul_(inverse_std)  # δγ = Σ δy·x̂ = (1/σ)·Σ δy·(x − μ)
    grad_bias = _channel_sums(grad_output)  # δβ = Σ δy
    grad_input = None
    if needs_grad[0]:
        scale = inverse_std if weight is None else inverse_std * weight  # γ/σ
        correction = inverse_std * grad_weight / count  # mean(δy·x̂)/σ
        grad_input = torch.sub(input, mean_factor, out=buffer)  # x − μ
        grad_input.mul_(_channel_factor(-scale * correction, input))  # −(γ/σ)·x̂·mean(δy·x̂)
        grad_input.addcmul_(grad_output, _channel_factor(scale, input))  # + (γ/σ)·δy
        grad_input.sub_(_channel_factor(scale * grad_bias / count, input))  # δx = (γ/σ)(δy − mean(δy) − x̂·mean(δy·x̂))
    return grad_input, (grad_weight if needs_grad[1] else None), (grad_bias if needs_grad[2] else None)


def batch_norm_eval_backward_fast32(
    grad_output: Tensor, input: Tensor, mean: Tensor, variance: Tensor, weight: Tensor | None, eps: float,
    needs_grad: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """:func:`batch_norm_eval_backward_fast` in float32 in one buffer of x's size (the δx it
    returns): δy·(x − μ) written there and summed for δγ, then δx = (γ/σ)·δy over it.
    Shapes as there; input and grad_output contiguous."""
    inverse_std = torch.rsqrt(variance + eps)  # 1/σ
    buffer = grad_weight = grad_bias = None
    if needs_grad[1]:
        buffer = (input - _channel_factor(mean, input)).mul_(grad_output)  # δy·(x − μ)
        grad_weight = _channel_sums(buffer).mul_(inverse_std)  # δγ = Σ δy·x̂ = (1/σ)·Σ δy·(x − μ)
    if needs_grad[2]:
        grad_bias = _channel_sums(grad_output)  # δβ = Σ δy
    grad_input = None
    if needs_grad[0]:
        scale = _channel_factor(inverse_std if weight is None else weight * inverse_std, input)  # γ/σ
        into = {} if buffer is None else {"out": buffer}  # δγ's buffer, spent: δx written over it
        grad_input = torch.mul(grad_output, scale, **into)  # δx = (γ/σ)·δy
    return grad_input, grad_weight, grad_bias


def _batch_norm_tangent(input, mean, variance, weight, eps, training, input_tangent, weight_tangent, bias_tangent):
    """ẏ = (∂y/∂x)ẋ + x̂·γ̇ + β̇. ∂y/∂x is symmetric ((γ/σ)(I − 1/M − x̂x̂ᵀ/M) per channel in
    training, (γ/σ)·I in evaluation), so its product with ẋ is the backward formula with δy = ẋ."""
    tangent = 0
    if input_tangent is not None:
        tangent, _, _ = batch_norm_backward(input_tangent, input, mean, variance, weight, eps, training, (True,) * 3)
    if weight_tangent is not None:
        normalized = (input - _per_channel(mean, input)) * _per_channel(torch.rsqrt(variance + eps), input)
        tangent = tangent + normalized * _per_channel(weight_tangent, input)  # x̂·γ̇
    if bias_tangent is not None:
        tangent = tangent + _per_channel(bias_tangent, input)  # β̇
    return tangent


def normalization_per_example(grad_output: Tensor, normalized: Tensor, parameter_dims: tuple[int, ...],
                              needs_grad: tuple[bool, bool] = (True, True)) -> tuple[Tensor | None, Tensor | None]:
    """Each example's term of δγ and δβ of y = γ x̂ + β (layer, group, RMS and evaluation batch norm):
    δγₖ = Σ δyₖ·x̂ₖ, δβₖ = Σ δyₖ, summed over every dimension of example k but the parameters' own.

    grad_output δy, normalized x̂: (N, ...), the batch first; parameter_dims: the dimensions γ
    spans (the channels (1,) for group norm, the last ones for layer norm). Returns δγₖ, δβₖ:
    ``(N, *γ's shape)``, each None unless ``needs_grad`` asks for it."""
    summed = tuple(d for d in range(1, grad_output.dim()) if d not in parameter_dims)
    grad_weight = _sum_over(grad_output * normalized, summed) if needs_grad[0] else None  # δγₖ = Σ δyₖ·x̂ₖ
    grad_bias = _sum_over(grad_output, summed) if needs_grad[1] else None  # δβₖ = Σ δyₖ
    return grad_weight, grad_bias


def refuse_batch_norm_per_example(ctx, *grad_outputs):
    """Batch norm in training normalizes each example with the batch's statistics, so an example's
    gradient depends on the others: there is no per-example term to give."""
    raise PerExampleError(
        "manualbp.per_example: batch norm (training mode) mixes the examples of a batch, so it has no "
        "per-example gradient; replace it with group norm (torch.nn.GroupNorm), as Opacus asks too, or put the "
        "layer in eval mode")


# ----------------------------------------------------------------------------------------------
# The autograd Functions
# ----------------------------------------------------------------------------------------------


class BatchNormTrainingFunction(LayerFunction):
    """Training-mode batch norm: normalizes with the batch's own μ, σ². Returns (y, μ, σ²); μ and
    σ² are for the running statistics only (not differentiable). Saves x and γ (inputs), and μ,
    σ² for the float32 backward; the other backwards recompute μ and σ² from x, so that double
    backward sees how they depend on x."""


    @staticmethod
    def forward(input, weight, bias, eps):
        if _fast_float32(input, weight, bias):
            return batch_norm_training_forward_fast(input, weight, bias, eps)
        mean, variance = batch_norm_statistics(input)
        return batch_norm_forward(input, mean, variance, weight, bias, eps), mean, variance

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, ctx.eps = inputs
        _, mean, variance = output
        ctx.mark_non_differentiable(mean, variance)
        ctx.save_for_backward(input, weight, mean, variance)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx, grad_output, grad_mean, grad_variance):
        input, weight, mean, variance = ctx.saved_tensors
        if owns_buffers(grad_output) and _fast_float32(input, grad_output, weight):
            grads = batch_norm_training_backward_fast32(grad_output, input, mean, variance, weight, ctx.eps,
                                                        ctx.needs_input_grad[:3])
            return *grads, None
        if owns_buffers(grad_output) and input.numel():
            grads = batch_norm_training_backward_fast(grad_output, input, weight, ctx.eps, ctx.needs_input_grad[:3])
            return *grads, None
        mean, variance = batch_norm_statistics(input)
        grads = batch_norm_backward(grad_output, input, mean, variance, weight, ctx.eps, True, ctx.needs_input_grad[:3])
        return *grads, None

    per_example = staticmethod(refuse_batch_norm_per_example)

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent, eps_tangent):
        input, weight = ctx.saved_tensors
        mean, variance = batch_norm_statistics(input)
        tangent = _batch_norm_tangent(
            input, mean, variance, weight, ctx.eps, True, input_tangent, weight_tangent, bias_tangent
        )
        return tangent, None, None


def _batch_norm_eval_backward(grad_output, input, mean, variance, weight, eps, needs_grad):
    return batch_norm_backward(grad_output, input, mean, variance, weight, eps, False, needs_grad)


class BatchNormEvalFunction(LayerFunction):
    """Evaluation-mode batch norm: normalizes with given statistics (the running ones), which get
    no gradient. Saves x, μ, σ², γ (all inputs)."""


    @staticmethod
    def forward(input, mean, variance, weight, bias, eps):
        return batch_norm_forward(input, mean, variance, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, mean, variance, weight, bias, ctx.eps = inputs
        ctx.save_for_backward(input, mean, variance, weight)
        ctx.save_for_forward(input, mean, variance, weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, mean, variance, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if not owns_buffers(grad_output):
            backward = _batch_norm_eval_backward
        elif _fast_float32(input, grad_output, weight, mean, variance):
            backward = batch_norm_eval_backward_fast32
        else:
            backward = batch_norm_eval_backward_fast
        grad_input, grad_weight, grad_bias = backward(
            grad_output, input, mean, variance, weight, ctx.eps, (needs[0], needs[3], needs[4])
        )
        return grad_input, None, None, grad_weight, grad_bias, None

    @staticmethod
    def per_example(ctx, grad_output):
        input, mean, variance, _ = ctx.saved_tensors
        normalized = (input - _per_channel(mean, input)) * _per_channel(torch.rsqrt(variance + ctx.eps), input)  # x̂
        terms = normalization_per_example(grad_output, normalized, (1,), ctx.needs_input_grad[3:5])
        return None, None, None, *terms, None

    @staticmethod
    def jvp(ctx, input_tangent, mean_tangent, variance_tangent, weight_tangent, bias_tangent, eps_tangent):
        input, mean, variance, weight = ctx.saved_tensors
        return _batch_norm_tangent(
            input, mean, variance, weight, ctx.eps, False, input_tangent, weight_tangent, bias_tangent
        )


# ----------------------------------------------------------------------------------------------
# The public function: check the arguments, apply the Function, update the running statistics
# ----------------------------------------------------------------------------------------------


def _check_batch_norm_arguments(input, running_mean, running_var, weight, bias, training) -> None:
    if input.dim() < 2:
        raise ValueError(
            f"batch_norm: expected an input of shape (N, C) or (N, C, *), got shape {tuple(input.shape)}; "
            f"for a single feature vector use input.unsqueeze(0) (and a batch of more than one in training)"
        )
    if not input.is_floating_point():
        raise TypeError(f"batch_norm: expected a floating-point input, got dtype {input.dtype}; use input.float()")
    channels = input.shape[1]
    for name, tensor in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                         ("bias", bias)):
        if tensor is not None and tuple(tensor.shape) != (channels,):
            raise ValueError(
                f"batch_norm: expected {name} of shape ({channels},) for an input with {channels} channels "
                f"(dimension 1 of shape {tuple(input.shape)}), got {tuple(tensor.shape)}"
            )
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError(
            "batch_norm: evaluation mode (training=False) normalizes with the running statistics, but "
            "running_mean and running_var are None; pass them, or use training=True"
        )
    if training and input.numel() // max(channels, 1) == 1:  # as torch: 0 values (an empty batch) are fine
        raise ValueError(
            f"batch_norm: expected more than 1 value per channel when training, got input size "
            f"{tuple(input.shape)}; use a batch of more than one, or training=False"
        )


@hand_writes(torch.nn.functional.batch_norm)
def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization like ``torch.nn.functional.batch_norm``, with the hand-written backward.

    input: (N, C) or ``(N, C, *)``; running_mean, running_var: (C,) or None (updated in place when
    training); weight γ, bias β: (C,) or None. ``training`` normalizes with the batch's statistics,
    otherwise with the running ones. Returns y: the input's shape.
    """
    _check_batch_norm_arguments(input, running_mean, running_var, weight, bias, training)
    if computes_in_float32(input, running_mean, running_var, weight, bias):  # as torch's mixed-precision kernel
        output = batch_norm(input.float(), running_mean, running_var, weight, bias, training, momentum, eps)
        return output.to(input.dtype)
    if not training:
        return apply(BatchNormEvalFunction, input, running_mean, running_var, weight, bias, eps)
    output, mean, variance = apply(BatchNormTrainingFunction, input, weight, bias, eps)
    count = input.numel() // max(input.shape[1], 1)  # M, values per channel
    if running_mean is not None and count > 0:  # an empty batch leaves them as they are, as in torch
        update_running_statistics(running_mean, running_var, mean, variance, count, momentum)
    return output


@torch.no_grad()
def update_running_statistics(running_mean: Tensor, running_var: Tensor, mean: Tensor, variance: Tensor, count: int,
                              momentum: float) -> None:
    """In place, as torch does: running ← (1 − m)·running + m·batch, with the batch variance made
    unbiased (σ²·M/(M − 1), M = count values per channel). All (C,)."""
    running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)  # ← (1 − m)·running + m·μ
    running_var.mul_(1 - momentum).add_(variance * (count / (count - 1)), alpha=momentum)  # m·σ²M/(M−1)


# ----------------------------------------------------------------------------------------------
# The Modules
# ----------------------------------------------------------------------------------------------


class _BatchNorm(SharesState):
    """What BatchNorm1d and BatchNorm2d share: torch's _BatchNorm.forward with manualbp's batch_norm.
    (First among the bases, so that its forward wins over torch's.)"""

    def _momentum_for_this_step(self) -> float:
        """torch's rule: count the batch; momentum None is the cumulative average 1/batches."""
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                return 1.0 / float(self.num_batches_tracked)
        return 0.0 if self.momentum is None else self.momentum

    def _normalizes_with_batch_statistics(self) -> bool:
        return self.training or (self.running_mean is None and self.running_var is None)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        momentum = self._momentum_for_this_step()
        updates = not self.training or self.track_running_stats  # else: batch statistics, running ones untouched
        return batch_norm(
            input,
            self.running_mean if updates else None,
            self.running_var if updates else None,
            self.weight,
            self.bias,
            self._normalizes_with_batch_statistics(),
            momentum,
            self.eps,
        )

    def function_and_arguments(self, input: Tensor):
        self._check_input_dim(input)
        training = self._normalizes_with_batch_statistics()
        _check_batch_norm_arguments(input, self.running_mean, self.running_var, self.weight, self.bias, training)
        if training:
            return BatchNormTrainingFunction, (input, self.weight, self.bias, self.eps)
        return BatchNormEvalFunction, (input, self.running_mean, self.running_var, self.weight, self.bias, self.eps)

    def after_manual_forward(self, arguments: tuple, outputs) -> None:
        """The manual engine's counterpart of batch_norm's running-statistics update."""
        momentum = self._momentum_for_this_step()
        if isinstance(outputs, tuple) and self.track_running_stats and self.running_mean is not None:
            input = arguments[0]
            _, mean, variance = outputs
            count = input.numel() // max(input.shape[1], 1)
            if count > 0:  # as batch_norm: an empty batch leaves them as they are
                update_running_statistics(self.running_mean, self.running_var, mean, variance, count, momentum)


class BatchNorm1d(_BatchNorm, torch.nn.BatchNorm1d, torch_twin=torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` (same parameters, buffers, state_dict) with the hand-written backward
    δx = (γ/σ)(δy − mean(δy) − x̂·mean(δy·x̂)). input (N, C) or (N, C, L)."""

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(4).to(dtype), (torch.randn(6, 4, dtype=dtype),)


class BatchNorm2d(_BatchNorm, torch.nn.BatchNorm2d, torch_twin=torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` (same parameters, buffers, state_dict) with the hand-written backward
    δx = (γ/σ)(δy − mean(δy) − x̂·mean(δy·x̂)). input (N, C, H, W)."""

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(2).to(dtype), (torch.randn(6, 2, 4, 4, dtype=dtype),)


# ----------------------------------------------------------------------------------------------
# Layer normalization: batch norm's formulas per row, over the last dimensions
# ----------------------------------------------------------------------------------------------
#
# For each row x of D values (the last len(normalized_shape) dimensions of the input):
#     μ = mean(x),  σ = √(mean((x − μ)²) + ε),  x̂ = (x − μ)/σ,  y = γ x̂ + β      (γ, β: normalized_shape)
# Backward, with g = γ·δy (μ and σ depend on every x of the row, as in training-mode batch norm):
#     δx = (1/σ)(g − mean(g) − x̂·mean(g·x̂)),   δγ = Σ_rows δy·x̂,   δβ = Σ_rows δy


def _row_dims(input: Tensor, normalized_dims: int) -> tuple[int, ...]:
    return tuple(range(input.dim() - normalized_dims, input.dim()))


def _sum_over(tensor: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``tensor`` summed over ``dims``; over none, a copy of it (``tensor.sum(())`` would sum
    everything: a layer norm over the whole input has no batch dimensions). A new tensor either
    way: the caller may reuse ``tensor``'s buffer afterwards."""
    return tensor.sum(dims) if dims else tensor.clone()


def _normalized_rows(input: Tensor, dims: tuple[int, ...], eps: float) -> tuple[Tensor, Tensor]:
    """x̂ = (x − μ)/σ per row, and 1/σ (broadcastable against the input): μ = mean(x),
    σ = √(mean((x − μ)²) + ε)."""
    _, centered, variance = _centered_and_variance(input, dims)  # x − μ, σ²
    inverse_std = torch.rsqrt(variance + eps)  # 1/σ = 1/√(σ² + ε)
    if torch.is_grad_enabled():  # recorded (double backward): centered is saved by the product above
        return centered * inverse_std, inverse_std  # x̂ = (x − μ)/σ
    return centered.mul_(inverse_std), inverse_std  # x̂ = (x − μ)/σ, over its own fresh buffer


def layer_norm_forward(input: Tensor, normalized_dims: int, weight: Tensor | None, bias: Tensor | None,
                       eps: float) -> Tensor:
    """y = γ (x − μ)/σ + β per row of the last ``normalized_dims`` dimensions.

    input: ``(*, *normalized_shape)``; weight γ, bias β: normalized_shape or None. Returns y: input's shape.
    """
    normalized, _ = _normalized_rows(input, _row_dims(input, normalized_dims), eps)  # x̂ = (x − μ)/σ
    if weight is not None:
        normalized = normalized * weight  # γ x̂
    return normalized if bias is None else normalized + bias  # y = γ x̂ + β


def layer_norm_forward_fast(input: Tensor, normalized_dims: int, weight: Tensor | None, bias: Tensor | None,
                            eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`layer_norm_forward` over one buffer of the input's size (x − μ written once, σ² from
    its squares, then scaled and shifted in place: two buffers fewer), also returning μ and 1/σ per
    row, which the Function keeps for its backward (as PyTorch's layer norm keeps them).

    input: ``(*, *normalized_shape)``; weight γ, bias β: normalized_shape or None.
    Returns y: input's shape, μ and 1/σ: ``(*, 1, ..., 1)``."""
    mean, output, variance = _centered_and_variance(input, _row_dims(input, normalized_dims))  # μ, x − μ, σ²
    inverse_std = variance.add_(eps).rsqrt_()  # 1/σ = 1/√(σ² + ε)
    output.mul_(inverse_std)  # x̂ = (x − μ)/σ
    # a γ or β batched by a torch.func transform where x̂ is not: new tensors
    in_place = not any(parameter is not None and is_traced(parameter) for parameter in (weight, bias))
    if weight is not None:
        output = output.mul_(weight) if in_place else output * weight  # γ x̂
    if bias is not None:
        output = output.add_(bias) if in_place else output + bias  # y = γ x̂ + β
    return output, mean, inverse_std


def layer_norm_backward(
    grad_output: Tensor,
    input: Tensor,
    normalized_dims: int,
    weight: Tensor | None,
    eps: float,
    needs_grad: tuple[bool, bool, bool] = (True, True, True),
    statistics: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """δx, δγ, δβ of y = γ (x − μ)/σ + β per row; μ and σ are recomputed from x (so that double
    backward, which differentiates this function, sees how they depend on x), or, where the
    products may go into buffers of our own (see ``owns_buffers``), read from ``statistics`` when
    given: (μ, 1/σ) as :func:`layer_norm_forward_fast` returns them.

    grad_output δy, input x: ``(*, *normalized_shape)``; weight γ: normalized_shape or None.
    Returns δx: x's shape, δγ and δβ: normalized_shape (each None unless ``needs_grad`` asks for it).
    """
    dims = _row_dims(input, normalized_dims)
    batch_dims = tuple(range(input.dim() - normalized_dims))
    if owns_buffers(grad_output):
        return _layer_norm_backward_in_buffers(grad_output, input, dims, batch_dims, weight, eps, needs_grad,
                                               statistics)
    normalized, inverse_std = _normalized_rows(input, dims, eps)  # x̂, 1/σ
    grad_weight = _sum_over(grad_output * normalized, batch_dims) if needs_grad[1] else None  # δγ = Σ δy·x̂
    grad_bias = _sum_over(grad_output, batch_dims) if needs_grad[2] else None  # δβ = Σ δy
    grad_input = None
    if needs_grad[0]:
        scaled = grad_output if weight is None else grad_output * weight  # g = γ·δy
        mean_scaled = scaled.mean(dims, keepdim=True)  # mean(g)
        mean_scaled_x_hat = (scaled * normalized).mean(dims, keepdim=True)  # mean(g·x̂)
        grad_input = inverse_std * (scaled - mean_scaled - normalized * mean_scaled_x_hat)  # δx = (1/σ)(g − ...)
    return grad_input, grad_weight, grad_bias


def _layer_norm_backward_in_buffers(grad_output, input, dims, batch_dims, weight, eps, needs_grad, statistics=None):
    """:func:`layer_norm_backward`'s formulas in three buffers of the input's size (x̂, g, one
    product), each product written over a buffer already made (see ``owns_buffers``); x̂ from the
    forward's μ and 1/σ when ``statistics`` holds them."""
    if statistics is None:
        normalized, inverse_std = _normalized_rows(input, dims, eps)  # x̂ = (x − μ)/σ, 1/σ
    else:
        mean, inverse_std = statistics
        normalized = (input - mean).mul_(inverse_std)  # x̂ = (x − μ)/σ
    product = grad_output * normalized  # δy·x̂
    grad_weight = _sum_over(product, batch_dims) if needs_grad[1] else None  # δγ = Σ δy·x̂
    grad_bias = _sum_over(grad_output, batch_dims) if needs_grad[2] else None  # δβ = Σ δy
    if not needs_grad[0]:
        return None, grad_weight, grad_bias
    scaled = grad_output.clone() if weight is None else grad_output * weight  # g = γ·δy
    mean_scaled = scaled.mean(dims, keepdim=True)  # mean(g)
    mean_scaled_x_hat = torch.mul(scaled, normalized, out=product).mean(dims, keepdim=True)  # mean(g·x̂)
    correction = torch.mul(normalized, mean_scaled_x_hat, out=product)  # x̂·mean(g·x̂)
    return scaled.sub_(mean_scaled).sub_(correction).mul_(inverse_std), grad_weight, grad_bias  # δx = (1/σ)(g − …)


def _layer_norm_tangent(input, normalized_dims, weight, eps, input_tangent, weight_tangent, bias_tangent):
    """ẏ = γ·(∂x̂/∂x)ẋ + x̂·γ̇ + β̇; ∂x̂/∂x is symmetric per row ((1/σ)(I − 1/D − x̂x̂ᵀ/D)), so its
    product with ẋ is the backward formula with δy = ẋ and γ = 1."""
    tangent = 0
    if input_tangent is not None:
        tangent, _, _ = layer_norm_backward(input_tangent, input, normalized_dims, None, eps, (True, False, False))
        if weight is not None:
            tangent = tangent * weight
    if weight_tangent is not None:
        normalized, _ = _normalized_rows(input, _row_dims(input, normalized_dims), eps)
        tangent = tangent + normalized * weight_tangent  # x̂·γ̇
    if bias_tangent is not None:
        tangent = tangent + bias_tangent  # β̇
    return tangent


class LayerNormFunction(LayerFunction):
    """y = γ (x − μ)/σ + β per row, with backward (1/σ)(g − mean(g) − x̂·mean(g·x̂)), g = γδy.
    Returns (y, μ, 1/σ); μ and 1/σ per row are not differentiable, kept for the backward (as
    PyTorch's layer norm keeps them: the backward into buffers of its own reads them instead of
    recomputing them; the recorded one, for double backward, recomputes them from x). Saves x and γ
    (inputs), μ and 1/σ."""

    @staticmethod
    def forward(input, normalized_dims, weight, bias, eps):
        return layer_norm_forward_fast(input, normalized_dims, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.normalized_dims, weight, bias, ctx.eps = inputs
        _, mean, inverse_std = output
        ctx.mark_non_differentiable(mean, inverse_std)
        ctx.save_for_backward(input, weight, mean, inverse_std)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx, grad_output, grad_mean, grad_inverse_std):
        input, weight, mean, inverse_std = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_input, grad_weight, grad_bias = layer_norm_backward(
            grad_output, input, ctx.normalized_dims, weight, ctx.eps, (needs[0], needs[2], needs[3]),
            (mean, inverse_std)
        )
        return grad_input, None, grad_weight, grad_bias, None

    @staticmethod
    def per_example(ctx, grad_output, grad_mean, grad_inverse_std):
        input, _, mean, inverse_std = ctx.saved_tensors
        parameter_dims = tuple(range(input.dim() - ctx.normalized_dims, input.dim()))
        terms = normalization_per_example(grad_output, (input - mean) * inverse_std, parameter_dims,  # x̂
                                          ctx.needs_input_grad[2:4])
        return None, None, *terms, None

    @staticmethod
    def jvp(ctx, input_tangent, dims_tangent, weight_tangent, bias_tangent, eps_tangent):
        input, weight = ctx.saved_tensors
        tangent = _layer_norm_tangent(input, ctx.normalized_dims, weight, ctx.eps, input_tangent, weight_tangent,
                                      bias_tangent)
        return tangent, None, None


def _normalized_shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(int(size) for size in normalized_shape)


def _check_layer_norm_arguments(input, normalized_shape, weight, bias) -> None:
    check_floating("layer_norm", "input", input)
    count = len(normalized_shape)
    if count == 0 or tuple(input.shape[input.dim() - count:]) != normalized_shape or input.dim() < count:
        raise ValueError(
            f"layer_norm: expected an input whose last dimensions are normalized_shape {list(normalized_shape)}, "
            f"got shape {tuple(input.shape)}; pass normalized_shape=input.shape[-k:] for the last k dimensions"
        )
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tuple(tensor.shape) != normalized_shape:
            raise ValueError(f"layer_norm: expected {name} of shape {normalized_shape} (normalized_shape), "
                             f"got {tuple(tensor.shape)}")


@hand_writes(torch.nn.functional.layer_norm)
def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """Layer normalization like ``torch.nn.functional.layer_norm``, with the hand-written backward.

    input: ``(*, *normalized_shape)``; weight γ, bias β: normalized_shape or None. Returns y: input's shape.
    """
    normalized_shape = _normalized_shape(normalized_shape)
    _check_layer_norm_arguments(input, normalized_shape, weight, bias)
    if computes_in_float32(input, weight, bias):  # as torch's mixed-precision kernel
        return layer_norm(input.float(), normalized_shape, weight, bias, eps).to(input.dtype)
    output, _, _ = apply(LayerNormFunction, input, len(normalized_shape), weight, bias, float(eps))
    return output


class LayerNorm(SharesState, torch.nn.LayerNorm, torch_twin=torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` (same parameters and state_dict) with the hand-written backward
    δx = (1/σ)(g − mean(g) − x̂·mean(g·x̂)), g = γδy. input ``(*, *normalized_shape)``."""

    def forward(self, input: Tensor) -> Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def function_and_arguments(self, input: Tensor):
        shape = _normalized_shape(self.normalized_shape)
        _check_layer_norm_arguments(input, shape, self.weight, self.bias)
        return LayerNormFunction, (input, len(shape), self.weight, self.bias, float(self.eps))

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(4).to(dtype), (torch.randn(2, 3, 4, dtype=dtype),)


# ----------------------------------------------------------------------------------------------
# Group normalization: layer norm's formulas per (image, group of channels), then γ, β per channel
# ----------------------------------------------------------------------------------------------
#
# For each image n and group of C/G channels, over its D = (C/G)·H·W values (any trailing dims):
#     x̂ = (x − μ)/σ as in layer norm over that row,  y = γ_c x̂ + β_c      (γ, β: (C,))
# Backward, with g = γ·δy: δx = (1/σ)(g − mean(g) − x̂·mean(g·x̂)) per group (layer norm's formula),
#     δγ_c = Σ_{n, *} δy·x̂,   δβ_c = Σ_{n, *} δy


def _group_rows(tensor: Tensor, num_groups: int) -> Tensor:
    """``(N, C, *)`` -> (N, G, (C/G)·∏*): each group of channels of an image as one row."""
    return tensor.reshape(tensor.shape[0], num_groups, math.prod(tensor.shape[1:]) // num_groups)


def group_norm_forward(input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None,
                       eps: float) -> Tensor:
    """y = γ (x − μ)/σ + β, μ and σ per image and group of channels, γ and β per channel.

    input: ``(N, C, *)``; weight γ, bias β: (C,) or None. Returns y: input's shape.
    """
    normalized = layer_norm_forward(_group_rows(input, num_groups), 1, None, None, eps).reshape(input.shape)  # x̂
    if weight is None and bias is None:
        return normalized.clone()  # a new tensor, not a view of x̂'s rows: a Function's output may be modified in place
    if weight is not None:
        normalized = normalized * _per_channel(weight, input)  # γ x̂
    return normalized if bias is None else normalized + _per_channel(bias, input)  # y = γ x̂ + β


def group_norm_backward(
    grad_output: Tensor,
    input: Tensor,
    num_groups: int,
    weight: Tensor | None,
    eps: float,
    needs_grad: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """δx, δγ, δβ of y = γ (x − μ)/σ + β per group; μ and σ recomputed from x, as layer norm's.

    grad_output δy, input x: ``(N, C, *)``; weight γ: (C,) or None. Returns δx: x's shape, δγ and δβ:
    (C,) (each None unless ``needs_grad`` asks for it).
    """
    rows = _group_rows(input, num_groups)
    channel_dims = _channel_dims(input)
    grad_weight = grad_bias = grad_input = None
    if needs_grad[1]:
        normalized, _ = _normalized_rows(rows, (2,), eps)  # x̂ (only here: layer_norm_backward makes its own)
        grad_weight = (grad_output * normalized.reshape(input.shape)).sum(channel_dims)  # δγ = Σ δy·x̂
    if needs_grad[2]:
        grad_bias = grad_output.sum(channel_dims)  # δβ = Σ δy
    if needs_grad[0]:
        scaled = grad_output if weight is None else grad_output * _per_channel(weight, input)  # g = γ·δy
        grad_rows, _, _ = layer_norm_backward(_group_rows(scaled, num_groups), rows, 1, None, eps, (True, False, False))
        grad_input = grad_rows.reshape(input.shape)  # δx = (1/σ)(g − mean(g) − x̂·mean(g·x̂)), per group
    return grad_input, grad_weight, grad_bias


def _group_norm_tangent(input, num_groups, weight, eps, input_tangent, weight_tangent, bias_tangent):
    """ẏ = γ·(∂x̂/∂x)ẋ + x̂·γ̇ + β̇; (∂x̂/∂x) is layer norm's per group, symmetric: its product with ẋ
    is the backward formula with δy = ẋ and γ = 1."""
    tangent = 0
    if input_tangent is not None:
        tangent, _, _ = group_norm_backward(input_tangent, input, num_groups, None, eps, (True, False, False))
        if weight is not None:
            tangent = tangent * _per_channel(weight, input)
    if weight_tangent is not None:
        normalized = layer_norm_forward(_group_rows(input, num_groups), 1, None, None, eps).reshape(input.shape)
        tangent = tangent + normalized * _per_channel(weight_tangent, input)  # x̂·γ̇
    if bias_tangent is not None:
        tangent = tangent + _per_channel(bias_tangent, input)  # β̇
    return tangent


class GroupNormFunction(LayerFunction):
    """y = γ (x − μ)/σ + β per image and group of channels, with layer norm's backward per group.
    Saves x and γ (inputs); the backward recomputes μ and σ."""

    @staticmethod
    def forward(input, num_groups, weight, bias, eps):
        return group_norm_forward(input, num_groups, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.num_groups, weight, bias, ctx.eps = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_input, grad_weight, grad_bias = group_norm_backward(
            grad_output, input, ctx.num_groups, weight, ctx.eps, (needs[0], needs[2], needs[3])
        )
        return grad_input, None, grad_weight, grad_bias, None

    @staticmethod
    def per_example(ctx, grad_output):
        input, _ = ctx.saved_tensors
        normalized, _ = _normalized_rows(_group_rows(input, ctx.num_groups), (2,), ctx.eps)  # x̂ per group
        terms = normalization_per_example(grad_output, normalized.reshape(input.shape), (1,), ctx.needs_input_grad[2:4])
        return None, None, *terms, None

    @staticmethod
    def jvp(ctx, input_tangent, groups_tangent, weight_tangent, bias_tangent, eps_tangent):
        input, weight = ctx.saved_tensors
        return _group_norm_tangent(input, ctx.num_groups, weight, ctx.eps, input_tangent, weight_tangent,
                                   bias_tangent)


def _check_group_norm_arguments(input, num_groups, weight, bias) -> None:
    check_floating("group_norm", "input", input)
    if input.dim() < 2:
        raise ValueError(f"group_norm: expected an input of shape (N, C, *), got shape {tuple(input.shape)}; "
                         f"for one sample use input.unsqueeze(0)")
    channels = input.shape[1]
    if channels == 0 or math.prod(input.shape[2:]) == 0:  # torch's kernel refuses these, with a RuntimeError
        raise RuntimeError(f"group_norm: expected at least one channel and one value per channel of each image, "
                           f"got shape {tuple(input.shape)}; skip the layer for an empty input")
    if not isinstance(num_groups, int) or num_groups < 1 or channels % num_groups:
        raise ValueError(f"group_norm: expected the number of channels ({channels}, dimension 1 of shape "
                         f"{tuple(input.shape)}) to be divisible by num_groups, got num_groups={num_groups!r}")
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tuple(tensor.shape) != (channels,):
            raise ValueError(f"group_norm: expected {name} of shape ({channels},), one per channel, "
                             f"got {tuple(tensor.shape)}")


@hand_writes(torch.nn.functional.group_norm)
def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """Group normalization like ``torch.nn.functional.group_norm``, with the hand-written backward.

    input: ``(N, C, *)``, C divisible by num_groups; weight γ, bias β: (C,) or None. Returns y: input's shape.
    """
    _check_group_norm_arguments(input, num_groups, weight, bias)
    if computes_in_float32(input, weight, bias):  # as torch's mixed-precision kernel
        return group_norm(input.float(), num_groups, weight, bias, eps).to(input.dtype)
    return apply(GroupNormFunction, input, num_groups, weight, bias, float(eps))


class GroupNorm(SharesState, torch.nn.GroupNorm, torch_twin=torch.nn.GroupNorm):
    """``torch.nn.GroupNorm`` (same parameters and state_dict) with the hand-written backward
    δx = (1/σ)(g − mean(g) − x̂·mean(g·x̂)) per group, g = γδy. input ``(N, C, *)``."""

    def forward(self, input: Tensor) -> Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def function_and_arguments(self, input: Tensor):
        _check_group_norm_arguments(input, self.num_groups, self.weight, self.bias)
        return GroupNormFunction, (input, self.num_groups, self.weight, self.bias, float(self.eps))

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(2, 4).to(dtype), (torch.randn(6, 4, 3, dtype=dtype),)


# ----------------------------------------------------------------------------------------------
# RMS normalization: layer norm without the mean (Llama, T5, Qwen2 ...)
# ----------------------------------------------------------------------------------------------
#
# For each row x of D values (the last len(normalized_shape) dimensions of the input):
#     rms = √(mean(x²) + ε),  x̂ = x/rms,  y = γ x̂      (γ: normalized_shape, or none)
# Backward, with g = γ·δy (rms depends on every x of the row: ∂rms/∂x = x/(D·rms) = x̂/D):
#     δx = (1/rms)(g − x̂·mean(g·x̂)),   δγ = Σ_rows δy·x̂
# (layer norm's δx without the mean(g) term, which came from μ.)

__all__ += ["rms_norm_forward", "rms_norm_backward", "RMSNormFunction", "rms_norm", "RMSNorm"]  # noqa: PLE0605


def _inverse_rms(input: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    """1/rms = 1/√(mean(x²) + ε) per row, broadcastable against the input."""
    return torch.rsqrt((input * input).mean(dims, keepdim=True) + eps)  # 1/rms = 1/√(mean(x²) + ε)


def rms_norm_forward(input: Tensor, normalized_dims: int, weight: Tensor | None, eps: float) -> Tensor:
    """y = γ x/rms per row of the last ``normalized_dims`` dimensions.

    input: ``(*, *normalized_shape)``; weight γ: normalized_shape or None. Returns y: input's shape.
    """
    normalized = input * _inverse_rms(input, _row_dims(input, normalized_dims), eps)  # x̂ = x/rms
    return normalized if weight is None else normalized * weight  # y = γ x̂


def rms_norm_backward(
    grad_output: Tensor,
    input: Tensor,
    normalized_dims: int,
    weight: Tensor | None,
    eps: float,
    needs_grad: tuple[bool, bool] = (True, True),
) -> tuple[Tensor | None, Tensor | None]:
    """δx, δγ of y = γ x/rms per row; rms recomputed from x (double backward differentiates this).

    grad_output δy, input x: ``(*, *normalized_shape)``; weight γ: normalized_shape or None.
    Returns δx: x's shape, δγ: normalized_shape (each None unless ``needs_grad`` asks for it).
    """
    dims = _row_dims(input, normalized_dims)
    inverse_rms = _inverse_rms(input, dims, eps)  # 1/rms
    normalized = input * inverse_rms  # x̂ = x/rms
    batch_dims = tuple(range(input.dim() - normalized_dims))
    grad_weight = _sum_over(grad_output * normalized, batch_dims) if needs_grad[1] else None  # δγ = Σ δy·x̂
    grad_input = None
    if needs_grad[0]:
        scaled = grad_output if weight is None else grad_output * weight  # g = γ·δy
        mean_scaled_x_hat = (scaled * normalized).mean(dims, keepdim=True)  # mean(g·x̂)
        grad_input = inverse_rms * (scaled - normalized * mean_scaled_x_hat)  # δx = (1/rms)(g − x̂·mean(g·x̂))
    return grad_input, grad_weight


class RMSNormFunction(LayerFunction):
    """y = γ x/rms per row, with backward δx = (1/rms)(g − x̂·mean(g·x̂)), g = γδy, δγ = Σ δy·x̂.
    Saves x and γ (rms is recomputed)."""

    @staticmethod
    def forward(input, normalized_dims, weight, eps):
        return rms_norm_forward(input, normalized_dims, weight, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.normalized_dims, weight, ctx.eps = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_input, grad_weight = rms_norm_backward(grad_output, input, ctx.normalized_dims, weight, ctx.eps,
                                                    (needs[0], needs[2]))
        return grad_input, None, grad_weight, None

    @staticmethod
    def per_example(ctx, grad_output):
        input, _ = ctx.saved_tensors
        dims = _row_dims(input, ctx.normalized_dims)
        normalized = input * _inverse_rms(input, dims, ctx.eps)  # x̂ = x/rms
        grad_weight, _ = normalization_per_example(grad_output, normalized, dims, (ctx.needs_input_grad[2], False))
        return None, None, grad_weight, None

    @staticmethod
    def jvp(ctx, input_tangent, dims_tangent, weight_tangent, eps_tangent):
        """ẏ = γ·(∂x̂/∂x)ẋ + x̂·γ̇; ∂x̂/∂x = (1/rms)(I − x̂x̂ᵀ/D) is symmetric per row, so its product
        with ẋ is the backward formula with δy = ẋ and γ = 1."""
        input, weight = ctx.saved_tensors
        tangent = 0
        if input_tangent is not None:
            tangent, _ = rms_norm_backward(input_tangent, input, ctx.normalized_dims, None, ctx.eps, (True, False))
            if weight is not None:
                tangent = tangent * weight
        if weight_tangent is not None:
            tangent = tangent + rms_norm_forward(input, ctx.normalized_dims, None, ctx.eps) * weight_tangent  # x̂·γ̇
        return tangent


def _check_rms_norm_arguments(input, normalized_shape, weight) -> None:
    check_floating("rms_norm", "input", input)
    count = len(normalized_shape)
    if count == 0 or input.dim() < count or tuple(input.shape[input.dim() - count:]) != normalized_shape:
        raise ValueError(
            f"rms_norm: expected an input whose last dimensions are normalized_shape {list(normalized_shape)}, "
            f"got shape {tuple(input.shape)}; pass normalized_shape=input.shape[-k:] for the last k dimensions"
        )
    if weight is not None and tuple(weight.shape) != normalized_shape:
        raise ValueError(f"rms_norm: expected weight of shape {normalized_shape} (normalized_shape), "
                         f"got {tuple(weight.shape)}")


@hand_writes(torch.nn.functional.rms_norm)
def rms_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """RMS normalization like ``torch.nn.functional.rms_norm``, with the hand-written backward.

    input: ``(*, *normalized_shape)``; weight γ: normalized_shape or None; eps None: the machine epsilon
    of the input's dtype, as PyTorch takes it. Returns y: input's shape.
    """
    normalized_shape = _normalized_shape(normalized_shape)
    _check_rms_norm_arguments(input, normalized_shape, weight)
    if computes_in_float32(input, weight):  # as torch's mixed-precision kernel
        return rms_norm(input.float(), normalized_shape, weight, eps).to(input.dtype)
    eps = torch.finfo(input.dtype).eps if eps is None else float(eps)
    return apply(RMSNormFunction, input, len(normalized_shape), weight, eps)


class RMSNorm(SharesState, torch.nn.RMSNorm, torch_twin=torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` (same parameters and state_dict) with the hand-written backward
    δx = (1/rms)(g − x̂·mean(g·x̂)), g = γδy. input ``(*, *normalized_shape)``."""

    def forward(self, input: Tensor) -> Tensor:
        return rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def function_and_arguments(self, input: Tensor):
        shape = _normalized_shape(self.normalized_shape)
        _check_rms_norm_arguments(input, shape, self.weight)
        eps = torch.finfo(input.dtype).eps if self.eps is None else float(self.eps)
        return RMSNormFunction, (input, len(shape), self.weight, eps)

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(4).to(dtype), (torch.randn(2, 3, 4, dtype=dtype),)
