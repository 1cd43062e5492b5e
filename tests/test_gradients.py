"""The gradient suite: every manualbp Function checked against PyTorch's own op, in float64, through
the public checker ``manualbp.testing.check_function`` (the tool README's "Check your own backward"
offers to everyone).

One line of ``CASES`` per Function and setting. ``check_function`` runs, on each input layout (as
given, batch size 1, extra leading dimensions, non-contiguous): values and gradients against the
reference for every subset of inputs requiring grad, double backward, ``gradcheck`` (backward,
forward-mode AD, batched), ``gradgradcheck`` (reverse over reverse, batched, forward over
reverse); and once: ``torch.func`` (vmap, jacrev, jacfwd) and inputs left unmodified. Functions
that run the same kernels in the same order as torch's op are also held to bit-for-bit agreement.

To add a layer: a line in ``CASES`` (``test_every_manualbp_function_has_a_case`` fails until there
is one). That the checks fail on wrong Functions, and name the mistake, is shown with one planted
bug each in ``tests/test_testing.py``.

The last tests are what ``check_function`` does not look at: which matmuls the linear backward
skips, and which tensors it keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode  # torch-private: no public dispatch-mode API

import manualbp.functional as mbf
from manualbp.layers.base import LayerFunction
from manualbp.reference import TorchEuclideanLoss, TorchSoftmaxEuclideanLoss
from manualbp.testing import check_function

pytestmark = [
    # torch's own conv2d warns that padding="same" with an even kernel copies the input (so does manualbp's).
    pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning"),
]

DTYPE = torch.float64
# "Exact" in float64: a few units in the last place (eps = 2.2e-16), the spread of two correct
# summation orders. A wrong formula is off by orders of magnitude more.
EXACT = {"rtol": 1e-13, "atol": 1e-15}
BIT_FOR_BIT = {"rtol": 0, "atol": 0}
# Bit for bit holds for values, first-order gradients (every requires-grad subset, every layout) and
# Jacobians. Not checked at rtol=0: double backward and vmap (they take other paths than torch's op),
# gradcheck (against finite differences) and inputs left unmodified (no tolerance involved).
NOT_BIT_FOR_BIT = (
    "second_order", "vmap", "gradcheck", "forward_ad", "batched_grad", "batched_forward_ad", "gradgradcheck",
    "batched_gradgrad", "fwd_over_rev", "unmodified",
)
# The losses take (N, C) logits; torch reads (2, N, C) as N classes in dimension 1.
NO_LEADING_DIMS = ("as_given", "batch_size_1", "non_contiguous")
# Images are (N, C, H, W): a leading dimension more is not an image batch.
IMAGE_LAYOUTS = NO_LEADING_DIMS


# ----------------------------------------------------------------------------------------------
# Inputs (made by check_function with torch's generator seeded; it derives the other layouts)
# ----------------------------------------------------------------------------------------------


def randn(*shape: int, away_from_zero: bool = False) -> torch.Tensor:
    tensor = torch.randn(*shape, dtype=DTYPE)
    if away_from_zero:  # keep finite differences off the ReLU/ELU kink at 0
        tensor = tensor + 0.2 * torch.sign(tensor)
    return tensor


def linear_inputs(away_from_kink: bool = False) -> tuple[torch.Tensor, ...]:
    """x (5, 4), weight (3, 4), bias (3,); with ``away_from_kink``, X Wᵀ + b at least 0.05 from 0."""
    while True:
        x, weight, bias = randn(5, 4), randn(3, 4), randn(3)
        if not away_from_kink or F.linear(x, weight, bias).abs().min() > 0.05:
            return x, weight, bias


def logits_and_indices():
    return randn(5, 4), torch.randint(0, 4, (5,))


def sequence_logits_and_indices():
    """logits (N=2, C=4, T=3), class indices (2, 3) with the ignored class 1 among them."""
    return randn(2, 4, 3), torch.tensor([[0, 1, 3], [2, 2, 1]])


def logits_and_probabilities():
    return randn(5, 4), torch.softmax(randn(5, 4), dim=1)


def logits_and_unnormalised_targets():
    return randn(5, 4), 2 * torch.rand(5, 4, dtype=DTYPE)  # rows don't sum to 1


def conv_inputs(in_channels=2, out_channels=3, groups=1, kernel=3, size=5, bias=True):
    """x (2, C_in, size, size), weight (C_out, C_in/groups, k, k), bias (C_out,) or None."""
    x, weight = randn(2, in_channels, size, size), randn(out_channels, in_channels // groups, kernel, kernel)
    return x, weight, randn(out_channels) if bias else None


def images(*shape: int) -> torch.Tensor:
    """Distinct values (no ties for max pooling to break differently), shape (N, C, H, W)."""
    return torch.randperm(int(torch.tensor(shape).prod())).to(DTYPE).reshape(shape) / 10 + 0.01 * randn(*shape)


def dropout_inputs():
    """x (5, 4) and which values dropout keeps (bool, so no gradient): deterministic."""
    return randn(5, 4), torch.rand(5, 4) > 0.3


def away_from(tensor: torch.Tensor, *kinks: float, margin: float = 0.1) -> torch.Tensor:
    """``tensor`` with every value within ``margin`` of a kink pushed ``2·margin`` away (finite differences)."""
    for kink in kinks:
        near = (tensor - kink).abs() < margin
        tensor = torch.where(near, tensor + 2 * margin * torch.sign(tensor - kink + 1e-3), tensor)
    return tensor


def hardtanh_inplace(input, min_val, max_val):
    return mbf.hardtanh(input.clone(), min_val, max_val, inplace=True)


def layer_norm_inputs(*shape: int, normalized_dims: int = 1, affine: bool = True):
    normalized_shape = shape[len(shape) - normalized_dims:]
    x = randn(*shape)
    if not affine:
        return x, normalized_shape
    return x, normalized_shape, randn(*normalized_shape), randn(*normalized_shape)


def embedding_inputs():
    """indices (3, 4) with repeats and the padding row 1; weight (6, 5)."""
    return torch.tensor([[0, 1, 2, 2], [5, 1, 3, 0], [2, 2, 2, 4]]), randn(6, 5)


def torch_attention(*args, **settings):
    """PyTorch's own attention on its math backend: its CPU flash kernel has no double backward
    ("derivative for _scaled_dot_product_flash_attention_for_cpu_backward is not implemented")."""
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(*args, **settings)


def attention_inputs(keys: int = 3, value_features: int = 4):
    """query (2, 2, 3, 4), key (2, 2, keys, 4), value (2, 2, keys, value_features): batch 2, 2 heads."""
    return randn(2, 2, 3, 4), randn(2, 2, keys, 4), randn(2, 2, keys, value_features)


def attention_with_mask(mask_kind: str):
    query, key, value = attention_inputs(keys=5)
    if mask_kind == "bool":  # every row keeps at least one key
        mask = torch.rand(3, 5) > 0.4
        mask[:, 0] = True
    else:
        mask = randn(2, 1, 3, 5)  # broadcast over the heads: its gradient sums over them
    return query, key, value, mask


def attention_weights_inputs():
    query, key, _, mask = attention_with_mask("float")
    return query, key, mask


RUNNING_MEAN, RUNNING_VAR = torch.tensor([0.1, -0.2, 0.3], dtype=DTYPE), torch.tensor([0.5, 1.5, 2.0], dtype=DTYPE)


# ----------------------------------------------------------------------------------------------
# References: the same computation with PyTorch's own ops
# ----------------------------------------------------------------------------------------------


def torch_attention_weights(query, key, mask):
    return torch.softmax(query @ key.mT / query.shape[-1] ** 0.5 + mask, dim=-1)


def torch_linear_relu(x, weight, bias):
    return F.relu(F.linear(x, weight, bias))


def torch_softmax_euclidean_loss(logits, target):
    return TorchSoftmaxEuclideanLoss()(logits, target)


def torch_euclidean_loss(pred, target, reduction="sum"):
    return TorchEuclideanLoss(reduction)(pred, target)


def manualbp_dropout(x, keep):
    return mbf.DropoutFunction.apply(x, keep.to(x.dtype) / 0.7)  # the mask m = keep/(1 − p), p = 0.3


def torch_dropout(x, keep):
    return x * keep / 0.7


def conv_case(name, inputs, bit_for_bit=True, **settings):
    """float64 conv2d runs PyTorch's own float64 algorithm (im2col, one GEMM per image): bit for bit."""
    return Case(name, lambda x, w, b: mbf.conv2d(x, w, b, **settings), lambda x, w, b: F.conv2d(x, w, b, **settings),
                inputs, layouts=IMAGE_LAYOUTS, bit_for_bit=bit_for_bit)


