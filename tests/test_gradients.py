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

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode  # torch-private: no public dispatch-mode API

import manualbp.functional as mbf
from manualbp.layers.base import LayerFunction
from manualbp.reference import TorchEuclideanLoss, TorchSoftmaxEuclideanLoss
from manualbp.testing import check_function

pytestmark = pytest.mark.usefixtures("one_thread")

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


def logits_and_probabilities():
    return randn(5, 4), torch.softmax(randn(5, 4), dim=1)


def logits_and_unnormalised_targets():
    return randn(5, 4), 2 * torch.rand(5, 4, dtype=DTYPE)  # rows don't sum to 1


# ----------------------------------------------------------------------------------------------
# References: the same computation with PyTorch's own ops
# ----------------------------------------------------------------------------------------------


def torch_linear_relu(x, weight, bias):
    return F.relu(F.linear(x, weight, bias))


def torch_softmax_euclidean_loss(logits, target):
    return TorchSoftmaxEuclideanLoss()(logits, target)


def torch_euclidean_loss(pred, target, reduction="sum"):
    return TorchEuclideanLoss(reduction)(pred, target)


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


CASES = [
    Case("linear", mbf.linear, F.linear, linear_inputs, bit_for_bit=True),
    Case("linear_no_bias", mbf.linear, F.linear, lambda: (*linear_inputs()[:2], None), bit_for_bit=True),
    Case("linear_relu", mbf.linear_relu, torch_linear_relu, lambda: linear_inputs(away_from_kink=True),
         bit_for_bit=True),
    Case("sigmoid", mbf.sigmoid, torch.sigmoid, lambda: randn(5, 4)),
    Case("relu", mbf.relu, F.relu, lambda: randn(5, 4, away_from_zero=True), bit_for_bit=True),
    Case("tanh", mbf.tanh, torch.tanh, lambda: randn(5, 4)),
    Case("elu", mbf.elu, F.elu, lambda: randn(5, 4, away_from_zero=True)),
    Case("elu_alpha_0.5", mbf.elu, F.elu, lambda: (randn(5, 4, away_from_zero=True), 0.5)),
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
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_matches_torch_in_every_check(case):
    check_function(case.function, case.reference, case.inputs, layouts=case.layouts, **EXACT)


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
