"""The conv-net layers (conv2d, pooling, batch_norm, dropout, leaky_relu) against PyTorch's own ops.

In float64, for every case (stride / padding / dilation / groups / ceil_mode / count_include_pad /
bias=None / batch size 1 / unbatched / non-contiguous / channels_last): values and gradients equal
to the torch op's for every subset of inputs requiring grad, ``gradcheck`` (forward-mode AD and
batched gradients too), ``gradgradcheck``, ``torch.func`` vmap / jacrev / jacfwd. Then what a case
table cannot say: max-pool ties, running statistics, dropout's mask, error messages, saved memory,
the kernels the backward uses, torch.compile, and planted wrong backward passes being caught.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import Function, gradcheck, gradgradcheck
from torch.autograd.gradcheck import GradcheckError
from torch.utils._python_dispatch import TorchDispatchMode

from manualbp.layers.activations import leaky_relu
from manualbp.layers.conv import conv1d, conv2d
from manualbp.layers.dropout import dropout
from manualbp.layers.normalization import batch_norm, group_norm
from manualbp.layers.pooling import MaxPool2dFunction, adaptive_avg_pool2d, avg_pool2d, max_pool2d

# torch's own conv2d warns that padding="same" with an even kernel copies the input (so do we).
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

DTYPE = torch.float64
# float64 sums taken in a different order by a different kernel (a transposed convolution, a
# scatter, a matmul) agree to a few units in the last place; a wrong formula is off by far more.
EXACT = {"rtol": 1e-12, "atol": 1e-13}


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------


def _tensor(generator, *shape, layout="contiguous", away_from_zero=False):
    """A float64 tensor of ``shape``; "non_contiguous": every other column of a wider one;
    "channels_last": a 4-d tensor in NHWC memory."""
    if layout == "non_contiguous":
        tensor = torch.randn(*shape[:-1], 2 * shape[-1], generator=generator, dtype=DTYPE)[..., ::2]
        assert not tensor.is_contiguous()
    else:
        tensor = torch.randn(*shape, generator=generator, dtype=DTYPE)
        if layout == "channels_last":
            tensor = tensor.contiguous(memory_format=torch.channels_last)
            assert not tensor.is_contiguous()
    if away_from_zero:  # keep finite differences off a kink at 0
        tensor = tensor + 0.2 * torch.where(tensor >= 0, 1.0, -1.0).to(DTYPE)
    return tensor


@dataclass
class Case:
    name: str
    function: Callable  # manualbp, over tensors only
    reference: Callable  # PyTorch's own op
    make_inputs: Callable  # generator -> tuple of tensors
    smooth: bool = True  # finite differences are valid (no ties, no kinks in reach)


def _conv_case(name, x_shape, w_shape, bias=True, layout="contiguous", **kwargs):
    def make(generator):
        x = _tensor(generator, *x_shape, layout=layout)
        w = _tensor(generator, *w_shape, layout="channels_last" if layout == "channels_last" else "contiguous")
        return (x, w, _tensor(generator, w_shape[0])) if bias else (x, w)

    return Case(
        name,
        lambda x, w, b=None: conv2d(x, w, b, **kwargs),
        lambda x, w, b=None: TF.conv2d(x, w, b, **kwargs),
        make,
    )


def _pool_case(name, ours, theirs, x_shape, layout="contiguous", **kwargs):
    return Case(
        name,
        lambda x: ours(x, **kwargs),
        lambda x: theirs(x, **kwargs),
        lambda generator: (_tensor(generator, *x_shape, layout=layout),),
    )


def _batch_norm_case(name, x_shape, training, affine=True, layout="contiguous"):
    channels = x_shape[1]
    statistics = torch.Generator().manual_seed(99)
    running_mean = torch.randn(channels, generator=statistics, dtype=DTYPE)
    running_var = torch.rand(channels, generator=statistics, dtype=DTYPE) + 0.5
    # In training the running statistics do not change the result; None keeps vmap and repeated
    # calls free of in-place updates (they have their own tests below).
    stats = (None, None) if training else (running_mean, running_var)

    def make(generator):
        x = _tensor(generator, *x_shape, layout=layout)
        return (x, _tensor(generator, channels), _tensor(generator, channels)) if affine else (x,)

    return Case(
        name,
        lambda x, w=None, b=None: batch_norm(x, *stats, w, b, training=training),
        lambda x, w=None, b=None: TF.batch_norm(x, *stats, w, b, training=training),
        make,
    )


def _leaky_case(name, slope, layout="contiguous"):
    return Case(
        name,
        lambda x: leaky_relu(x, slope),
        lambda x: TF.leaky_relu(x, slope),
        lambda generator: (_tensor(generator, 3, 2, 4, 5, layout=layout, away_from_zero=True),),
    )


CASES = [
    _conv_case("conv", (2, 3, 7, 6), (4, 3, 3, 3)),
    _conv_case("conv_no_bias", (2, 3, 7, 6), (4, 3, 3, 3), bias=False),
    _conv_case("conv_stride_padding", (2, 3, 8, 7), (4, 3, 3, 3), stride=2, padding=1),
    _conv_case("conv_rows_dropped_by_stride", (2, 2, 9, 8), (3, 2, 2, 3), stride=3),
    _conv_case("conv_asymmetric", (2, 2, 9, 8), (3, 2, 3, 2), stride=(2, 1), padding=(2, 0), dilation=(1, 2)),
    _conv_case("conv_dilation", (2, 2, 9, 9), (3, 2, 3, 3), dilation=2, padding=1),
    _conv_case("conv_groups", (2, 4, 6, 6), (6, 2, 3, 3), groups=2, stride=2, padding=1),
    _conv_case("conv_depthwise", (2, 3, 6, 5), (6, 1, 3, 3), groups=3),
    _conv_case("conv_depthwise_padded_dilated", (2, 4, 7, 6), (4, 1, 3, 3), groups=4, padding=(2, 1), dilation=(2, 1)),
    _conv_case("conv_depthwise_strided", (2, 4, 7, 7), (4, 1, 5, 5), groups=4, stride=2, padding=2),
    _conv_case("conv_padding_same", (2, 3, 6, 7), (4, 3, 4, 3), padding="same", dilation=(1, 2)),
    _conv_case("conv_padding_valid", (2, 3, 6, 7), (4, 3, 3, 3), padding="valid"),
    _conv_case("conv_batch_size_1", (1, 3, 6, 6), (4, 3, 3, 3), padding=1),
    _conv_case("conv_unbatched", (3, 6, 6), (4, 3, 3, 3), padding=1),
    _conv_case("conv_non_contiguous", (2, 3, 6, 5), (4, 3, 3, 3), layout="non_contiguous", padding=1),
    _conv_case("conv_channels_last", (2, 3, 6, 5), (4, 3, 3, 3), layout="channels_last", stride=2, padding=1),
    _pool_case("max_pool", max_pool2d, TF.max_pool2d, (2, 3, 8, 6), kernel_size=2),
    _pool_case("max_pool_overlapping", max_pool2d, TF.max_pool2d, (2, 3, 7, 6), kernel_size=3, stride=1, padding=1),
    _pool_case("max_pool_ceil_dilation", max_pool2d, TF.max_pool2d, (2, 2, 9, 8),
               kernel_size=(3, 2), stride=2, padding=1, dilation=(2, 1), ceil_mode=True),
    _pool_case("max_pool_unbatched", max_pool2d, TF.max_pool2d, (3, 7, 7), kernel_size=3, stride=2),
    _pool_case("max_pool_non_contiguous", max_pool2d, TF.max_pool2d, (2, 3, 6, 6), "non_contiguous", kernel_size=2),
    _pool_case("max_pool_channels_last", max_pool2d, TF.max_pool2d, (2, 3, 6, 6), "channels_last", kernel_size=2),
    _pool_case("avg_pool", avg_pool2d, TF.avg_pool2d, (2, 3, 8, 6), kernel_size=2),
    _pool_case("avg_pool_padding", avg_pool2d, TF.avg_pool2d, (2, 3, 7, 6), kernel_size=3, stride=2, padding=1),
    _pool_case("avg_pool_padding_not_counted", avg_pool2d, TF.avg_pool2d, (2, 3, 7, 6),
               kernel_size=3, stride=2, padding=1, count_include_pad=False),
    _pool_case("avg_pool_ceil_mode", avg_pool2d, TF.avg_pool2d, (2, 2, 7, 8),
               kernel_size=(3, 2), stride=(2, 3), padding=(1, 0), ceil_mode=True),
    _pool_case("avg_pool_ceil_not_counted", avg_pool2d, TF.avg_pool2d, (2, 2, 7, 8),
               kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    _pool_case("avg_pool_divisor_override", avg_pool2d, TF.avg_pool2d, (2, 2, 7, 6),
               kernel_size=3, stride=2, padding=1, divisor_override=4),
    _pool_case("avg_pool_unbatched", avg_pool2d, TF.avg_pool2d, (3, 6, 6), kernel_size=2),
    _pool_case("avg_pool_channels_last", avg_pool2d, TF.avg_pool2d, (2, 3, 6, 6), "channels_last", kernel_size=2),
    _pool_case("adaptive_global", adaptive_avg_pool2d, TF.adaptive_avg_pool2d, (2, 3, 5, 4), output_size=1),
    _pool_case("adaptive_uneven", adaptive_avg_pool2d, TF.adaptive_avg_pool2d, (2, 3, 7, 5), output_size=(3, 2)),
    _pool_case("adaptive_keep_width", adaptive_avg_pool2d, TF.adaptive_avg_pool2d, (2, 3, 7, 5),
               output_size=(4, None)),
    _pool_case("adaptive_upsampling", adaptive_avg_pool2d, TF.adaptive_avg_pool2d, (3, 4, 3), output_size=(6, 5)),
    _pool_case("adaptive_channels_last", adaptive_avg_pool2d, TF.adaptive_avg_pool2d, (2, 3, 6, 6), "channels_last",
               output_size=(2, 3)),
    _batch_norm_case("batch_norm_train_nc", (6, 3), training=True),
    _batch_norm_case("batch_norm_train_nchw", (3, 2, 3, 4), training=True),
    _batch_norm_case("batch_norm_train_batch_size_1", (1, 2, 3, 4), training=True),
    _batch_norm_case("batch_norm_train_no_affine", (3, 2, 3, 4), training=True, affine=False),
    _batch_norm_case("batch_norm_train_channels_last", (3, 2, 3, 4), training=True, layout="channels_last"),
    _batch_norm_case("batch_norm_eval_nc", (5, 3), training=False),
    _batch_norm_case("batch_norm_eval_nchw", (3, 2, 3, 4), training=False),
    _batch_norm_case("batch_norm_eval_no_affine", (3, 2, 3, 4), training=False, affine=False),
    _leaky_case("leaky_relu", 0.01),
    _leaky_case("leaky_relu_steep", 0.3, layout="non_contiguous"),
    _leaky_case("leaky_relu_negative_slope", -0.5),
]
BY_NAME = {case.name: case for case in CASES}


def make_inputs(case: Case, seed: int = 0) -> tuple[torch.Tensor, ...]:
    return case.make_inputs(torch.Generator().manual_seed(seed))


def _with_requires_grad(inputs, indices):
    return tuple(tensor.detach().requires_grad_(i in indices) for i, tensor in enumerate(inputs))


def assert_matches_reference(function, reference, inputs, requires_grad=None, seed=0):
    """Values and the gradients of a random vector-Jacobian product equal the reference's."""
    indices = list(range(len(inputs))) if requires_grad is None else requires_grad
    ours, theirs = _with_requires_grad(inputs, indices), _with_requires_grad(inputs, indices)
    output, expected = function(*ours), reference(*theirs)
    torch.testing.assert_close(output, expected, **EXACT)
    grad_output = torch.randn(expected.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=DTYPE)
    grads = torch.autograd.grad(output, [ours[i] for i in indices], grad_output)
    expected_grads = torch.autograd.grad(expected, [theirs[i] for i in indices], grad_output)
    for index, grad, expected_grad in zip(indices, grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, **EXACT, msg=lambda m, index=index: f"input {index}: {m}")