def pool_case(name, function, reference, inputs, **settings):
    return Case(name, lambda x: function(x, **settings), lambda x: reference(x, **settings), inputs,
                layouts=IMAGE_LAYOUTS)


# ----------------------------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    function: Callable  # the manualbp function
    reference: Callable  # PyTorch's own op computing the same thing
    inputs: Callable  # () -> the arguments, tensors and settings, in order
    layouts: tuple[str, ...] = ("as_given", "batch_size_1", "leading_dims", "non_contiguous")
    bit_for_bit: bool = False  # the same kernels in the same order as the reference: identical results
    skip: tuple[str, ...] = ()  # checks that do not apply, each with its reason at the case


def relu_inplace(input):
    """ReLU(inplace=True) on a copy, so that the case's own input stays as given."""
    return mbf.relu(input.clone(), inplace=True)


def mlp_node(input, target, weight_1, bias_1, weight_2, bias_2):
    """The MNIST_NN_manualBP slide as one node: softmax cross-entropy of a ReLU MLP."""
    return mbf.mlp_softmax_cross_entropy(input, target, [weight_1, weight_2], [bias_1, bias_2])


def torch_mlp(input, target, weight_1, bias_1, weight_2, bias_2):
    return F.cross_entropy(F.linear(F.relu(F.linear(input, weight_1, bias_1)), weight_2, bias_2), target)


def mlp_inputs():
    return randn(5, 4), torch.randint(0, 3, (5,)), randn(6, 4), randn(6), randn(3, 6), randn(3)


