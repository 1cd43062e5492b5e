"""manualbp's layers as ``torch.nn.Module``s: drop-in twins of the torch.nn ones.

``Linear``, ``ReLU``, ``Sigmoid`` and ``ELU`` subclass their torch.nn twins, so parameter names,
shapes, default initialisation, ``state_dict`` and ``repr`` are PyTorch's own (and code that asks
``isinstance(m, torch.nn.Linear)`` still works); only ``forward`` differs: it calls
:mod:`manualbp.functional`, whose backward is the slide formula. ``convert`` swaps them into an
existing model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from manualbp import functional as F

__all__ = [
    "Linear",
    "LinearReLU",
    "Sigmoid",
    "ReLU",
    "ELU",
    "SoftmaxCrossEntropyLoss",
    "SoftmaxEuclideanLoss",
    "EuclideanLoss",
    "LOSSES",
    "MLP",
    "convert",
    "replace_modules",
    "share_parameters",
]


class Linear(torch.nn.Linear):
    """Z = X Wᵀ + b with the hand-written backward; a drop-in for ``torch.nn.Linear``.

    Input (*, in_features) -> output (*, out_features). ``weight``: (out_features, in_features),
    ``bias``: (out_features,) or None; same names, shapes and initialisation as torch.nn.Linear.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.bias)


class LinearReLU(torch.nn.Linear):
    """Z = max(0, X Wᵀ + b) in one autograd node: a ``Linear`` followed by ``ReLU``, fused.

    The slides' MNIST layer Z1 = f(X W1 + b1). Same parameters as ``Linear``; values and gradients
    equal ``ReLU()(Linear(...)(x))``, with one node and one saved activation instead of two.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.linear_relu(input, self.weight, self.bias)


class Sigmoid(torch.nn.Sigmoid):
    """σ(a) = 1/(1 + e^(−a)) elementwise with backward σ(1−σ)·δZ; any shape."""

    def forward(self, input: Tensor) -> Tensor:
        return F.sigmoid(input)


class ReLU(torch.nn.ReLU):
    """max(0, x) elementwise with backward 1[x>0]·δZ; any shape. (Never in place.)"""

    def __init__(self) -> None:
        super().__init__(inplace=False)

    def forward(self, input: Tensor) -> Tensor:
        return F.relu(input)


class ELU(torch.nn.ELU):
    """x if x > 0 else α(eˣ − 1) elementwise with backward δZ·(1 if x>0 else y+α); any shape."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__(alpha=alpha, inplace=False)

    def forward(self, input: Tensor) -> Tensor:
        return F.elu(input, self.alpha)


class SoftmaxCrossEntropyLoss(torch.nn.Module):
    """Mean softmax cross-entropy with backward (yp − y)/N; like ``torch.nn.CrossEntropyLoss()``.

    logits (N, C); target: class indices (N,) or probabilities / one-hot rows (N, C). -> scalar.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.softmax_cross_entropy(logits, target)


class SoftmaxEuclideanLoss(torch.nn.Module):
    """Mean ½‖softmax(logits) − y‖², backward through the softmax Jacobian diag(p) − ppᵀ.

    logits (N, C); target: class indices (N,) or probabilities / one-hot rows (N, C). -> scalar.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.softmax_euclidean_loss(logits, target)


class EuclideanLoss(torch.nn.Module):
    """½‖Yp − Y‖² with backward (Yp − Y); ``reduction="mean"`` divides by the batch size N.

    pred and target: the same shape (N, *). -> scalar.
    """

    def __init__(self, reduction: str = "sum") -> None:
        super().__init__()
        if reduction not in F.REDUCTIONS:
            raise ValueError(
                f"EuclideanLoss: reduction must be one of {F.REDUCTIONS}, got {reduction!r}"
            )
        self.reduction = reduction

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.euclidean_loss(pred, target, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


_ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "elu": ELU}

# Losses by name, for configs: model.loss=softmax_euclidean
LOSSES = {
    "softmax_cross_entropy": SoftmaxCrossEntropyLoss,
    "softmax_euclidean": SoftmaxEuclideanLoss,
    "euclidean": EuclideanLoss,
}