# fast_mode: gradcheck compares uᵀJv for random u, v against finite differences instead of
# building the whole Jacobian column by column; a wrong entry still shows (see the planted wrong
# backward at the end), at a cost that does not grow with the number of inputs.


def assert_gradcheck(function, inputs, batched=True):
    """Backward and forward-mode AD agree with finite differences, also when batched."""
    inputs = _with_requires_grad(inputs, range(len(inputs)))
    assert gradcheck(
        function, inputs, check_forward_ad=True, check_batched_grad=batched, check_batched_forward_grad=batched,
        fast_mode=True,
    )


def assert_gradgradcheck(function, inputs, batched=True):
    """The backward itself is differentiated correctly (reverse-over-reverse and fwd-over-rev)."""
    inputs = _with_requires_grad(inputs, range(len(inputs)))
    assert gradgradcheck(function, inputs, check_fwd_over_rev=True, check_batched_grad=batched, fast_mode=True)


# ----------------------------------------------------------------------------------------------
# The suite
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_matches_torch_for_every_subset_of_inputs_requiring_grad(case):
    inputs = make_inputs(case)
    for size in range(len(inputs), 0, -1):
        for subset in itertools.combinations(range(len(inputs)), size):
            assert_matches_reference(case.function, case.reference, inputs, list(subset))