CASES = [
    Case("linear", mbf.linear, F.linear, linear_inputs, bit_for_bit=True),
    Case("linear_no_bias", mbf.linear, F.linear, lambda: (*linear_inputs()[:2], None), bit_for_bit=True),
    Case("linear_relu", mbf.linear_relu, torch_linear_relu, lambda: linear_inputs(away_from_kink=True),
         bit_for_bit=True),
    Case("sigmoid", mbf.sigmoid, torch.sigmoid, lambda: randn(5, 4)),
    Case("relu", mbf.relu, F.relu, lambda: randn(5, 4, away_from_zero=True), bit_for_bit=True),
    # gradcheck's batched forward AD (legacy vmap over the jvp) is not a torch.func transform, so the
    # in-place Function runs there and autograd asks its jvp to write the batched tangent in place.
    Case("relu_inplace", relu_inplace, F.relu, lambda: randn(5, 4, away_from_zero=True),
         skip=("batched_forward_ad",)),
    Case("tanh", mbf.tanh, torch.tanh, lambda: randn(5, 4)),
    Case("elu", mbf.elu, F.elu, lambda: randn(5, 4, away_from_zero=True)),
    Case("elu_alpha_0.5", mbf.elu, F.elu, lambda: (randn(5, 4, away_from_zero=True), 0.5)),
    Case("mlp_softmax_cross_entropy", mlp_node, torch_mlp, mlp_inputs, layouts=NO_LEADING_DIMS),
    Case("softmax_cross_entropy_indices", mbf.softmax_cross_entropy, F.cross_entropy, logits_and_indices,
         layouts=NO_LEADING_DIMS),
    Case("softmax_cross_entropy_probabilities", mbf.softmax_cross_entropy, F.cross_entropy,
         logits_and_probabilities, layouts=NO_LEADING_DIMS),
    Case("softmax_cross_entropy_unnormalised_targets", mbf.softmax_cross_entropy, F.cross_entropy,
         logits_and_unnormalised_targets, layouts=NO_LEADING_DIMS),
    Case("softmax_euclidean_indices", mbf.softmax_euclidean_loss, torch_softmax_euclidean_loss, logits_and_indices,
         layouts=NO_LEADING_DIMS),
    Case("softmax_euclidean_probabilities", mbf.softmax_euclidean_loss, torch_softmax_euclidean_loss,
         logits_and_probabilities, layouts=NO_LEADING_DIMS),
    Case("euclidean_loss_sum", mbf.euclidean_loss, torch_euclidean_loss, lambda: (randn(5, 3), randn(5, 3)),
         bit_for_bit=True),
    Case("euclidean_loss_mean", mbf.euclidean_loss, torch_euclidean_loss, lambda: (randn(5, 3), randn(5, 3), "mean")),
    Case("leaky_relu", mbf.leaky_relu, F.leaky_relu, lambda: randn(5, 4, away_from_zero=True)),
    Case("leaky_relu_negative_slope", mbf.leaky_relu, F.leaky_relu, lambda: (randn(5, 4, away_from_zero=True), -0.5)),
    Case("leaky_relu_backward", lambda grad, x: mbf.LeakyReLUBackwardFunction.apply(grad, x, 0.1),
         lambda grad, x: torch.ops.aten.leaky_relu_backward(grad, x, 0.1, False),
         lambda: (randn(5, 4), randn(5, 4, away_from_zero=True))),
    Case("zero_derivative_in_input", mbf.ZeroDerivativeInInput.apply, lambda grad, x: grad + 0 * x,
         lambda: (randn(5, 4), randn(5, 4))),
    Case("dropout", manualbp_dropout, torch_dropout, dropout_inputs),
    Case("flatten", lambda x: mbf.FlattenFunction.apply(x, 1, -1), lambda x: torch.flatten(x, 1, -1),
         lambda: randn(2, 3, 4)),
    Case("unflatten", lambda x: mbf.UnflattenFunction.apply(x, 1, (3, 4)), lambda x: x.unflatten(1, (3, 4)),
         lambda: randn(2, 12)),
    conv_case("conv2d", conv_inputs),
    conv_case("conv2d_no_bias", lambda: conv_inputs(bias=False)),
    conv_case("conv2d_stride_padding", conv_inputs, stride=2, padding=1),
    # PyTorch sums these in another order (groups: per group; rows dropped: another GEMM shape): ≤ 1e-13.
    conv_case("conv2d_stride_dropping_rows", lambda: conv_inputs(size=6), bit_for_bit=False, stride=(2, 3)),
    conv_case("conv2d_dilation", lambda: conv_inputs(size=6), dilation=2, padding=(1, 2)),
    conv_case("conv2d_groups", lambda: conv_inputs(in_channels=4, out_channels=6, groups=2), bit_for_bit=False,
              groups=2),
    conv_case("conv2d_same", lambda: conv_inputs(kernel=2), padding="same"),
    Case("conv1d", mbf.conv1d, F.conv1d, lambda: (randn(2, 2, 7), randn(3, 2, 3), randn(3)), layouts=IMAGE_LAYOUTS),
    Case("conv1d_stride_padding_dilation", lambda x, w, b: mbf.conv1d(x, w, b, 2, 2, 2),
         lambda x, w, b: F.conv1d(x, w, b, 2, 2, 2), lambda: (randn(2, 2, 9), randn(3, 2, 3), randn(3)),
         layouts=IMAGE_LAYOUTS),
    Case("conv1d_groups_same", lambda x, w, b: mbf.conv1d(x, w, b, padding="same", groups=2),
         lambda x, w, b: F.conv1d(x, w, b, padding="same", groups=2), lambda: (randn(2, 4, 6), randn(4, 2, 2), None),
         layouts=IMAGE_LAYOUTS),
    pool_case("max_pool2d", mbf.max_pool2d, F.max_pool2d, lambda: images(2, 2, 5, 5), kernel_size=2),
    pool_case("max_pool2d_overlapping_ceil", mbf.max_pool2d, F.max_pool2d, lambda: images(2, 2, 6, 6),
              kernel_size=3, stride=2, padding=1, ceil_mode=True),
    pool_case("max_pool2d_dilation", mbf.max_pool2d, F.max_pool2d, lambda: images(2, 2, 6, 6), kernel_size=2,
              dilation=2),
    pool_case("max_pool2d_8_channels", mbf.max_pool2d, F.max_pool2d, lambda: images(2, 8, 6, 6),  # channels-last
              kernel_size=3, stride=2, padding=1, ceil_mode=True),
    pool_case("avg_pool2d", mbf.avg_pool2d, F.avg_pool2d, lambda: randn(2, 2, 5, 5), kernel_size=2),
    pool_case("avg_pool2d_padding_ceil", mbf.avg_pool2d, F.avg_pool2d, lambda: randn(2, 2, 6, 6), kernel_size=3,
              stride=2, padding=1, ceil_mode=True),
    pool_case("avg_pool2d_exclude_pad", mbf.avg_pool2d, F.avg_pool2d, lambda: randn(2, 2, 6, 6), kernel_size=3,
              stride=2, padding=1, count_include_pad=False),
    pool_case("adaptive_avg_pool2d", mbf.adaptive_avg_pool2d, F.adaptive_avg_pool2d, lambda: randn(2, 2, 7, 5),
              output_size=(3, 2)),
    Case("batch_norm_train_nc", lambda x, w, b: mbf.batch_norm(x, None, None, w, b, True),
         lambda x, w, b: F.batch_norm(x, None, None, w, b, True), lambda: (randn(6, 3), randn(3), randn(3)),
         layouts=NO_LEADING_DIMS),
    Case("batch_norm_train_nchw", lambda x, w, b: mbf.batch_norm(x, None, None, w, b, True),
         lambda x, w, b: F.batch_norm(x, None, None, w, b, True), lambda: (randn(2, 3, 3, 3), randn(3), randn(3)),
         layouts=NO_LEADING_DIMS),
    Case("batch_norm_eval_nchw", lambda x, w, b: mbf.batch_norm(x, RUNNING_MEAN, RUNNING_VAR, w, b, False),
         lambda x, w, b: F.batch_norm(x, RUNNING_MEAN, RUNNING_VAR, w, b, False),
         lambda: (randn(2, 3, 3, 3), randn(3), randn(3)), layouts=NO_LEADING_DIMS),
    Case("gelu", mbf.gelu, F.gelu, lambda: randn(5, 4)),
    Case("gelu_tanh", lambda x: mbf.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"),
         lambda: randn(5, 4)),
    Case("silu", mbf.silu, F.silu, lambda: randn(5, 4)),
    Case("hardtanh", mbf.hardtanh, F.hardtanh, lambda: (away_from(2 * randn(5, 4), -1, 1), -1.0, 1.0),
         bit_for_bit=True),
    Case("relu6", mbf.relu6, F.relu6, lambda: away_from(4 * randn(5, 4), 0, 6)),
    Case("hardtanh_output_saved", lambda x, a, b: mbf.HardtanhOutputSavedFunction.apply(x, a, b), F.hardtanh,
         lambda: (away_from(2 * randn(5, 4), -1, 1), -1.0, 1.0)),
    Case("hardtanh_inplace", hardtanh_inplace, F.hardtanh, lambda: (away_from(4 * randn(5, 4), 0, 6), 0.0, 6.0),
         skip=("batched_forward_ad",)),  # as relu_inplace
    Case("softmax", mbf.softmax, F.softmax, lambda: (randn(5, 4), -1), bit_for_bit=True),
    Case("softmax_dim_0", mbf.softmax, F.softmax, lambda: (randn(5, 4), 0)),
    Case("log_softmax", mbf.log_softmax, F.log_softmax, lambda: (randn(5, 4), 1)),
    Case("layer_norm", mbf.layer_norm, F.layer_norm, lambda: layer_norm_inputs(5, 4)),
    Case("layer_norm_no_affine", mbf.layer_norm, F.layer_norm, lambda: layer_norm_inputs(5, 4, affine=False)),
    Case("layer_norm_2d", mbf.layer_norm, F.layer_norm, lambda: layer_norm_inputs(5, 3, 4, normalized_dims=2)),
    # over the whole input: no batch dimensions (δγ was the buffer the backward went on to overwrite)
    Case("layer_norm_whole_input", mbf.layer_norm, F.layer_norm, lambda: layer_norm_inputs(2, 3, normalized_dims=2)),
    Case("group_norm", mbf.group_norm, F.group_norm, lambda: (randn(3, 4, 5), 2, randn(4), randn(4)),
         layouts=NO_LEADING_DIMS),
    Case("group_norm_nchw_no_affine", mbf.group_norm, F.group_norm, lambda: (randn(2, 6, 3, 2), 3),
         layouts=NO_LEADING_DIMS),
    Case("rms_norm", mbf.rms_norm, F.rms_norm, lambda: (randn(5, 4), (4,), randn(4), 1e-5)),
    Case("attention", mbf.scaled_dot_product_attention, torch_attention, attention_inputs),
    Case("attention_causal", lambda q, k, v: mbf.scaled_dot_product_attention(q, k, v, is_causal=True),
         lambda q, k, v: torch_attention(q, k, v, is_causal=True), attention_inputs),
    Case("attention_keys_values_differ", lambda q, k, v: mbf.scaled_dot_product_attention(q, k, v, scale=0.3),
         lambda q, k, v: torch_attention(q, k, v, scale=0.3), lambda: attention_inputs(5, 2)),
    Case("attention_bool_mask", mbf.scaled_dot_product_attention, torch_attention, lambda: attention_with_mask("bool")),
    Case("attention_float_mask", mbf.scaled_dot_product_attention, torch_attention,
         lambda: attention_with_mask("float")),
    Case("attention_weights", lambda q, k, m: mbf.attention_weights(q, k, m), torch_attention_weights,
         attention_weights_inputs),
    Case("embedding", mbf.embedding, F.embedding, embedding_inputs),
    Case("cross_entropy_sequence_ignore_smoothing",
         lambda x, t: mbf.cross_entropy(x, t, ignore_index=1, label_smoothing=0.1),
         lambda x, t: F.cross_entropy(x, t, ignore_index=1, label_smoothing=0.1), sequence_logits_and_indices,
         layouts=NO_LEADING_DIMS),
    Case("cross_entropy_none", lambda x, t: mbf.cross_entropy(x, t, reduction="none"),
         lambda x, t: F.cross_entropy(x, t, reduction="none"), sequence_logits_and_indices, layouts=NO_LEADING_DIMS),
    Case("cross_entropy_sum_probabilities", lambda x, t: mbf.cross_entropy(x, t, reduction="sum", label_smoothing=0.2),
         lambda x, t: F.cross_entropy(x, t, reduction="sum", label_smoothing=0.2), logits_and_probabilities,
         layouts=NO_LEADING_DIMS),
    Case("matmul", mbf.matmul, torch.matmul, lambda: (randn(2, 3, 4), randn(2, 4, 5)), bit_for_bit=True),
    Case("matmul_broadcast", mbf.matmul, torch.matmul, lambda: (randn(2, 1, 3, 4), randn(3, 4, 2))),
    # padding_idx: the padding row's gradient is 0 by definition, not the derivative (1): finite
    # differences and forward mode (torch's own jacfwd included) see the true derivative.
    Case("embedding_padding_idx", lambda i, w: mbf.embedding(i, w, padding_idx=1),
         lambda i, w: F.embedding(i, w, padding_idx=1), embedding_inputs, skip=("gradcheck", "batched_grad", "jacfwd")),
    # Tensor arithmetic (manualbp/layers/elementwise.py, reductions.py): broadcast operands get δ summed back.
    Case("mul", mbf.mul, torch.mul, lambda: (randn(5, 4), randn(5, 4)), bit_for_bit=True),
    Case("mul_broadcast", mbf.mul, torch.mul, lambda: (randn(5, 4), randn(4)), layouts=NO_LEADING_DIMS),
    Case("mul_number", mbf.mul, torch.mul, lambda: (randn(5, 4), 0.5), bit_for_bit=True),
    Case("div", mbf.div, torch.div, lambda: (randn(5, 4), randn(5, 1, away_from_zero=True)), layouts=NO_LEADING_DIMS),
    Case("div_floor", lambda a, b: mbf.div(a, b, rounding_mode="floor"),
         lambda a, b: torch.div(a, b, rounding_mode="floor"), lambda: (randn(5, 4), randn(5, 4, away_from_zero=True)),
         bit_for_bit=True),
    Case("div_number", mbf.div, torch.div, lambda: (randn(5, 4), 3.0), bit_for_bit=True),
    Case("reciprocal", mbf.reciprocal, torch.reciprocal, lambda: randn(5, 4, away_from_zero=True), bit_for_bit=True),
    Case("add_alpha", lambda a, b: mbf.add(a, b, alpha=0.5), lambda a, b: torch.add(a, b, alpha=0.5),
         lambda: (randn(5, 4), randn(5, 4)), bit_for_bit=True),
    Case("sub_broadcast", mbf.sub, torch.sub, lambda: (randn(5, 4), randn(1, 4)), layouts=NO_LEADING_DIMS),
    Case("rsub_number", lambda a: mbf.rsub(a, 1), lambda a: 1 - a, lambda: randn(5, 4), bit_for_bit=True),
    Case("neg", mbf.neg, torch.neg, lambda: randn(5, 4), bit_for_bit=True),
    Case("pow_number", mbf.pow, torch.pow, lambda: (randn(5, 4), 3), bit_for_bit=True),
    Case("pow_of_a_number", lambda a: mbf.pow(2.0, a), lambda a: torch.pow(2.0, a), lambda: randn(5, 4),
         bit_for_bit=True),
    Case("pow_tensors", mbf.pow, torch.pow, lambda: (randn(5, 4).abs() + 0.5, randn(4)), layouts=NO_LEADING_DIMS),
    Case("sqrt", mbf.sqrt, torch.sqrt, lambda: randn(5, 4).abs() + 0.5, bit_for_bit=True),
    Case("rsqrt", mbf.rsqrt, torch.rsqrt, lambda: randn(5, 4).abs() + 0.5, bit_for_bit=True),
    Case("exp", mbf.exp, torch.exp, lambda: randn(5, 4), bit_for_bit=True),
    Case("log", mbf.log, torch.log, lambda: randn(5, 4).abs() + 0.5, bit_for_bit=True),
    Case("abs", mbf.abs, torch.abs, lambda: randn(5, 4, away_from_zero=True), bit_for_bit=True),
    Case("clamp_numbers", mbf.clamp, torch.clamp, lambda: (away_from(randn(5, 4), -0.5, 0.5), -0.5, 0.5),
         bit_for_bit=True),
    Case("clamp_tensors", mbf.clamp, torch.clamp,
         lambda: (randn(5, 4), away_from(randn(5, 4), -1) - 1, away_from(randn(5, 4), 1) + 1)),
    Case("sum", mbf.sum, torch.sum, lambda: randn(5, 4), bit_for_bit=True),
    Case("sum_dim_keepdim", lambda a: mbf.sum(a, -1, keepdim=True), lambda a: torch.sum(a, -1, keepdim=True),
         lambda: randn(5, 4), bit_for_bit=True),
    Case("mean_dims", lambda a: mbf.mean(a, (0, 1)), lambda a: torch.mean(a, (0, 1)), lambda: randn(5, 4, 3),
         bit_for_bit=True),
    Case("var_unbiased", lambda a: mbf.var(a, -1), lambda a: torch.var(a, -1), lambda: randn(5, 4)),
    Case("var_correction_0_keepdim", lambda a: mbf.var(a, 0, keepdim=True, correction=0),
         lambda a: torch.var(a, 0, keepdim=True, correction=0), lambda: randn(5, 4)),
    Case("std", lambda a: mbf.std(a, (0, 1), False), lambda a: torch.std(a, (0, 1), False), lambda: randn(5, 4, 3)),
    Case("amax", lambda a: mbf.amax(a, -1), lambda a: torch.amax(a, -1), lambda: randn(5, 4), bit_for_bit=True),
    Case("amin_ties", lambda a: mbf.amin(a.round(), (0, 1)), lambda a: torch.amin(a.round(), (0, 1)),
         lambda: 2 * randn(5, 4), skip=("gradcheck", "batched_grad", "jacfwd", "forward_ad", "batched_forward_ad",
                                       "gradgradcheck", "batched_gradgrad", "fwd_over_rev")),
    Case("maximum_broadcast", mbf.maximum, torch.maximum, lambda: (randn(5, 4), randn(4)), layouts=NO_LEADING_DIMS),
    Case("addmm", mbf.addmm, torch.addmm, lambda: (randn(4), randn(3, 5), randn(5, 4)), layouts=NO_LEADING_DIMS,
         bit_for_bit=True),
    Case("baddbmm_beta_alpha", lambda c, a, b: mbf.baddbmm(c, a, b, beta=0.5, alpha=2.0),
         lambda c, a, b: torch.baddbmm(c, a, b, beta=0.5, alpha=2.0),
         lambda: (randn(2, 3, 4), randn(2, 3, 5), randn(2, 5, 4)), layouts=NO_LEADING_DIMS),
    Case("einsum_attention_scores", lambda q, k: mbf.einsum("bhld,bhsd->bhls", q, k),
         lambda q, k: torch.einsum("bhld,bhsd->bhls", q, k), lambda: (randn(2, 2, 3, 4), randn(2, 2, 5, 4)),
         layouts=NO_LEADING_DIMS),
    Case("einsum_three_operands_summed_letter", lambda a, b, c: mbf.einsum("abc,cd,de->ae", a, b, c),
         lambda a, b, c: torch.einsum("abc,cd,de->ae", a, b, c), lambda: (randn(2, 3, 4), randn(4, 5), randn(5, 2)),
         layouts=NO_LEADING_DIMS),
    Case("normalize", lambda x: mbf.normalize(x, dim=-1), lambda x: F.normalize(x, dim=-1), lambda: randn(5, 4)),
    Case("interpolate_bilinear", lambda x: mbf.interpolate(x, scale_factor=2, mode="bilinear"),
         lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), lambda: randn(2, 3, 4, 5), layouts=IMAGE_LAYOUTS),
    Case("interpolate_nearest_size", lambda x: mbf.interpolate(x, size=(7, 3)),
         lambda x: F.interpolate(x, size=(7, 3)), lambda: randn(2, 3, 4, 5), layouts=IMAGE_LAYOUTS),
    Case("hardswish", mbf.hardswish, F.hardswish, lambda: away_from(4 * randn(5, 4), -3, 3), bit_for_bit=True),
    # PyTorch's hardsigmoid has no double backward to compare with (manualbp's has: gradgradcheck)
    Case("hardsigmoid", mbf.hardsigmoid, F.hardsigmoid, lambda: away_from(4 * randn(5, 4), -3, 3), bit_for_bit=True,
         skip=("second_order",)),
    Case("softplus", mbf.softplus, F.softplus, lambda: randn(5, 4)),
    Case("softplus_beta_threshold", lambda a: mbf.softplus(a, 2.0, 1.0), lambda a: F.softplus(a, 2.0, 1.0),
         lambda: away_from(randn(5, 4), 0.5)),
    Case("mish", mbf.mish, F.mish, lambda: randn(5, 4)),
    Case("max_dim", lambda a: mbf.max(a, 1).values, lambda a: torch.max(a, 1).values, lambda: randn(5, 4),
         bit_for_bit=True),
]


