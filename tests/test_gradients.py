"""The gradient suite: every manualbp Function against PyTorch's own op, in float64.

For each Function and each input layout (a plain batch, batch size 1, extra leading dimensions,
non-contiguous inputs) it checks values and gradients against the torch reference, every subset
of inputs requiring grad, ``gradcheck`` (with forward-mode AD and batched gradients),
``gradgradcheck``, and ``torch.func`` (vmap, jacrev, jacfwd). The last tests feed the same checkers
deliberately wrong Functions and require them to be rejected, so the suite is shown to be able to
fail.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import Function, gradcheck, gradgradcheck
from torch.autograd.gradcheck import GradcheckError
from torch.utils._python_dispatch import TorchDispatchMode  # torch-private: no public dispatch-mode API

import manualbp.functional as mbf
from manualbp.reference import TorchEuclideanLoss, TorchSoftmaxEuclideanLoss

DTYPE = torch.float64
# "Exact" in float64: a few units in the last place (eps = 2.2e-16), the spread of two correct
# summation orders. A wrong formula is off by orders of magnitude more.
EXACT = {"rtol": 1e-13, "atol": 1e-15}


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------

LAYOUTS = ["batch", "batch_size_1", "leading_dims", "non_contiguous"]


def _shape(layout: str, features: int) -> tuple[int, ...]:
    return {
        "batch": (5, features),
        "batch_size_1": (1, features),
        "leading_dims": (2, 3, features),
        "non_contiguous": (5, features),
    }[layout]


def _randn(shape, generator, layout, away_from_zero=False):
    if layout == "non_contiguous":  # every other column of a wider tensor: strides (2·F, 2)
        wide = torch.randn(*shape[:-1], 2 * shape[-1], generator=generator, dtype=DTYPE)
        tensor = wide[..., ::2]
        assert not tensor.is_contiguous()
    else:
        tensor = torch.randn(*shape, generator=generator, dtype=DTYPE)
    if away_from_zero:  # keep finite differences off the ReLU/ELU kink at 0
        tensor = tensor + 0.2 * torch.where(tensor >= 0, 1.0, -1.0).to(DTYPE)
    return tensor


def _linear_inputs(generator, layout, with_bias=True, away_from_kink=False):
    while True:
        x = _randn(_shape(layout, 4), generator, layout)
        weight = torch.randn(3, 4, generator=generator, dtype=DTYPE)
        bias = torch.randn(3, generator=generator, dtype=DTYPE)
        preactivation = F.linear(x, weight, bias)
        if not away_from_kink or preactivation.abs().min() > 0.05:
            return (x, weight, bias) if with_bias else (x, weight)


def _logits_and_indices(generator, layout):
    logits = _randn(_shape(layout, 4), generator, layout)
    return logits, torch.randint(0, 4, logits.shape[:1], generator=generator)


def _logits_and_probabilities(generator, layout):
    logits = _randn(_shape(layout, 4), generator, layout)
    probabilities = torch.softmax(_randn(_shape(layout, 4), generator, layout), dim=1)
    return logits, probabilities


def _logits_and_unnormalised_targets(generator, layout):
    logits = _randn(_shape(layout, 4), generator, layout)
    return logits, torch.rand(_shape(layout, 4), generator=generator, dtype=DTYPE) * 2  # rows don't sum to 1


def _pred_and_target(generator, layout):
    shape = _shape(layout, 3)
    return _randn(shape, generator, layout), _randn(shape, generator, layout)


@dataclass
class Case:
    name: str
    function: Callable  # the manualbp wrapper, over tensors only
    reference: Callable  # PyTorch's own op computing the same thing
    make_inputs: Callable  # (generator, layout) -> tuple of tensors
    layouts: tuple[str, ...] = tuple(LAYOUTS)


CASES = [
    Case("linear", mbf.linear, F.linear, _linear_inputs),
    Case(
        "linear_no_bias",
        lambda x, w: mbf.linear(x, w),
        lambda x, w: F.linear(x, w),
        lambda g, layout: _linear_inputs(g, layout, with_bias=False),
    ),
    Case(
        "linear_relu",
        mbf.linear_relu,
        lambda x, w, b: F.relu(F.linear(x, w, b)),
        lambda g, layout: _linear_inputs(g, layout, away_from_kink=True),
    ),
    Case("sigmoid", mbf.sigmoid, torch.sigmoid, lambda g, layout: (_randn(_shape(layout, 4), g, layout),)),
    Case(
        "relu",
        mbf.relu,
        F.relu,
        lambda g, layout: (_randn(_shape(layout, 4), g, layout, away_from_zero=True),),
    ),
    Case("tanh", mbf.tanh, torch.tanh, lambda g, layout: (_randn(_shape(layout, 4), g, layout),)),
    Case(
        "elu",
        mbf.elu,
        F.elu,
        lambda g, layout: (_randn(_shape(layout, 4), g, layout, away_from_zero=True),),
    ),
    Case(
        "elu_alpha_0.5",
        lambda x: mbf.elu(x, alpha=0.5),
        lambda x: F.elu(x, alpha=0.5),
        lambda g, layout: (_randn(_shape(layout, 4), g, layout, away_from_zero=True),),
    ),
    Case(
        "softmax_cross_entropy_indices",
        mbf.softmax_cross_entropy,
        F.cross_entropy,
        _logits_and_indices,
        layouts=("batch", "batch_size_1", "non_contiguous"),
    ),
    Case(
        "softmax_cross_entropy_probabilities",
        mbf.softmax_cross_entropy,
        F.cross_entropy,
        _logits_and_probabilities,
        layouts=("batch", "batch_size_1", "non_contiguous"),
    ),
    Case(
        "softmax_cross_entropy_unnormalised_targets",
        mbf.softmax_cross_entropy,
        F.cross_entropy,
        _logits_and_unnormalised_targets,
        layouts=("batch", "batch_size_1", "non_contiguous"),
    ),
    Case(
        "softmax_euclidean_indices",
        mbf.softmax_euclidean_loss,
        TorchSoftmaxEuclideanLoss(),
        _logits_and_indices,
        layouts=("batch", "batch_size_1", "non_contiguous"),
    ),
    Case(
        "softmax_euclidean_probabilities",
        mbf.softmax_euclidean_loss,
        TorchSoftmaxEuclideanLoss(),
        _logits_and_probabilities,
        layouts=("batch", "batch_size_1", "non_contiguous"),
    ),
    Case("euclidean_loss_sum", mbf.euclidean_loss, TorchEuclideanLoss("sum"), _pred_and_target),
    Case(
        "euclidean_loss_mean",
        lambda p, t: mbf.euclidean_loss(p, t, reduction="mean"),
        TorchEuclideanLoss("mean"),
        _pred_and_target,
    ),
]

PARAMS = [
    pytest.param(case, layout, id=f"{case.name}-{layout}")
    for case in CASES
    for layout in case.layouts
]


def make_inputs(case: Case, layout: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return case.make_inputs(generator, layout)


def _differentiable(inputs) -> list[int]:
    return [i for i, tensor in enumerate(inputs) if tensor.is_floating_point()]


# ----------------------------------------------------------------------------------------------
# The checkers (also run on deliberately wrong Functions at the end of this file)
# ----------------------------------------------------------------------------------------------


def _with_requires_grad(inputs, indices):
    return tuple(
        tensor.detach().requires_grad_(i in indices) if tensor.is_floating_point() else tensor
        for i, tensor in enumerate(inputs)
    )


def assert_matches_reference(function, reference, inputs, requires_grad=None, seed=0):
    """Values and the gradients of a random vector-Jacobian product equal the reference's."""
    indices = _differentiable(inputs) if requires_grad is None else requires_grad
    ours = _with_requires_grad(inputs, indices)
    theirs = _with_requires_grad(inputs, indices)
    output, expected = function(*ours), reference(*theirs)
    torch.testing.assert_close(output, expected, **EXACT)
    generator = torch.Generator().manual_seed(seed + 1)
    grad_output = torch.randn(expected.shape, generator=generator, dtype=expected.dtype)
    wanted = [ours[i] for i in indices]
    grads = torch.autograd.grad(output, wanted, grad_output)
    expected_grads = torch.autograd.grad(expected, [theirs[i] for i in indices], grad_output)
    for index, grad, expected_grad in zip(indices, grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, **EXACT, msg=lambda m, index=index: f"input {index}: {m}")


