"""The torch-private names manualbp relies on (manualbp/torch_private.py) exist on the installed
torch, and one that is missing falls back loudly, to the side that keeps results right."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch

from manualbp import torch_private
from manualbp.layers import base


def resolve(dotted: str):
    """The object a dotted name such as ``torch._C._functorch.is_legacy_batchedtensor`` names."""
    parts = dotted.split(".")
    found = importlib.import_module(parts[0])
    for index, part in enumerate(parts[1:], start=1):
        try:
            found = getattr(found, part)
        except AttributeError:
            found = importlib.import_module(".".join(parts[: index + 1]))  # a submodule not yet imported
    return found


@pytest.mark.parametrize("dotted", torch_private.PRIVATE_NAMES)
def test_each_torch_private_name_exists_on_the_installed_torch(dotted):
    try:
        resolve(dotted)
    except (AttributeError, ImportError) as error:
        pytest.fail(f"torch {torch.__version__} has no {dotted} ({error}): see manualbp/torch_private.py")


@pytest.mark.parametrize("attribute", torch_private.MODULE_INTERNALS)
def test_each_module_internal_exists_on_the_installed_torch(attribute):
    assert hasattr(torch.nn.Linear(2, 2), attribute), f"torch {torch.__version__}: Module has no {attribute}"


def test_the_layers_use_the_private_calls_from_the_one_module():
    # the real ones on this torch, not the fallbacks
    assert base._functorch_transforms_active is torch._C._are_functorch_transforms_active
    assert base._is_functorch_wrapped is torch._C._functorch.is_functorch_wrapped_tensor
    assert base._is_legacy_batched is torch._C._functorch.is_legacy_batchedtensor
    assert base._any_autocast_enabled is torch._C._is_any_autocast_enabled
    assert not base._functorch_transforms_active()
    assert torch.func.vmap(lambda x: torch.tensor(base._functorch_transforms_active()) + 0 * x)(torch.ones(2)).all()


@pytest.fixture
def torch_without_private_names(monkeypatch):
    """manualbp.torch_private as imported on a torch without the private names it looks up."""
    for owner, name in ((torch._C, "_are_functorch_transforms_active"),
                        (torch._C._functorch, "is_functorch_wrapped_tensor"),
                        (torch._C._functorch, "is_legacy_batchedtensor"),
                        (torch._C, "_is_any_autocast_enabled"),
                        (torch.autograd.forward_ad, "_current_level")):
        monkeypatch.delattr(owner, name)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        reloaded = importlib.reload(torch_private)  # (a new TorchPrivateMissingWarning class: compare names)
    yield reloaded, [str(warning.message) for warning in warned
                     if type(warning.message).__name__ == "TorchPrivateMissingWarning"]
    monkeypatch.undo()
    importlib.reload(torch_private)


def test_a_missing_private_name_warns_and_falls_back_to_the_safe_side(torch_without_private_names):
    old, messages = torch_without_private_names
    assert len(messages) == 5 and all(message.startswith("manualbp: this torch (") for message in messages)
    assert any("has no torch._C._functorch.is_functorch_wrapped_tensor: every tensor is treated as wrapped" in message
               for message in messages)
    # the sides that keep results right: inside a transform, wrapped, batched (never "plain", which
    # would let a backward overwrite a buffer a transform still reads), autocast maybe on
    plain = torch.ones(2)
    assert old.functorch_transforms_active() is True
    assert old.is_functorch_wrapped_tensor(plain) is True and old.is_legacy_batched_tensor(plain) is True
    assert old.any_autocast_enabled() is True and old.forward_ad_level() == 0