# The cases that take 10-18 s (every check in float64 on a conv with groups, on attention with a mask):
# marked slow, so that `-m "not slow"` stays quick and `-n auto` starts them first
SLOW_CASES = {"conv2d_groups", "attention_bool_mask", "attention_float_mask"}


@pytest.mark.parametrize(
    "case", [pytest.param(case, marks=pytest.mark.slow) if case.name in SLOW_CASES else case for case in CASES],
    ids=lambda case: case.name,
)
def test_matches_torch_in_every_check(case):
    check_function(case.function, case.reference, case.inputs, layouts=case.layouts, skip=case.skip, **EXACT)


@pytest.mark.parametrize("case", [case for case in CASES if case.bit_for_bit], ids=lambda case: case.name)
def test_agrees_with_torch_bit_for_bit(case):
    check_function(case.function, case.reference, case.inputs, layouts=case.layouts, skip=NOT_BIT_FOR_BIT,
                   **BIT_FOR_BIT)


def _manualbp_functions(base=LayerFunction):
    for function in base.__subclasses__():
        if function.__module__.startswith("manualbp."):  # not the planted ones of other test files
            yield function
        yield from _manualbp_functions(function)


def test_every_manualbp_function_has_a_case():
    checked = set()
    for case in CASES:
        arguments = case.inputs()
        arguments = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in (arguments if isinstance(arguments, tuple) else (arguments,))]
        checked.add(type(case.function(*arguments).grad_fn).__name__.removesuffix("Backward"))  # TanhFunctionBackward
    missing = sorted({function.__name__ for function in _manualbp_functions()} - checked)
    assert not missing, f"no case in tests/test_gradients.py applies {missing}: add a line to CASES"