def assert_gradcheck(function, inputs):
    """Backward and forward-mode AD agree with finite differences, also when batched."""
    inputs = _with_requires_grad(inputs, _differentiable(inputs))
    assert gradcheck(
        function,
        inputs,
        check_forward_ad=True,
        check_batched_grad=True,
        check_batched_forward_grad=True,
    )


def assert_gradgradcheck(function, inputs):
    """The backward itself is differentiated correctly (reverse-over-reverse and fwd-over-rev)."""
    inputs = _with_requires_grad(inputs, _differentiable(inputs))
    assert gradgradcheck(function, inputs, check_fwd_over_rev=True, check_batched_grad=True)


# ----------------------------------------------------------------------------------------------
# The suite
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, layout", PARAMS)
def test_matches_torch_values_and_gradients(case, layout):
    assert_matches_reference(case.function, case.reference, make_inputs(case, layout))


@pytest.mark.parametrize("case, layout", PARAMS)
def test_every_subset_of_inputs_requiring_grad(case, layout):
    inputs = make_inputs(case, layout)
    floating = _differentiable(inputs)
    for size in range(1, len(floating) + 1):
        for subset in itertools.combinations(floating, size):
            assert_matches_reference(case.function, case.reference, inputs, list(subset))


@pytest.mark.parametrize("case, layout", PARAMS)
def test_gradcheck(case, layout):
    assert_gradcheck(case.function, make_inputs(case, layout))


