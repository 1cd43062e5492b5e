"""Tensor arithmetic under ``manualbp.hand_written()``: every spelling model code uses (``torch.mul(a, b)``,
``a.mul(b)``, ``a * b``, ``2 * a``, ``1 - a``, ``a ** 2``) runs manualbp's Function and gives torch's
values and gradients; what manualbp leaves to torch (integer tensors, in-place spellings) gives
torch's results too. The formulas themselves are checked one by one in tests/test_gradients.py (CASES) and
on PyTorch's own samples in tests/test_opinfo.py."""

from __future__ import annotations

import pytest
import torch

import manualbp
import manualbp.functional as mbf
from manualbp.layers.elementwise import MulFunction
from manualbp.testing import check_function

A_SHAPE, B_SHAPE = (3, 4), (4,)  # B broadcast along A's rows

SPELLINGS = {
    "torch.mul": lambda a, b: torch.mul(a, b),
    "a.mul(b)": lambda a, b: a.mul(b),
    "a * b": lambda a, b: a * b,
    "b * a": lambda a, b: b * a,
    "a * 0.5": lambda a, b: a * 0.5,
    "2 * a": lambda a, b: 2 * a,
    "a / b": lambda a, b: a / b,
    "a.div(b)": lambda a, b: a.div(b),
    "a / 2": lambda a, b: a / 2,
    "2 / a": lambda a, b: 2 / a,
    "-a": lambda a, b: -a,
    "a + b": lambda a, b: a + b,
    "1 + a": lambda a, b: 1 + a,
    "torch.add alpha": lambda a, b: torch.add(a, b, alpha=0.5),
    "a - b": lambda a, b: a - b,
    "a.sub(b, alpha=2)": lambda a, b: a.sub(b, alpha=2),
    "1 - a": lambda a, b: 1 - a,
    "torch.rsub": lambda a, b: torch.rsub(a, b),
    "a ** 2": lambda a, b: a**2,
    "a.pow(3)": lambda a, b: a.pow(3),
    "2 ** a": lambda a, b: 2**a,
    "torch.pow(2, a)": lambda a, b: torch.pow(2, a),
    "|a| ** b": lambda a, b: a.abs() ** b,
    "torch.sqrt": lambda a, b: torch.sqrt(a.abs()),
    "a.rsqrt()": lambda a, b: (a.abs() + 1).rsqrt(),
    "torch.exp": lambda a, b: torch.exp(a),
    "a.log()": lambda a, b: a.abs().log(),
    "abs(a)": lambda a, b: abs(a),
    "a.clamp(-0.5, 0.5)": lambda a, b: a.clamp(-0.5, 0.5),
    "a.clamp(min=b)": lambda a, b: a.clamp(min=b),
    "torch.clamp(a, b - 1, b)": lambda a, b: torch.clamp(a, b - 1, b),
    "a.clamp_max(0.2)": lambda a, b: a.clamp_max(0.2),
    "a.sum()": lambda a, b: a.sum(),
    "a.sum(-1)": lambda a, b: a.sum(-1),
    "torch.sum(a, 0, keepdim=True)": lambda a, b: torch.sum(a, 0, keepdim=True),
    "a.mean()": lambda a, b: a.mean(),
    "a.mean(dim=-1, keepdim=True)": lambda a, b: a.mean(dim=-1, keepdim=True),
    "a.var(-1)": lambda a, b: a.var(-1),
    "torch.var(a, 0, unbiased=False)": lambda a, b: torch.var(a, 0, unbiased=False),
    "a.var(dim=1, correction=0, keepdim=True)": lambda a, b: a.var(dim=1, correction=0, keepdim=True),
    "a.std()": lambda a, b: a.std(),
    "torch.std(a, -1, keepdim=True)": lambda a, b: torch.std(a, -1, keepdim=True),
    "a.amax(-1)": lambda a, b: a.amax(-1),
    "torch.amin(a, (0, 1))": lambda a, b: torch.amin(a, (0, 1)),
    "a.max()": lambda a, b: a.max(),
    "a.max(dim=-1).values": lambda a, b: a.max(dim=-1).values,
    "a.min(0, keepdim=True)[0]": lambda a, b: a.min(0, keepdim=True)[0],
    "torch.maximum(a, b)": lambda a, b: torch.maximum(a, b),
    "a.min(b)": lambda a, b: a.min(b),
    "ties: torch.maximum": lambda a, b: torch.maximum(a.round(), b.round()),
    "torch.addmm(b, a.mT, a)": lambda a, b: torch.addmm(b, a.mT, a),
    "b.addmm(a.mT, a, alpha=2)": lambda a, b: b.addmm(a.mT, a, alpha=2),
    "torch.baddbmm": lambda a, b: torch.baddbmm(b, a.mT[None], a[None], beta=0.5),
    "ties: a.round().amax(0)": lambda a, b: (3 * a).round().clamp(-1, 1).amax(0),
    "ties: a.round().max()": lambda a, b: (3 * a).round().clamp(-1, 1).max(),
    "ties: a.round().max(0).values": lambda a, b: (3 * a).round().clamp(-1, 1).max(0).values,
}