# ----------------------------------------------------------------------------------------------
# Work is skipped for inputs that need no gradient
# ----------------------------------------------------------------------------------------------


class CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("function", [mbf.linear, mbf.linear_relu], ids=["linear", "linear_relu"])
@pytest.mark.parametrize(
    "requires_grad, expected_matmuls",
    [((True, True, True), 2), ((False, True, True), 1), ((True, False, False), 1), ((False, False, True), 0)],
)
def test_linear_backward_computes_only_what_is_needed(function, requires_grad, expected_matmuls):
    torch.manual_seed(0)
    inputs = linear_inputs(away_from_kink=True)
    inputs = [t.requires_grad_(flag) for t, flag in zip(inputs, requires_grad, strict=True)]
    output = function(*inputs)
    with CountMatmuls() as counter:
        output.sum().backward()
    assert counter.count == expected_matmuls
    for tensor, flag in zip(inputs, requires_grad, strict=True):
        assert (tensor.grad is not None) == flag


def test_linear_keeps_its_input_only_when_the_weight_needs_a_gradient():
    x = torch.randn(8, 4, dtype=DTYPE, requires_grad=True)
    frozen = torch.randn(3, 4, dtype=DTYPE)
    output = mbf.linear(x, frozen)
    assert output.grad_fn.saved_tensors[0] is None  # δX = δZ W needs W, not X
    trained = frozen.clone().requires_grad_()
    assert mbf.linear(x, trained).grad_fn.saved_tensors[0] is not None


