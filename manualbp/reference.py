"""PyTorch's own built-in layers computing what each manualbp layer computes: the yardstick that
``GradientAudit``, the benchmark and the gradient suite hold manualbp against.

Each manualbp Module declares its torch twin with its layer (``torch_twin=`` in
:mod:`manualbp.layers`); where torch has no such Module, the twin is written there from torch
built-ins and re-exported here (``TorchLinearReLU``, ``TorchSoftmaxEuclideanLoss``,
``TorchEuclideanLoss``). ``to_torch`` is the inverse of :func:`manualbp.convert`: a copy of a model
with every manualbp module replaced by its torch twin, whose backward is PyTorch's built-in autograd.
"""

from __future__ import annotations

import copy

import torch

from manualbp.layers.base import HAND_WRITTEN, TORCH_TWINS
from manualbp.layers.linear import TorchLinearReLU
from manualbp.layers.losses import TorchEuclideanLoss, TorchSoftmaxEuclideanLoss
from manualbp.nn import replace_functions, replace_modules

__all__ = ["to_torch", "torch_gpt", "TorchLinearReLU", "TorchEuclideanLoss", "TorchSoftmaxEuclideanLoss"]


def _torch_twin(module: torch.nn.Module) -> torch.nn.Module | None:
    return module.to_torch() if type(module) in TORCH_TWINS else None


def to_torch(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in which every manualbp module is its torch built-in twin.

    Same structure and parameter names, so ``torch.func.functional_call(copy, params, ...)``
    runs it on the original's parameters. Other modules are copied as they are.
    """
    return replace_functions(replace_modules(copy.deepcopy(model), _torch_twin), _TORCH_FUNCTIONS)


# manualbp function -> the torch function it replaces (the first declared: F.relu, not torch.relu)
_TORCH_FUNCTIONS = {}
for _torch_function, _manualbp_function in HAND_WRITTEN.items():
    _TORCH_FUNCTIONS.setdefault(_manualbp_function, _torch_function)


def torch_gpt(**settings) -> torch.nn.Module:
    """``manualbp.nn.GPT(**settings)``'s torch.nn twin (same initial weights for the same seed): the
    A/B run of the GPT config, ``python train.py model=gpt model.net._target_=manualbp.reference.torch_gpt
    model.loss._target_=torch.nn.CrossEntropyLoss``."""
    from manualbp.gpt import GPT

    return to_torch(GPT(**settings))