# Batched gradients (vmap over the backward) are checked once per kind of layer: they cost the
# most (conv's batching rules loop) and do not depend on stride, padding or layout.


# gradcheck, gradgradcheck, vmap and the Jacobians of every Function: tests/test_gradients.py (CASES,
# through manualbp.testing.check_function). Here: the layouts it does not make (channels_last, ...).


# ----------------------------------------------------------------------------------------------
# Max pooling: ties
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 9], ids=["3_channels", "9_channels_through_channels_last"])
@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1),
                                    dict(kernel_size=3, stride=2, ceil_mode=True)])
def test_max_pool_ties_go_where_torch_sends_them(kwargs, channels):
    # Few distinct values: most windows hold their max more than once, and overlapping windows
    # share argmaxes, whose δ must add up. 9 channels: the forward runs torch's channels-last kernel.
    x = torch.randint(0, 3, (2, channels, 7, 7), generator=torch.Generator().manual_seed(0)).to(DTYPE)
    assert_matches_reference(lambda t: max_pool2d(t, **kwargs), lambda t: TF.max_pool2d(t, **kwargs), (x,))
    ours, indices = max_pool2d(x, **kwargs, return_indices=True)
    theirs, expected_indices = TF.max_pool2d(x, **kwargs, return_indices=True)
    assert torch.equal(indices, expected_indices)
    assert ours.is_contiguous() and indices.is_contiguous()  # the layout torch's op gives


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_pool_through_channels_last_takes_nan_and_infinities_where_torch_does(dtype):
    x = torch.randint(-2, 3, (2, 8, 6, 6), generator=torch.Generator().manual_seed(0)).to(dtype)
    x[0, 0, 0, 0] = x[1, 2, 3, 3] = x[1, 2, 3, 2] = float("nan")
    x[1, 5] = float("-inf")
    ours, indices = max_pool2d(x, 2, return_indices=True)
    theirs, expected_indices = TF.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)