# ----------------------------------------------------------------------------------------------
# The fast variants chosen by a Function agree with the formula they speed up
# ----------------------------------------------------------------------------------------------


def test_the_fast_tanh_gelu_backward_equals_the_readable_formula():
    from manualbp.layers.activations import _tanh_gelu_backward_in_buffers, gelu_backward

    x = torch.linspace(-8, 8, 4001, dtype=DTYPE)
    grad = randn(4001)
    with torch.enable_grad():  # the readable formula: owns_buffers is False while autograd records
        readable = gelu_backward(grad, x, "tanh")
    # atol: far in the left tail the tanh form rounds ½(1 + t) to 0 where σ(2u) keeps the tiny true
    # value (|GELU'| < 1e-14 there; the derivative's largest values are ~1.1)
    torch.testing.assert_close(_tanh_gelu_backward_in_buffers(grad, x), readable, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("normalized_dims", [1, 2])
def test_the_fast_layer_norm_forward_and_backward_equal_the_readable_formulas(normalized_dims, affine):
    """The Function's forward in one buffer (returning μ and 1/σ) and its backward into buffers of
    its own, with those statistics or recomputing them, against the formulas as written (recorded)."""
    from manualbp.layers.normalization import layer_norm_backward, layer_norm_forward, layer_norm_forward_fast

    x, grad = randn(3, 6, 5) * 4 + 7, randn(3, 6, 5)
    shape = x.shape[-normalized_dims:]
    weight, bias = (randn(*shape), randn(*shape)) if affine else (None, None)
    with torch.no_grad():
        output, mean, inverse_std = layer_norm_forward_fast(x, normalized_dims, weight, bias, 1e-5)
        with_statistics = layer_norm_backward(grad, x, normalized_dims, weight, 1e-5, statistics=(mean, inverse_std))
        recomputed = layer_norm_backward(grad, x, normalized_dims, weight, 1e-5)
    dims = tuple(range(3 - normalized_dims, 3))
    torch.testing.assert_close(mean, x.mean(dims, keepdim=True), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(inverse_std, 1 / (x.var(dims, correction=0, keepdim=True) + 1e-5).sqrt(),
                               rtol=1e-13, atol=1e-15)
    with torch.enable_grad():
        torch.testing.assert_close(output, layer_norm_forward(x, normalized_dims, weight, bias, 1e-5),
                                   rtol=1e-13, atol=1e-15)
        readable = layer_norm_backward(grad, x, normalized_dims, weight, 1e-5)
    for fast in (with_statistics, recomputed):
        for ours, theirs in zip(fast, readable, strict=True):
            assert (ours is None) == (theirs is None)
            if ours is not None:
                torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-14)


def test_the_fast_tanh_backward_equals_the_formula_to_the_bit():
    from manualbp.layers.activations import tanh_backward, tanh_backward_fast

    output, grad = torch.tanh(randn(7, 5)), randn(7, 5)
    assert torch.equal(tanh_backward_fast(grad, output), tanh_backward(grad, output))


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
def test_the_fast_training_batch_norm_backward_equals_the_formula(affine):
    from manualbp.layers.normalization import (
        batch_norm_backward,
        batch_norm_statistics,
        batch_norm_training_backward_fast,
    )

    x, grad = randn(4, 3, 5, 5), randn(4, 3, 5, 5)
    weight = randn(3) if affine else None
    mean, variance = batch_norm_statistics(x)
    readable = batch_norm_backward(grad, x, mean, variance, weight, 1e-5, True)
    for ours, theirs in zip(batch_norm_training_backward_fast(grad, x, weight, 1e-5), readable, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
def test_the_fast_evaluation_batch_norm_backward_equals_the_formula(affine):
    from manualbp.layers.normalization import batch_norm_backward, batch_norm_eval_backward_fast

    x, grad = randn(4, 3, 5, 5), randn(4, 3, 5, 5)
    mean, variance = randn(3), randn(3).abs() + 0.5
    weight = randn(3) if affine else None
    for needs in ((True, True, True), (False, True, False), (True, False, True)):
        readable = batch_norm_backward(grad, x, mean, variance, weight, 1e-5, False, needs)
        fast = batch_norm_eval_backward_fast(grad, x, mean, variance, weight, 1e-5, needs)
        for ours, theirs in zip(fast, readable, strict=True):
            assert (ours is None) == (theirs is None)
            if ours is not None:
                torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


# ResNet-18's batch-norm shapes (small and large images: the float32 forms lay per-channel work out
# differently for each), an (N, C) and an (N, C, L) input
FLOAT32_BATCH_NORM_SHAPES = [(6, 16, 8, 8), (6, 32, 2, 2), (4, 8, 3, 5), (5, 3), (4, 3, 7)]


def assert_the_asked_for_gradients_close(fast, formula, needs, tolerance):
    """Each gradient ``needs`` asks for equals the float64 formula's; the others are None."""
    for ours, theirs, needed in zip(fast, formula, needs, strict=True):
        assert (ours is None) == (not needed)
        if needed:
            torch.testing.assert_close(ours.double(), theirs, **tolerance)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("shape", FLOAT32_BATCH_NORM_SHAPES, ids=str)
def test_the_float32_training_batch_norm_forms_equal_the_formula_and_torch(shape, affine):
    """The float32 forward and training backward against the formula functions (in float64, on
    the same values) and against torch's gradients, within float32 rounding; an offset mean (x
    around 5, spread 3) so that a form subtracting large terms would show."""
    from manualbp.layers.normalization import (
        batch_norm_backward,
        batch_norm_forward,
        batch_norm_statistics,
        batch_norm_training_backward_fast32,
        batch_norm_training_forward_fast,
    )

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator) * 3 + 5
    grad = torch.randn(shape, generator=generator)
    weight, bias = (torch.randn(shape[1], generator=generator) for _ in range(2)) if affine else (None, None)
    output, mean, variance = batch_norm_training_forward_fast(x, weight, bias, 1e-5)
    as64 = [None if t is None else t.double() for t in (x, grad, weight, bias)]
    mean64, variance64 = batch_norm_statistics(as64[0])
    tolerance = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(mean.double(), mean64, **tolerance)
    torch.testing.assert_close(variance.double(), variance64, **tolerance)
    torch.testing.assert_close(output.double(), batch_norm_forward(as64[0], mean64, variance64, as64[2], as64[3], 1e-5),
                               **tolerance)
    formula = batch_norm_backward(as64[1], as64[0], mean64, variance64, as64[2], 1e-5, True)
    for needs in ((True, True, True), (True, False, False), (False, True, True)):
        fast = batch_norm_training_backward_fast32(grad, x, mean, variance, weight, 1e-5, needs)
        assert_the_asked_for_gradients_close(fast, formula, needs, tolerance)
    leaves = [None if t is None else t.clone().requires_grad_() for t in (x, weight, bias)]
    expected = F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], True)
    torch.testing.assert_close(output, expected, **tolerance)
    expected_grads = torch.autograd.grad(expected, [t for t in leaves if t is not None], grad)
    needs = (True, affine, affine)
    fast = batch_norm_training_backward_fast32(grad, x, mean, variance, weight, 1e-5, needs)
    fast = [t for t in fast if t is not None]
    for ours, theirs in zip(fast, expected_grads, strict=True):
        torch.testing.assert_close(ours, theirs, **tolerance)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("shape", FLOAT32_BATCH_NORM_SHAPES, ids=str)