class MLP(torch.nn.Sequential):
    """A fully connected net: Linear → activation → ... → Linear (→ output activation).

    ``sizes = [784, 512, 256, 10]`` gives the slides' MNIST net Z1 = f(X W1 + b1),
    Z2 = f(Z1 W2 + b2), logits = Z2 W3 + b3. ``activation``: "relu", "sigmoid" or "elu";
    ``output_activation``: the same choices or None. With ``fuse=True`` each hidden
    Linear → ReLU pair is one :class:`LinearReLU` node (same numbers, less time and memory).
    ``init="zeros"`` starts every parameter at 0 -- right for a single layer (linear regression
    is convex), wrong for hidden layers (their units would stay identical), so it is refused
    there. Input (*, sizes[0]) -> output (*, sizes[-1]).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        output_activation: str | None = None,
        fuse: bool = True,
        init: str = "default",
        device=None,
        dtype=None,
    ) -> None:
        for name in (activation, output_activation):
            if name is not None and name not in _ACTIVATIONS:
                raise ValueError(
                    f"MLP: unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
                )
        if len(sizes) < 2 or any(int(size) < 1 for size in sizes):
            raise ValueError(
                f"MLP: sizes must list at least an input and an output size, all positive, "
                f"got {list(sizes)}"
            )
        if init not in ("default", "zeros") or (init == "zeros" and len(sizes) > 2):
            raise ValueError(
                f"MLP: init must be 'default', or 'zeros' for a single layer, got {init!r} with "
                f"sizes {list(sizes)}"
            )
        factory = {"device": device, "dtype": dtype}
        layers: list[torch.nn.Module] = []
        last = len(sizes) - 2
        for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layer_activation = activation if index < last else output_activation
            if layer_activation == "relu" and fuse:
                layers.append(LinearReLU(fan_in, fan_out, **factory))
                continue
            layers.append(Linear(fan_in, fan_out, **factory))
            if layer_activation is not None:
                layers.append(_ACTIVATIONS[layer_activation]())
        super().__init__(*layers)
        if init == "zeros":
            for parameter in self.parameters():
                torch.nn.init.zeros_(parameter)


def share_parameters(linear: torch.nn.Linear, kind: type[torch.nn.Linear]) -> torch.nn.Linear:
    """A ``kind`` layer (a torch.nn.Linear subclass) using ``linear``'s own Parameter objects."""
    twin = kind(linear.in_features, linear.out_features, bias=False, device="meta")
    twin.weight, twin.bias = linear.weight, linear.bias
    return twin


def _manualbp_twin(module: torch.nn.Module) -> torch.nn.Module | None:
    """The manualbp module that replaces ``module``, sharing its parameters; None if none does."""
    kind = type(module)
    if kind is torch.nn.Linear:
        twin = share_parameters(module, Linear)
    elif kind is torch.nn.ReLU:
        twin = ReLU()
    elif kind is torch.nn.Sigmoid:
        twin = Sigmoid()
    elif kind is torch.nn.ELU:
        twin = ELU(module.alpha)
    else:
        return None
    return twin.train(module.training)


def replace_modules(
    model: torch.nn.Module, replacement: Callable[[torch.nn.Module], torch.nn.Module | None]
) -> torch.nn.Module:
    """Replace, in place and recursively, every submodule for which ``replacement(module)``
    returns a module (None keeps it); return the model, or its replacement."""
    replaced = replacement(model)
    if replaced is not None:
        return replaced
    for name, child in model.named_children():
        setattr(model, name, replace_modules(child, replacement))
    return model


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``torch.nn.Linear``, ``ReLU``, ``Sigmoid`` and ``ELU`` in ``model`` by its
    manualbp twin, in place and recursively, and return the model.

    The twins share the original Parameter objects (same values, device, dtype; an optimizer
    built before the conversion keeps working), so outputs and gradients equal the original's.
    Only those exact classes are replaced (not their subclasses); any other module is left as it
    is. Hooks registered on a replaced module are not carried over. If ``model`` itself is one of
    those layers, the returned twin replaces it.
    """
    return replace_modules(model, _manualbp_twin)