# ----------------------------------------------------------------------------------------------
# Batch norm: running statistics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 2)], ids=["NC", "NCHW"])
@pytest.mark.parametrize("momentum", [0.1, 0.7])
def test_batch_norm_running_statistics_follow_torch(shape, momentum):
    generator = torch.Generator().manual_seed(0)
    ours = [torch.randn(3, generator=generator, dtype=DTYPE), torch.rand(3, generator=generator, dtype=DTYPE) + 0.5]
    theirs = [tensor.clone() for tensor in ours]
    weight, bias = torch.randn(3, dtype=DTYPE), torch.randn(3, dtype=DTYPE)
    for step in range(3):  # training steps move the statistics; evaluation uses them, unchanged
        x = torch.randn(*shape, generator=generator, dtype=DTYPE) * (step + 1) + step
        output = batch_norm(x, *ours, weight, bias, training=True, momentum=momentum)
        expected = TF.batch_norm(x, *theirs, weight, bias, training=True, momentum=momentum)
        torch.testing.assert_close(output, expected, **EXACT)
        for statistic, expected_statistic in zip(ours, theirs, strict=True):
            torch.testing.assert_close(statistic, expected_statistic, rtol=1e-14, atol=0)
    before = [tensor.clone() for tensor in ours]
    x = torch.randn(*shape, generator=generator, dtype=DTYPE)
    torch.testing.assert_close(batch_norm(x, *ours, weight, bias), TF.batch_norm(x, *theirs, weight, bias), **EXACT)
    assert all(torch.equal(a, b) for a, b in zip(ours, before, strict=True))


def test_batch_norm_running_statistics_are_updated_in_place_without_autograd():
    running_mean, running_var = torch.zeros(3), torch.ones(3)
    x = torch.randn(6, 3, 4, 4, requires_grad=True)
    output = batch_norm(x, running_mean, running_var, training=True)
    assert running_mean.grad_fn is None and running_var.grad_fn is None
    assert not torch.equal(running_mean, torch.zeros(3))
    output.sum().backward()  # the update did not put the buffers into the graph


def test_batch_norm_float32_matches_torch_within_rounding():
    x = torch.randn(16, 4, 6, 6) * 3 + 1
    ours, theirs = [torch.zeros(4), torch.ones(4)], [torch.zeros(4), torch.ones(4)]
    weight = torch.randn(4, requires_grad=True)
    output = batch_norm(x, *ours, weight, None, training=True)
    expected = TF.batch_norm(x, *theirs, weight, None, training=True)
    torch.testing.assert_close(output, expected)
    for statistic, expected_statistic in zip(ours, theirs, strict=True):
        torch.testing.assert_close(statistic, expected_statistic)


# ----------------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------------