def test_the_float32_evaluation_batch_norm_backward_equals_the_formula_and_torch(shape, affine):
    from manualbp.layers.normalization import batch_norm_backward, batch_norm_eval_backward_fast32

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator) * 3 + 5
    grad = torch.randn(shape, generator=generator)
    mean, variance = torch.randn(shape[1], generator=generator) + 5, torch.rand(shape[1], generator=generator) + 0.5
    weight = torch.randn(shape[1], generator=generator) if affine else None
    tolerance = {"rtol": 1e-5, "atol": 1e-5}
    formula = batch_norm_backward(grad.double(), x.double(), mean.double(), variance.double(),
                                  None if weight is None else weight.double(), 1e-5, False)
    for needs in ((True, True, True), (False, True, False), (True, False, True)):
        fast = batch_norm_eval_backward_fast32(grad, x, mean, variance, weight, 1e-5, needs)
        assert_the_asked_for_gradients_close(fast, formula, needs, tolerance)
    leaves = [x.clone().requires_grad_()] + ([weight.clone().requires_grad_()] if affine else [])
    expected = F.batch_norm(leaves[0], mean, variance, leaves[1] if affine else None, None, False)
    expected_grads = torch.autograd.grad(expected, leaves, grad)
    fast = batch_norm_eval_backward_fast32(grad, x, mean, variance, weight, 1e-5, (True, affine, False))
    for ours, theirs in zip(fast[: len(leaves)], expected_grads, strict=True):
        torch.testing.assert_close(ours, theirs, **tolerance)


