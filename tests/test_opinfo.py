"""PyTorch's own sample inputs (OpInfo, ``torch.testing._internal``) for every torch op that manualbp
hand-writes (``@hand_writes``): on each sample, manualbp's function gives torch's values and
gradients in float64, or refuses it with a one-line error (what ``manualbp.hand_written()`` then
hands back to PyTorch) -- never a wrong number."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("expecttest")  # torch.testing._internal needs it
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402 -- torch-private, test only

from manualbp.layers.base import HAND_WRITTEN  # noqa: E402

OPS = [op for op in op_db if op.op in HAND_WRITTEN and op.supports_autograd]
# Variants manualbp leaves to PyTorch whole (its function refuses every sample, and the mode runs
# PyTorch's): interpolate's modes other than nearest and bilinear.
LEFT_TO_PYTORCH = {("nn.functional.interpolate", mode) for mode in ("nearest-exact", "linear", "bicubic", "trilinear",
                                                                      "area")}
REFUSALS = (NotImplementedError, ValueError, TypeError, RuntimeError, IndexError)


def _copies(sample):
    """The sample's arguments and keyword arguments with every tensor copied (a leaf again,
    requiring grad as the original does)."""
    def copy(value):
        if isinstance(value, torch.Tensor):
            return value.detach().clone().requires_grad_(value.requires_grad)
        if isinstance(value, (tuple, list)):
            return type(value)(copy(item) for item in value)
        return value

    return copy((sample.input, *sample.args)), {key: copy(value) for key, value in sample.kwargs.items()}


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


@pytest.mark.parametrize("op", OPS, ids=lambda op: f"{op.name}.{op.variant_test_name}" if op.variant_test_name
                         else op.name)
def test_opinfo_samples_match_torch_or_are_refused(op):
    function = HAND_WRITTEN[op.op]
    matched = refused = 0
    for sample in op.sample_inputs("cpu", torch.float64, requires_grad=True):
        # each side gets copies: an op may update a tensor in place (batch norm's running statistics)
        (args, kwargs), (their_args, their_kwargs) = _copies(sample), _copies(sample)
        torch.manual_seed(0)
        expected = op.op(*their_args, **their_kwargs)
        torch.manual_seed(0)
        try:
            ours = function(*args, **kwargs)
        except REFUSALS as error:
            assert "\n" not in str(error) and str(error), f"{op.name}: a refusal must be one clear line: {error!r}"
            refused += 1
            continue
        ours_out, expected_out = _tensors(ours), _tensors(expected)
        assert len(ours_out) == len(expected_out), f"{op.name}: {len(ours_out)} outputs, torch {len(expected_out)}"
        for mine, theirs in zip(ours_out, expected_out, strict=True):
            assert mine.shape == theirs.shape and mine.dtype == theirs.dtype, (op.name, sample)
            torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12, equal_nan=True,
                                       msg=lambda m, s=sample: f"{op.name} values on {s}: {m}")
        leaves = [t for t in _tensors(args) + _tensors(list(kwargs.values())) if t.requires_grad]
        their_leaves = [t for t in _tensors(their_args) + _tensors(list(their_kwargs.values())) if t.requires_grad]
        differentiable = [(m, t) for m, t in zip(ours_out, expected_out, strict=True) if t.requires_grad]
        if leaves and differentiable:
            weights = [torch.randn_like(t) for _, t in differentiable]
            our_loss = sum((m * w).sum() for (m, _), w in zip(differentiable, weights, strict=True))
            their_loss = sum((t * w).sum() for (_, t), w in zip(differentiable, weights, strict=True))
            ours_grads = torch.autograd.grad(our_loss, leaves, allow_unused=True)
            theirs_grads = torch.autograd.grad(their_loss, their_leaves, allow_unused=True)
            for mine, theirs in zip(ours_grads, theirs_grads, strict=True):
                if theirs is None:
                    assert mine is None or not mine.any(), op.name
                    continue
                torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12, equal_nan=True,
                                           msg=lambda m, s=sample: f"{op.name} gradients on {s}: {m}")
        matched += 1
    if (op.name, op.variant_test_name) in LEFT_TO_PYTORCH:
        assert not matched, f"{op.name}.{op.variant_test_name}: listed as left to PyTorch, yet {matched} samples ran"
    else:
        assert matched, f"{op.name}: manualbp refused all {refused} of PyTorch's samples"
