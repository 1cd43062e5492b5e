"""convert() on real models: torchvision's ResNet-18 converted whole, its loss, every parameter
gradient and the batch-norm running statistics equal to the original's after a step; what convert
leaves is reported (a warning) or refused (strict=True)."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

import manualbp
from manualbp import nn as mnn
from manualbp.errors import NotConvertibleError
from manualbp.layers.base import TORCH_TWINS


def _resnet(dtype):
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).to(dtype)  # weights=None: no download


def _step(model, inputs, targets):
    loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    return loss.detach()


def test_convert_replaces_every_layer_of_resnet18():
    model = _resnet(torch.float32)
    torch_kinds = {type(module) for module in model.modules() if next(module.children(), None) is None}
    assert torch_kinds == {torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.MaxPool2d,
                           torch.nn.AdaptiveAvgPool2d, torch.nn.Linear}
    converted = manualbp.convert(model)
    leaves = [module for module in converted.modules() if next(module.children(), None) is None]
    assert len(leaves) == 52 and all(type(module) in TORCH_TWINS for module in leaves)
    assert mnn.unconverted(converted) == []


def _assert_relatively_close(ours, theirs, bound, name):
    """‖ours − theirs‖ ≤ bound·‖theirs‖: the relative error of the whole tensor (elementwise, the
    entries near 0 of a deep gradient differ more in relative terms, in both directions)."""
    error = (ours - theirs).norm() / theirs.norm().clamp_min(torch.finfo(theirs.dtype).tiny)
    assert error <= bound, f"{name}: relative error {error:.2e} > {bound:.0e}"


# float64: a few units of 1e-16 per op, through ResNet's ~60 layers and back; float32 likewise from 6e-8.
@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-12), (torch.float32, 1e-4)], ids=["float64", "float32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_converted_resnet18_steps_like_the_original(dtype, bound, training):
    original = _resnet(dtype).train(training)
    converted = manualbp.convert(copy.deepcopy(original))
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(4, 3, 32, 32, generator=generator).to(dtype)
    targets = torch.randint(0, 10, (4,), generator=generator)
    _assert_relatively_close(_step(converted, inputs, targets), _step(original, inputs, targets), bound, "loss")
    ours, theirs = dict(converted.named_parameters()), dict(original.named_parameters())
    assert list(ours) == list(theirs)
    for name, parameter in theirs.items():
        _assert_relatively_close(ours[name].grad, parameter.grad, bound, name)
    for (name, buffer), theirs_buffer in zip(converted.named_buffers(), original.buffers(), strict=True):
        _assert_relatively_close(buffer.double(), theirs_buffer.double(), bound, name)  # running statistics, count


def test_what_convert_leaves_is_reported_and_strict_refuses_it():
    def model():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding_mode="reflect"), torch.nn.Softsign(),
                                   torch.nn.Flatten(), torch.nn.LazyLinear(2), torch.nn.Identity())

    with pytest.warns(UserWarning, match=r"3 module\(s\) keep PyTorch's backward: 0 \(Conv2d: manualbp pads with "
                                         r"zeros only.*\); 1 \(Softsign: no manualbp twin\); 3 \(LazyLinear"):
        converted = manualbp.convert(model())
    assert type(converted[0]) is torch.nn.Conv2d and type(converted[2]) is mnn.Flatten
    untouched = model()
    with pytest.raises(NotConvertibleError, match=r"strict=True\): 3 module\(s\) .*Softsign.*LazyLinear"):
        manualbp.convert(untouched, strict=True)
    assert type(untouched[2]) is torch.nn.Flatten  # refused before anything was replaced


def test_convert_strict_passes_a_model_it_fully_converts():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    converted = manualbp.convert(model, strict=True)
    assert [type(module) for module in converted] == [mnn.Conv2d, mnn.ReLU, mnn.Flatten, mnn.Linear]