def _seeded(function, seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return function()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_drops_what_torch_drops_under_the_same_seed(p):
    x = torch.randn(64, 33, dtype=DTYPE)
    ours = _seeded(lambda: dropout(x, p), seed=5)
    assert torch.equal(ours, _seeded(lambda: TF.dropout(x, p), seed=5))
    assert torch.equal(ours, _seeded(lambda: dropout(x, p), seed=5))  # reproducible
    assert not torch.equal(ours, _seeded(lambda: dropout(x, p), seed=6))  # and random
    kept = ours != 0
    assert abs(kept.double().mean().item() - (1 - p)) < 0.05  # 2112 draws: within ~3 sigma
    torch.testing.assert_close(ours[kept], x[kept] * (1 / (1 - p)), rtol=0, atol=0)  # x·m, m = 1/(1 − p)


@pytest.mark.parametrize("p", [0.2, 0.75])
def test_dropout_gradient_is_the_mask_over_one_minus_p(p):
    x = torch.randn(40, 25, dtype=DTYPE, requires_grad=True)
    output = dropout(x, p)
    grad_output = torch.randn_like(output)
    (grad,) = torch.autograd.grad(output, x, grad_output)
    kept = (output != 0).to(DTYPE)  # read off the output (x has no zeros)
    torch.testing.assert_close(grad, kept * grad_output / (1 - p), rtol=0, atol=1e-15)
    assert 0 < kept.sum() < kept.numel()


def test_dropout_with_a_fixed_seed_passes_gradcheck_and_gradgradcheck():
    x = torch.randn(6, 5, dtype=DTYPE, requires_grad=True)
    function = lambda t: _seeded(lambda: dropout(t, 0.4), seed=1)  # noqa: E731 -- one mask for every call
    assert_gradcheck(function, (x,), batched=False)  # random draws refuse vmap, as torch's dropout does
    assert_gradgradcheck(function, (x,), batched=False)


def test_dropout_edge_cases_like_torch():
    x = torch.randn(5, 4, dtype=DTYPE, requires_grad=True)
    assert dropout(x, 0.0) is x and dropout(x, 0.5, training=False) is x  # torch returns the input too
    output = dropout(x, 1.0)
    assert torch.equal(output, TF.dropout(x, 1.0))
    (grad,) = torch.autograd.grad(output.sum(), x)
    assert torch.equal(grad, torch.zeros_like(x))


# ----------------------------------------------------------------------------------------------
# Clear errors for bad arguments
# ----------------------------------------------------------------------------------------------

_x = torch.randn(2, 3, 8, 8)
BAD_CALLS = [
    (lambda: conv2d(_x, torch.randn(4, 2, 3, 3)), ValueError, "expected 2 input channels"),
    (lambda: conv2d(_x, torch.randn(4, 3, 3)), ValueError, "weight of shape"),
    (lambda: conv2d(_x.flatten(1), torch.randn(4, 3, 3, 3)), ValueError, r"input of shape \(N, C, H, W\)"),
    (lambda: conv2d(_x, torch.randn(5, 1, 3, 3), groups=3), ValueError, "divisible by groups"),
    (lambda: conv2d(_x, torch.randn(4, 3, 9, 9)), ValueError, "kernel .* is larger than the padded input"),
    (lambda: conv2d(_x, torch.randn(4, 3, 3, 3), stride=0), ValueError, "stride ≥ 1"),
    (lambda: conv2d(_x, torch.randn(4, 3, 3, 3), stride=1.5), TypeError, "stride as an int or a pair"),
    (lambda: conv2d(_x, torch.randn(4, 3, 3, 3), padding="same", stride=2), ValueError, "needs stride 1"),
    (lambda: conv2d(_x, torch.randn(4, 3, 3, 3), padding="full"), ValueError, "'valid', 'same'"),
    (lambda: conv2d(_x, torch.randn(4, 3, 3, 3, dtype=DTYPE)), TypeError, "one dtype"),
    (lambda: conv2d(_x, torch.randn(4, 3, 3, 3), torch.randn(5)), ValueError, r"bias of shape \(4,\)"),
    (lambda: max_pool2d(_x, 2, padding=2), ValueError, "at most half the kernel"),
    (lambda: max_pool2d(_x[0, 0], 2), ValueError, r"\(N, C, H, W\) or \(C, H, W\)"),
    (lambda: avg_pool2d(_x, 2, divisor_override=0), ValueError, "divisor_override"),
    (lambda: adaptive_avg_pool2d(_x, (2, 0)), ValueError, "output_size ≥ 1"),
    (lambda: batch_norm(_x, torch.zeros(4), torch.ones(4)), ValueError, r"running_mean of shape \(3,\)"),
    (lambda: batch_norm(_x, None, None), ValueError, "evaluation mode"),
    (lambda: batch_norm(_x[:1, :, :1, :1], None, None, training=True), ValueError, "more than 1 value per channel"),
    (lambda: dropout(_x, 1.5), ValueError, "between 0 and 1"),
    (lambda: leaky_relu(torch.arange(3)), TypeError, "floating-point"),
    (lambda: conv1d(_x[:, :, 0], torch.randn(4, 2, 3)), ValueError, "conv1d .*expected 2 input channels"),
    (lambda: conv1d(_x[:, :, 0], torch.randn(4, 3, 3, 3)), ValueError, r"conv1d: expected a weight of shape"),
    (lambda: conv1d(_x, torch.randn(4, 3, 3)), ValueError, r"conv1d: expected an input of shape \(N, C, L\)"),
    (lambda: conv1d(_x[:, :, 0], torch.randn(4, 3, 3), stride=(1, 2)), TypeError, "stride as an int or a 1-tuple"),
    (lambda: group_norm(_x, 2), ValueError, "divisible by num_groups"),
    (lambda: group_norm(_x, 3, torch.ones(4)), ValueError, r"weight of shape \(3,\)"),
]


@pytest.mark.parametrize("call, error, message", BAD_CALLS, ids=[f"bad_{i}" for i in range(len(BAD_CALLS))])
def test_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ----------------------------------------------------------------------------------------------
# What the backward uses and keeps
# ----------------------------------------------------------------------------------------------


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_conv_backward_is_not_torchs_convolution_backward():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    output = conv2d(x, weight, torch.randn(4, requires_grad=True), stride=2, padding=1)
    with RecordOps() as recorder:
        output.sum().backward()
    assert "convolution_backward" not in recorder.ops
    assert "convolution" in recorder.ops  # the transposed / batch-summed convolutions of the formula
    # ...and the recorder does see torch's own backward:
    with RecordOps() as recorder:
        TF.conv2d(x, weight).sum().backward()
    assert "convolution_backward" in recorder.ops


def _saved_bytes(function, *inputs) -> int:
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function(*inputs)
    return sum(storages.values())


@pytest.mark.parametrize("ours, theirs", [
    (lambda x, w: max_pool2d(conv2d(x, w), 2), lambda x, w: TF.max_pool2d(TF.conv2d(x, w), 2)),
    (lambda x, w: avg_pool2d(leaky_relu(conv2d(x, w)), 2),
     lambda x, w: TF.avg_pool2d(TF.leaky_relu(TF.conv2d(x, w)), 2)),
    (lambda x, w: batch_norm(conv2d(x, w), None, None, training=True),
     lambda x, w: TF.batch_norm(TF.conv2d(x, w), None, None, training=True)),
], ids=["conv_max_pool", "conv_leaky_avg_pool", "conv_batch_norm"])
def test_saves_no_more_for_backward_than_torch(ours, theirs):
    x = torch.randn(8, 3, 12, 12)  # the data: needs no gradient, so the first conv keeps x for δW only
    weight = torch.randn(6, 3, 3, 3, requires_grad=True)
    assert _saved_bytes(ours, x, weight) <= _saved_bytes(theirs, x, weight)


def test_conv_keeps_its_input_only_when_the_weight_needs_a_gradient():
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    frozen = torch.randn(4, 3, 3, 3)
    assert conv2d(x, frozen).grad_fn.saved_tensors[0] is None  # δX needs W only
    assert conv2d(x, frozen.requires_grad_()).grad_fn.saved_tensors[0] is not None


# ----------------------------------------------------------------------------------------------
# The readable formula and the fast one (issue 24.5, 24.11)
# ----------------------------------------------------------------------------------------------

# (x shape, w shape, stride, padding, dilation, groups): every form of δW the fast path picks from.
BACKWARD_SHAPES = {
    "lenet_first": ((4, 1, 12, 12), (6, 1, 5, 5), (1, 1), (2, 2), (1, 1), 1),  # few channels: transposed form
    "resnet_like": ((2, 16, 8, 8), (32, 16, 3, 3), (1, 1), (1, 1), (1, 1), 1),  # correlation form
    "stride_dilation": ((2, 3, 9, 8), (4, 3, 3, 2), (2, 1), (2, 0), (1, 2), 1),
    "rows_dropped": ((2, 2, 9, 8), (3, 2, 2, 3), (3, 3), (0, 0), (1, 1), 1),
    "groups": ((2, 4, 6, 6), (6, 2, 3, 3), (2, 2), (1, 1), (1, 1), 2),
    # 1×1 at a stride: float32's δW in one product, δX scattered onto every stride-th pixel; else the patches
    "one_by_one": ((2, 8, 7, 7), (16, 8, 1, 1), (2, 2), (0, 0), (1, 1), 1),
    "one_by_one_uneven_stride": ((2, 8, 7, 8), (4, 8, 1, 1), (3, 2), (0, 0), (1, 1), 1),
    "one_by_one_stride_1": ((2, 8, 5, 5), (16, 8, 1, 1), (1, 1), (0, 0), (1, 1), 1),  # the patches, every dtype
    # the patches in one product (float32 at a stride with many channels, or on few positions)
    "strided_many_channels": ((2, 16, 9, 8), (4, 16, 3, 2), (2, 3), (1, 2), (2, 1), 1),
    "few_positions": ((2, 16, 4, 4), (32, 16, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    "few_positions_groups": ((2, 32, 2, 2), (8, 16, 3, 3), (1, 1), (1, 1), (1, 1), 2),
    "zero_batch": ((0, 3, 6, 6), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    # stride 1 on few positions (≤ 16) over a deep batch (> 64): float32's flipped-gradients form
    "flipped_grads": ((8, 16, 4, 4), (32, 16, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    "flipped_grads_uneven": ((5, 16, 5, 4), (24, 16, 3, 2), (1, 1), (1, 0), (1, 1), 1),
    # more images than one correlation takes at once: the correlation over 8, then the one left
    "correlation_in_parts": ((9, 16, 5, 5), (32, 16, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    # grouped and depthwise: one product per image (per slab of positions), every dtype
    "depthwise_3x3": ((3, 6, 9, 9), (6, 1, 3, 3), (1, 1), (1, 1), (1, 1), 6),
    "depthwise_5x5_stride_2": ((2, 4, 11, 10), (4, 1, 5, 5), (2, 2), (2, 2), (1, 1), 4),
    "depthwise_multiplier_dilated": ((2, 3, 9, 9), (6, 1, 3, 3), (1, 2), (2, 1), (2, 1), 3),
    "grouped_width_4": ((2, 8, 7, 7), (8, 4, 3, 3), (2, 1), (1, 1), (1, 1), 2),
    # grouped at stride 1 without a fast kernel: δX as the convolution with the flipped kernel
    "grouped_dilated_stride_1": ((2, 6, 9, 8), (9, 2, 3, 2), (1, 1), (2, 0), (2, 1), 3),
}


@pytest.mark.parametrize("fast_kernel", [True, False], ids=["convolution_forms", "patch_form"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shapes", BACKWARD_SHAPES.values(), ids=BACKWARD_SHAPES.keys())
def test_the_fast_backward_agrees_with_the_readable_formula(shapes, dtype, fast_kernel, monkeypatch):
    from manualbp.layers import conv

    # Force each dtype through each form (float64 takes the convolution forms only when told to).
    monkeypatch.setattr(conv, "has_fast_convolution_kernel", lambda tensor: fast_kernel)
    x_shape, w_shape, stride, padding, dilation, groups = shapes
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=generator, dtype=dtype)
    weight = torch.randn(w_shape, generator=generator, dtype=dtype)
    grad_output = torch.randn(TF.conv2d(x, weight, None, stride, padding, dilation, groups).shape,
                              generator=generator, dtype=dtype)
    arguments = (grad_output, x, weight, x.shape, stride, padding, dilation, groups)
    readable, fast = conv.conv2d_backward(*arguments), conv.conv2d_backward_fast(*arguments)
    expected = torch.ops.aten.convolution_backward(grad_output, x, weight, [w_shape[0]], stride, padding, dilation,
                                                   False, (0, 0), groups, (True, True, True))
    for name, ours, theirs, torchs in zip(("δX", "δW", "δb"), readable, fast, expected, strict=True):
        # bfloat16 keeps 8 bits and rounds each partial sum: within 3 % of the largest value
        scale = torchs.abs().max().item() if torchs.numel() else 0.0
        tolerance = {torch.float64: EXACT, torch.float32: {"rtol": 1e-5, "atol": 1e-5},
                     torch.bfloat16: {"rtol": 0, "atol": 3e-2 * scale}}[dtype]
        torch.testing.assert_close(ours, theirs, **tolerance, msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(ours, torchs, **tolerance, msg=lambda m, name=name: f"{name} vs torch: {m}")


@pytest.mark.parametrize("slab_positions", [1, 13], ids=["one_row", "two_rows"])
@pytest.mark.parametrize("shapes", ["stride_dilation", "rows_dropped", "groups"])
def test_the_per_image_patches_in_slabs_agree_with_the_formula(shapes, slab_positions, monkeypatch):
    """float32's per-image δW (more positions than filters, at a stride) in slabs of a few output
    rows each, the last one shorter: the formula's δW and torch's."""
    from manualbp.layers import conv

    monkeypatch.setattr(conv, "_PATCH_SLAB_POSITIONS", slab_positions)
    calls = []
    per_image = conv._grad_weight_per_image
    monkeypatch.setattr(conv, "_grad_weight_per_image", lambda *args: calls.append(1) or per_image(*args))
    x_shape, w_shape, stride, padding, dilation, groups = BACKWARD_SHAPES[shapes]
    generator = torch.Generator().manual_seed(0)
    x, weight = torch.randn(x_shape, generator=generator), torch.randn(w_shape, generator=generator)
    grad_output = torch.randn(TF.conv2d(x, weight, None, stride, padding, dilation, groups).shape, generator=generator)
    arguments = (grad_output, x, weight, x.shape, stride, padding, dilation, groups)
    fast = conv.conv2d_backward_fast(*arguments)[1]
    assert calls
    torch.testing.assert_close(fast, conv.conv2d_backward(*arguments)[1], rtol=1e-5, atol=1e-5)
    expected = torch.ops.aten.convolution_backward(grad_output, x, weight, [w_shape[0]], stride, padding, dilation,
                                                   False, (0, 0), groups, (False, True, False))[1]
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)


def test_the_function_runs_the_fast_backward(monkeypatch):
    from manualbp.layers import conv

    calls = []
    monkeypatch.setattr(conv, "conv2d_backward_fast", lambda *args: calls.append(args) or conv.conv2d_backward(*args))
    x = torch.randn(2, 3, 6, 6, dtype=DTYPE, requires_grad=True)
    conv2d(x, torch.randn(4, 3, 3, 3, dtype=DTYPE, requires_grad=True)).sum().backward()
    assert len(calls) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_conv_backward_at_stride_1_on_64x64_images_takes_no_more_memory_than_torch(dtype):
    """Issue 24.5: δW as a transposed convolution with δZ (64×64) as its kernel asked PyTorch's
    float64 kernel for a 32 GiB im2col buffer. Now its peak is PyTorch's own plus at most one copy
    of δZ (float32: the convolution forms hand δZ to oneDNN as a kernel, which it copies into its
    own layout; measured 6.5 MB vs 4.8 MB; float64: 6.4 vs 6.2 MB)."""
    from manualbp.bench.memory import forward_backward, peak_bytes

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=generator, dtype=dtype, requires_grad=True)
    weight = torch.randn(64, 3, 3, 3, generator=generator, dtype=dtype, requires_grad=True)
    grad_output = torch.randn(2, 64, 64, 64, generator=generator, dtype=dtype)
    ours = peak_bytes(forward_backward(lambda x, w: conv2d(x, w, padding=1), (x, weight), grad_output))
    grads = x.grad, weight.grad
    theirs = peak_bytes(forward_backward(lambda x, w: TF.conv2d(x, w, padding=1), (x, weight), grad_output))
    float32_sums = {"rtol": 1e-4, "atol": 1e-5 * weight.grad.abs().max().item()}  # δW: sums of 8,192 terms
    torch.testing.assert_close(grads, (x.grad, weight.grad), **(EXACT if dtype == torch.float64 else float32_sums))
    one_copy_of_grad_output = grad_output.numel() * grad_output.element_size()
    assert ours <= theirs + one_copy_of_grad_output, f"manualbp peaks at {ours:,} bytes, PyTorch at {theirs:,}"


# ----------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_small_conv_net_compiles_with_fullgraph_and_matches_eager():
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 1, 3, 3, generator=generator, requires_grad=True)
    bias = torch.randn(4, generator=generator, requires_grad=True)
    gamma = torch.rand(4, generator=generator).add(0.5).requires_grad_()

    def net(x):
        hidden = leaky_relu(batch_norm(conv2d(x, weight, bias, padding=1), None, None, gamma, training=True))
        return adaptive_avg_pool2d(avg_pool2d(max_pool2d(hidden, 2), 2, ceil_mode=True), 1).sum()

    x = torch.randn(3, 1, 10, 10, generator=generator)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    expected = net(x)
    expected_grads = torch.autograd.grad(expected, (weight, bias, gamma))
    loss = compiled(x)
    grads = torch.autograd.grad(loss, (weight, bias, gamma))
    torch.testing.assert_close(loss, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)


# ----------------------------------------------------------------------------------------------
# The checks can fail: planted wrong backward passes are caught
# ----------------------------------------------------------------------------------------------


class MaxPoolToTheWindowCorner(Function):
    """Wrong: routes each window's δ to its top-left value instead of its argmax."""

    generate_vmap_rule = True
    forward = staticmethod(MaxPool2dFunction.forward)
    setup_context = staticmethod(MaxPool2dFunction.setup_context)

    @staticmethod
    def backward(ctx, grad_output, grad_indices):
        grad_input = grad_output.new_zeros(ctx.input_shape)
        grad_input[..., ::2, ::2] = grad_output
        return grad_input, None, None, None, None, None


def test_a_max_pool_backward_that_ignores_the_argmax_is_rejected():
    def wrong(x):
        return MaxPoolToTheWindowCorner.apply(x, (2, 2), (2, 2), (0, 0), (1, 1), False)[0]

    inputs = (torch.randn(1, 2, 4, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(0)),)
    with pytest.raises(AssertionError):
        assert_matches_reference(wrong, lambda t: TF.max_pool2d(t, 2), inputs)
    with pytest.raises(GradcheckError, match="Jacobian mismatch"):
        gradcheck(wrong, _with_requires_grad(inputs, [0]), fast_mode=True)


def test_a_conv_weight_gradient_with_stride_and_dilation_unswapped_is_rejected(monkeypatch):
    from manualbp.layers import conv

    case = BY_NAME["conv_asymmetric"]
    monkeypatch.setattr(conv, "has_fast_convolution_kernel", lambda tensor: True)  # the correlation form, in float64
    monkeypatch.setattr(conv, "_patch_form_is_faster", lambda *args: False)  # ... also at a stride
    assert_matches_reference(case.function, case.reference, make_inputs(case))
    original = conv._sum_over_patches_and_images

    def unswapped(grad_output, input, weight_shape, stride, padding, dilation, groups):
        return original(grad_output, input, weight_shape, dilation, padding, stride, groups)

    monkeypatch.setattr(conv, "_sum_over_patches_and_images", unswapped)
    with pytest.raises((AssertionError, RuntimeError)):
        assert_matches_reference(case.function, case.reference, make_inputs(case))


# ----------------------------------------------------------------------------------------------
# Outputs are tensors of their own: in-place ops after a convolution work as after torch's
# ----------------------------------------------------------------------------------------------


IN_PLACE_AFTER_CONV = [  # (torch module, input shape)
    (lambda: torch.nn.Conv1d(3, 3, 3, padding=1), (2, 3, 8)),
    (lambda: torch.nn.Conv1d(3, 3, 3, padding=1), (3, 8)),
    (lambda: torch.nn.Conv1d(4, 4, 3, padding=1, groups=4), (2, 4, 8)),
    (lambda: torch.nn.Conv2d(3, 3, 3, padding=1), (2, 3, 6, 6)),
    (lambda: torch.nn.Conv2d(3, 3, 3, padding=1), (3, 6, 6)),
    (lambda: torch.nn.Conv2d(4, 4, 3, padding=1, groups=4), (4, 6, 6)),
    (lambda: torch.nn.Conv2d(4, 4, 3, padding=1, groups=2), (2, 4, 6, 6)),
]


@pytest.mark.parametrize("in_place", ["relu_inplace", "add_skip"])
@pytest.mark.parametrize("make_conv, x_shape", IN_PLACE_AFTER_CONV,
                         ids=["conv1d", "conv1d_unbatched", "conv1d_depthwise", "conv2d", "conv2d_unbatched",
                              "conv2d_depthwise_unbatched", "conv2d_grouped"])
def test_an_in_place_op_on_a_converted_convs_output_gives_torchs_gradients(make_conv, x_shape, in_place):
    import manualbp

    torch.manual_seed(0)
    theirs = make_conv().double()
    ours = manualbp.convert(torch.nn.Sequential(make_conv().double()))[0]
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(*x_shape, dtype=torch.float64)

    def run(conv):
        x_ = x.clone().requires_grad_()
        output = conv(x_)
        if in_place == "relu_inplace":
            torch.nn.functional.relu(output, inplace=True)
        else:
            output += x_
        output.pow(2).sum().backward()
        return output, x_.grad, conv.weight.grad, conv.bias.grad

    for mine, expected in zip(run(ours), run(theirs), strict=True):
        torch.testing.assert_close(mine, expected, **EXACT)