def _leaves(seed=0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(A_SHAPE, dtype=torch.float64, generator=generator).requires_grad_()
    b = torch.randn(B_SHAPE, dtype=torch.float64, generator=generator).requires_grad_()
    return a, b


def _gradients(output, leaves):
    weights = torch.linspace(-1, 1, output.numel(), dtype=output.dtype).reshape(output.shape)
    return torch.autograd.grad((output * weights).sum(), leaves, allow_unused=True)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_runs_manualbp_and_gives_torchs_values_and_gradients(spelling):
    expression = SPELLINGS[spelling]
    theirs_leaves, ours_leaves = _leaves(), _leaves()
    expected = expression(*theirs_leaves)
    with manualbp.hand_written() as mode:
        ours = expression(*ours_leaves)
    assert not mode.fell_back, mode.fell_back
    last_node = ours.grad_fn._forward_cls.manualbp_function  # the last node is a manualbp Function
    assert last_node.__module__.startswith("manualbp.layers"), last_node
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    for mine, theirs in zip(_gradients(ours, ours_leaves), _gradients(expected, theirs_leaves), strict=True):
        if theirs is None:
            assert mine is None
        else:
            torch.testing.assert_close(mine, theirs, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("arguments", [
    pytest.param(lambda: (torch.arange(6).reshape(2, 3), torch.arange(3)), id="integer tensors"),
    pytest.param(lambda: (torch.randn(2, 3, dtype=torch.float64, requires_grad=True), torch.arange(3)),
                 id="a float and an integer tensor"),
    pytest.param(lambda: (torch.randn(2, 3, dtype=torch.complex64), torch.randn(3)), id="complex"),
])
def test_what_manualbp_leaves_to_torch_gives_torchs_result(arguments):
    first, second = arguments()
    with manualbp.hand_written() as mode:
        ours = first * second
    assert not mode.replaced
    assert bool(mode.fell_back) == (first.is_floating_point() or second.is_floating_point())  # integers: not missed
    torch.testing.assert_close(ours, first * second, rtol=0, atol=0)


@pytest.mark.parametrize("op", [
    lambda a, b: a * b, lambda a, b: a / b, lambda a, b: b - a, lambda a, b: a + b, lambda a, b: torch.maximum(a, b),
    lambda a, b: a.abs() ** b, lambda a, b: torch.clamp(a, min=b),
], ids=["mul", "div", "sub", "add", "maximum", "pow", "clamp"])
@pytest.mark.parametrize("second_shape", [(3, 1), ()], ids=["a float32 tensor", "a 0-d float32 tensor"])
def test_two_floating_dtypes_are_promoted_as_torch_does_and_hand_written(op, second_shape):
    """float64 · float32 (a model normalizing in float32 inside a float64 run, T5's and Llama's RMS
    norm written out): the operands are cast to torch's result dtype (a 0-d tensor does not widen
    the other), the op is manualbp's, values and gradients torch's to the bit."""
    first = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    second = torch.randn(second_shape, dtype=torch.float32).add_(3).requires_grad_()
    expected = op(first, second)
    expected_grads = torch.autograd.grad(expected.sum(), (first, second))
    with manualbp.hand_written() as mode:
        ours = op(first, second)
    assert mode.replaced and not mode.fell_back
    assert ours.dtype == expected.dtype
    assert manualbp.backward_coverage(ours).complete
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    for mine, theirs in zip(torch.autograd.grad(ours.sum(), (first, second)), expected_grads, strict=True):
        assert mine.dtype == theirs.dtype
        torch.testing.assert_close(mine, theirs, rtol=1e-14, atol=1e-14)


def test_in_place_spellings_stay_torchs_values_and_gradients():
    def layer_scale_and_residual(x, gamma):
        y = x * 1.0  # a non-leaf to update in place
        y.mul_(gamma)
        y += x
        y *= 2
        return y.add_(1).sum(-1)

    theirs_leaves, ours_leaves = _leaves(), _leaves()
    expected = layer_scale_and_residual(*theirs_leaves)
    with manualbp.hand_written():
        ours = layer_scale_and_residual(*ours_leaves)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    for mine, theirs in zip(_gradients(ours, ours_leaves), _gradients(expected, theirs_leaves), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-13, atol=1e-15)


class MulWithSwappedGradients(MulFunction):
    """A planted bug: δA = A·δZ, δB = B·δZ (each operand given its own value instead of the other's)."""

    @staticmethod
    def backward(ctx, grad_output):
        first, second = ctx.saved_tensors
        return grad_output * first, (grad_output * second).sum(0)


def test_a_wrong_delta_in_mul_is_caught():
    def planted(a, b):
        return MulWithSwappedGradients.apply(a, b)

    a, b = _leaves()
    report = check_function(planted, torch.mul, (a.detach(), b.detach()), layouts=("as_given",), raise_on_failure=False)
    assert not report.passed
    assert check_function(mbf.mul, torch.mul, (a.detach(), b.detach()), layouts=("as_given",)).passed


def test_torch_compile_runs_the_hand_written_arithmetic():
    def rms_scale(x, gamma):
        scaled = x * gamma
        return scaled * torch.rsqrt(scaled.abs().mean(-1, keepdim=True) + 1e-6) - 1

    theirs_leaves, ours_leaves = _leaves(), _leaves()
    expected = rms_scale(*theirs_leaves)

    def under_the_mode(x, gamma):
        with manualbp.hand_written():
            return rms_scale(x, gamma)

    ours = torch.compile(under_the_mode, fullgraph=True, backend="eager")(*ours_leaves)
    torch.testing.assert_close(ours, expected, rtol=1e-13, atol=1e-15)
    for mine, theirs in zip(_gradients(ours, ours_leaves), _gradients(expected, theirs_leaves), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-13, atol=1e-15)


def test_under_autocast_arithmetic_keeps_torchs_dtypes():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = (x @ w) * x
        with manualbp.hand_written() as mode:
            ours = (x @ w) * x  # bfloat16 times float32: promoted to float32, as torch does
            scaled = (x * 2).sum()
    assert ours.dtype == expected.dtype
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert scaled.dtype == torch.float32 and "TensorBase.mul" in mode.replaced


@pytest.mark.parametrize("call", [
    lambda a, b: torch.einsum("bij,bjk->bik", a, b), lambda a, b: torch.einsum("bij,bjk", [a, b]),
    lambda a, b: torch.einsum("bij,bkj->bik", a, b.mT).square().sum(-1),
    lambda a, b: torch.nn.functional.normalize(a, dim=-1) * 2,
    lambda a, b: torch.nn.functional.interpolate(a.unsqueeze(1), scale_factor=2, mode="bilinear"),
    lambda a, b: torch.nn.functional.interpolate(a.unsqueeze(1), size=(5, 7)),
    lambda a, b: manualbp.convert(torch.nn.Upsample(scale_factor=3, mode="nearest"))(a.unsqueeze(1)),
], ids=["einsum", "einsum list, implicit output", "einsum summed", "normalize", "interpolate bilinear",
        "interpolate nearest", "Upsample"])
def test_einsum_normalize_and_interpolate_are_hand_written(call):
    theirs_leaves, ours_leaves = _bmm_leaves(), _bmm_leaves()
    expected = call(*theirs_leaves)
    with manualbp.hand_written() as mode:
        ours = call(*ours_leaves)
    assert not mode.fell_back and manualbp.backward_coverage(ours).complete
    torch.testing.assert_close(ours, expected, rtol=1e-14, atol=1e-15)
    weights = torch.randn_like(expected)
    for mine, theirs in zip(torch.autograd.grad((ours * weights).sum(), ours_leaves, allow_unused=True),
                            torch.autograd.grad((expected * weights).sum(), theirs_leaves, allow_unused=True),
                            strict=True):
        assert (mine is None) == (theirs is None)
        if mine is not None:
            torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


def _bmm_leaves():
    generator = torch.Generator().manual_seed(5)
    return (torch.randn(2, 3, 4, dtype=torch.float64, generator=generator).requires_grad_(),
            torch.randn(2, 4, 5, dtype=torch.float64, generator=generator).requires_grad_())


@pytest.mark.parametrize("call", [
    lambda a: torch.einsum("ii->i", a), lambda a: torch.einsum("...ij->...ji", a),
    lambda a: torch.nn.functional.normalize(a, p=1),
    lambda a: torch.nn.functional.interpolate(a[None], 3, mode="linear"),
], ids=["einsum diagonal", "einsum ellipsis", "normalize p=1", "interpolate linear"])
def test_what_einsum_normalize_and_interpolate_leave_to_torch_is_torchs(call):
    a = torch.randn(3, 3, dtype=torch.float64)
    with manualbp.hand_written() as mode:
        ours = call(a)
    assert mode.fell_back and not mode.replaced
    torch.testing.assert_close(ours, call(a), rtol=0, atol=0)