@pytest.mark.parametrize("case, layout", PARAMS)
def test_gradgradcheck(case, layout):
    assert_gradgradcheck(case.function, make_inputs(case, layout))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_vmap_matches_a_loop(case):
    samples = [make_inputs(case, "batch", seed) for seed in range(3)]
    stacked = [torch.stack(column) for column in zip(*samples, strict=True)]
    batched = torch.func.vmap(case.function)(*stacked)
    looped = torch.stack([case.reference(*sample) for sample in samples])
    torch.testing.assert_close(batched, looped, **EXACT)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
@pytest.mark.parametrize("transform", [torch.func.jacrev, torch.func.jacfwd])
def test_jacobians_match_torch(case, transform):
    inputs = make_inputs(case, "batch")
    argnums = tuple(_differentiable(inputs))
    ours = transform(case.function, argnums=argnums)(*inputs)
    theirs = torch.func.jacrev(case.reference, argnums=argnums)(*inputs)
    for jacobian, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(jacobian, expected, **EXACT)


def test_jvp_of_the_mnist_layer_matches_torch():
    x, weight, bias = _linear_inputs(torch.Generator().manual_seed(3), "batch", away_from_kink=True)
    tangents = tuple(torch.randn_like(t) for t in (x, weight, bias))
    ours = torch.func.jvp(mbf.linear_relu, (x, weight, bias), tangents)
    theirs = torch.func.jvp(lambda *a: F.relu(F.linear(*a)), (x, weight, bias), tangents)
    for value, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(value, expected, **EXACT)


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
    inputs = _linear_inputs(torch.Generator().manual_seed(0), "batch", away_from_kink=True)
    inputs = [t.detach().requires_grad_(flag) for t, flag in zip(inputs, requires_grad, strict=True)]
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
# The suite can fail: deliberately wrong Functions are rejected
# ----------------------------------------------------------------------------------------------


class SigmoidMissingOneMinusSigma(Function):
    """Wrong first derivative: σ·δZ instead of σ(1−σ)·δZ."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input):
        return mbf.sigmoid_forward(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return output * grad_output

    @staticmethod
    def jvp(ctx, input_tangent):
        (output,) = ctx.saved_tensors
        return mbf.sigmoid_backward(input_tangent, output)


class SigmoidWithDetachedOutput(SigmoidMissingOneMinusSigma):
    """Right first derivative, but the output is smuggled past autograd (saved as a detached
    ctx attribute), so double backward silently misses the σ'' term."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.output = output.detach()
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        return mbf.sigmoid_backward(grad_output, ctx.output)


class SigmoidWithWrongJvp(Function):
    """Right backward, wrong forward-mode derivative (σ·ȧ)."""

    generate_vmap_rule = True
    forward = staticmethod(mbf.SigmoidFunction.forward)
    setup_context = staticmethod(mbf.SigmoidFunction.setup_context)
    backward = staticmethod(mbf.SigmoidFunction.backward)

    @staticmethod
    def jvp(ctx, input_tangent):
        (output,) = ctx.saved_tensors
        return output * input_tangent


def _sigmoid_inputs():
    return (torch.randn(5, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(0)),)


def test_a_wrong_backward_is_rejected_by_the_reference_check_and_by_gradcheck():
    wrong = SigmoidMissingOneMinusSigma.apply
    with pytest.raises(AssertionError):
        assert_matches_reference(wrong, torch.sigmoid, _sigmoid_inputs())
    with pytest.raises(GradcheckError, match="Jacobian mismatch"):
        assert_gradcheck(wrong, _sigmoid_inputs())


def test_a_backward_that_hides_its_inputs_from_autograd_is_rejected_by_gradgradcheck():
    wrong = SigmoidWithDetachedOutput.apply
    assert_matches_reference(wrong, torch.sigmoid, _sigmoid_inputs())  # first order is right...
    with pytest.raises(GradcheckError):
        assert_gradgradcheck(wrong, _sigmoid_inputs())  # ...the second is not


def test_a_wrong_jvp_is_rejected_by_the_forward_ad_check():
    wrong = SigmoidWithWrongJvp.apply
    assert_matches_reference(wrong, torch.sigmoid, _sigmoid_inputs())  # backward is right...
    with pytest.raises(GradcheckError, match="forward"):
        assert_gradcheck(wrong, _sigmoid_inputs())  # ...forward-mode is not


@pytest.mark.parametrize("name", ["linear", "linear_no_bias", "linear_relu", "relu", "euclidean_loss_sum"])
def test_some_functions_agree_with_torch_bit_for_bit(name):
    # Same kernels in the same order as PyTorch's own op: not just close, identical.
    case = next(case for case in CASES if case.name == name)
    for layout in ("batch", "leading_dims"):
        inputs = _with_requires_grad(make_inputs(case, layout), _differentiable(make_inputs(case, layout)))
        output, expected = case.function(*inputs), case.reference(*inputs)
        assert torch.equal(output, expected)
        grad_output = torch.randn(expected.shape, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
        wanted = [t for t in inputs if t.requires_grad]
        ours = torch.autograd.grad(output, wanted, grad_output)
        theirs = torch.autograd.grad(expected, wanted, grad_output)
        for our_grad, their_grad in zip(ours, theirs, strict=True):
            assert torch.equal(our_grad, their_grad)