def test_the_float32_batch_norm_functions_run_the_float32_forms(monkeypatch):
    from manualbp.layers import normalization

    calls = []
    for name in ("batch_norm_training_forward_fast", "batch_norm_training_backward_fast32",
                 "batch_norm_eval_backward_fast32"):
        original = getattr(normalization, name)
        monkeypatch.setattr(normalization, name,
                            lambda *args, original=original, name=name: calls.append(name) or original(*args))
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    weight, bias = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    grad = torch.randn(4, 3, 5, 5)  # contiguous (a .sum()'s gradient is expanded: the other forms take it)
    mbf.batch_norm(x, None, None, weight, bias, True).backward(grad)
    mbf.batch_norm(x, torch.zeros(3), torch.ones(3), weight, bias).backward(grad)
    assert calls == ["batch_norm_training_forward_fast", "batch_norm_training_backward_fast32",
                     "batch_norm_eval_backward_fast32"]


def test_the_fast_global_average_pool_backward_equals_the_formula():
    from manualbp.layers.pooling import (
        adaptive_avg_pool2d_matrices,
        average_pool_backward,
        global_average_pool_backward_fast,
    )

    grad = randn(3, 4, 1, 1)
    rows, columns = adaptive_avg_pool2d_matrices((3, 4, 5, 7), grad.shape, grad)
    torch.testing.assert_close(global_average_pool_backward_fast(grad, (3, 4, 5, 7)),
                               average_pool_backward(grad, rows, columns), rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("classes", [1, 2, 10, 16])
def test_softmax_of_short_rows_in_separate_ops_equals_torchs_kernel(classes):
    """float32 rows of ≤ 16 values (a 10-class classifier's logits) run as the formula's own ops in
    the losses, faster on a CPU than PyTorch's kernels: the float64 kernel's values to float32's
    precision, as the float32 kernel's are, special values included (a row of −inf, an inf, a NaN)."""
    from manualbp.layers.softmax import log_softmax_forward, softmax_forward

    exact = torch.randn(40, classes, dtype=DTYPE, generator=torch.Generator().manual_seed(classes)) * 30
    exact[0, 0], exact[1], exact[2, -1], exact[3, 0] = float("-inf"), float("-inf"), float("nan"), float("inf")
    logits = exact.float()
    with torch.no_grad():  # (recorded by autograd, the kernel runs: the ops write over their buffers)
        for ours, kernel, reference in (
            (softmax_forward(logits, -1, short_rows_in_ops=True), torch.softmax(logits, -1), torch.softmax(exact, -1)),
            (log_softmax_forward(logits, 1, short_rows_in_ops=True), torch.log_softmax(logits, 1),
             torch.log_softmax(exact, 1)),
        ):
            torch.testing.assert_close(ours, kernel, equal_nan=True, rtol=3e-6, atol=1e-6)
            ours_error = (ours.double() - reference).abs().nan_to_num(posinf=0).max()
            kernel_error = (kernel.double() - reference).abs().nan_to_num(posinf=0).max()
            assert ours_error <= 4 * kernel_error + 1e-7, (ours_error, kernel_error)


def test_softmax_keeps_torchs_kernel_unasked_for_long_rows_other_dimensions_and_while_recorded():
    """The softmax layer's values stay the kernel's to the bit (its bit-for-bit case above); so do
    the losses' in float64, and where the rows are long, along another dimension, or recorded for
    double backward."""
    from manualbp.layers.softmax import log_softmax_forward, softmax_forward

    short, long_rows, columns = randn(5, 10).float(), randn(5, 17).float(), randn(10, 5).float()
    with torch.no_grad():
        assert torch.equal(softmax_forward(short, -1), torch.softmax(short, -1))
        assert torch.equal(softmax_forward(short.double(), -1, short_rows_in_ops=True),
                           torch.softmax(short.double(), -1))  # float64: the kernel's values to the bit
        assert torch.equal(softmax_forward(long_rows, -1, short_rows_in_ops=True), torch.softmax(long_rows, -1))
        assert torch.equal(log_softmax_forward(columns, 0, short_rows_in_ops=True), torch.log_softmax(columns, 0))
    with torch.no_grad(), mock.patch.object(torch, "softmax", side_effect=AssertionError("the kernel ran")):
        softmax_forward(short, -1, short_rows_in_ops=True)  # short rows asked for: the separate ops
    recorded = softmax_forward(short.requires_grad_(), -1, short_rows_in_ops=True)
    assert torch.equal(recorded, torch.softmax(short, -1)) and recorded.grad_fn is not None
