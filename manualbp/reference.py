"""PyTorch's own built-in layers computing what each manualbp layer computes: the yardstick that
``GradientAudit`` and the benchmark hold manualbp against. (The tests use torch ops directly.)

``to_torch`` is the inverse of :func:`manualbp.convert`: a copy of a model with every manualbp
module replaced by its torch.nn twin, whose backward is PyTorch's built-in autograd.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as TF
from torch import Tensor

from manualbp import nn as mnn


class TorchLinearReLU(torch.nn.Linear):
    """max(0, X Wᵀ + b) from torch built-ins (F.linear, F.relu); twin of ``mnn.LinearReLU``."""

    def forward(self, input: Tensor) -> Tensor:
        return TF.relu(super().forward(input))


class TorchEuclideanLoss(torch.nn.Module):
    """½‖Yp − Y‖² from torch built-ins; twin of ``mnn.EuclideanLoss``."""

    def __init__(self, reduction: str = "sum") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        loss = 0.5 * ((pred - target) ** 2).sum()
        return loss / pred.shape[0] if self.reduction == "mean" else loss


class TorchSoftmaxEuclideanLoss(torch.nn.Module):
    """Mean ½‖softmax(logits) − y‖² from torch built-ins; twin of ``mnn.SoftmaxEuclideanLoss``."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if not target.is_floating_point():
            target = TF.one_hot(target, logits.shape[-1]).to(logits.dtype)
        return 0.5 * ((torch.softmax(logits, dim=-1) - target) ** 2).sum() / logits.shape[0]


def _torch_twin(module: torch.nn.Module) -> torch.nn.Module | None:
    kind = type(module)
    if kind is mnn.Linear:
        return mnn.share_parameters(module, torch.nn.Linear)
    if kind is mnn.LinearReLU:
        return mnn.share_parameters(module, TorchLinearReLU)
    if kind is mnn.ReLU:
        return torch.nn.ReLU()
    if kind is mnn.Sigmoid:
        return torch.nn.Sigmoid()
    if kind is mnn.ELU:
        return torch.nn.ELU(module.alpha)
    if kind is mnn.SoftmaxCrossEntropyLoss:
        return torch.nn.CrossEntropyLoss()
    if kind is mnn.SoftmaxEuclideanLoss:
        return TorchSoftmaxEuclideanLoss()
    if kind is mnn.EuclideanLoss:
        return TorchEuclideanLoss(module.reduction)
    return None


def to_torch(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in which every manualbp module is its torch built-in twin.

    Same structure and parameter names, so ``torch.func.functional_call(copy, params, ...)``
    runs it on the original's parameters. Other modules are copied as they are.
    """
    return mnn.replace_modules(copy.deepcopy(model), _torch_twin)
