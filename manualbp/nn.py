"""manualbp's layers as ``torch.nn.Module``s: drop-in twins of the torch.nn ones.

The Modules are defined with their layers in :mod:`manualbp.layers` and gathered here. ``Linear``,
``ReLU``, ``Sigmoid``, ``ELU``, ... subclass their torch.nn twins, so parameter names, shapes,
default initialisation, ``state_dict`` and ``repr`` are PyTorch's own (and code that asks
``isinstance(m, torch.nn.Linear)`` still works); only ``forward`` differs: it calls the layer's
public function, whose backward is the slide formula. ``convert`` swaps them into an existing
model; ``MLP`` builds the slides' nets.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence

import torch
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from manualbp import layers
from manualbp.errors import NotConvertibleError
from manualbp.gpt import GPT
from manualbp.layers.activations import *  # noqa: F403
from manualbp.layers.activations import ReLU
from manualbp.layers.attention import *  # noqa: F403
from manualbp.layers.base import ACTIVATIONS, CONVERTIBLE, HAND_WRITTEN, LOSSES, TORCH_TWINS
from manualbp.layers.conv import *  # noqa: F403
from manualbp.layers.conv import Conv2d
from manualbp.layers.dropout import *  # noqa: F403
from manualbp.layers.elementwise import *  # noqa: F403
from manualbp.layers.embedding import *  # noqa: F403
from manualbp.layers.linear import *  # noqa: F403
from manualbp.layers.linear import Linear, LinearReLU, share_parameters
from manualbp.layers.losses import *  # noqa: F403
from manualbp.layers.matmul import *  # noqa: F403
from manualbp.layers.mlp import *  # noqa: F403
from manualbp.layers.multihead_attention import *  # noqa: F403
from manualbp.layers.normalization import *  # noqa: F403
from manualbp.layers.normalization import GroupNorm
from manualbp.layers.pooling import *  # noqa: F403
from manualbp.layers.pooling import MaxPool2d
from manualbp.layers.products import *  # noqa: F403
from manualbp.layers.reductions import *  # noqa: F403
from manualbp.layers.resampling import *  # noqa: F403
from manualbp.layers.shape import *  # noqa: F403
from manualbp.layers.shape import Flatten, Unflatten
from manualbp.layers.softmax import *  # noqa: F403

__all__ = [
    *(name for family in layers.__all__ for name in getattr(layers, family).__all__),
    "ACTIVATIONS",
    "LOSSES",
    "MLP",
    "LeNet",
    "SampleConvNet",
    "GPT",
    "convert",
    "unconverted",
    "replace_modules",
    "replace_functions",
    "share_parameters",
]


class MLP(torch.nn.Sequential):
    """A fully connected net: Linear → activation → ... → Linear (→ output activation).

    ``sizes = [784, 512, 256, 10]`` gives the slides' MNIST net Z1 = f(X W1 + b1),
    Z2 = f(Z1 W2 + b2), logits = Z2 W3 + b3. ``activation``: the name of any manualbp activation
    (the keys of ``ACTIVATIONS``: "relu", "sigmoid", "elu", ...); ``output_activation``: the same
    choices or None. With ``fuse=True`` each hidden Linear → ReLU pair is one :class:`LinearReLU`
    node (same numbers, less time and memory). ``init="zeros"`` starts every parameter at 0 --
    right for a single layer (linear regression is convex), wrong for hidden layers (their units
    would stay identical), so it is refused there. Input ``(*, sizes[0])`` -> output ``(*, sizes[-1])``.
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
            if name is not None and name not in ACTIVATIONS:
                raise ValueError(
                    f"MLP: unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
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
        for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layer_activation = activation if index < last else output_activation
            if layer_activation == "relu" and fuse:
                layers.append(LinearReLU(fan_in, fan_out, **factory))
                continue
            layers.append(Linear(fan_in, fan_out, **factory))
            if layer_activation is not None:
                layers.append(ACTIVATIONS[layer_activation]())
        super().__init__(*layers)
        if init == "zeros":
            for parameter in self.parameters():
                torch.nn.init.zeros_(parameter)


class LeNet(torch.nn.Sequential):
    """A LeNet-5-style conv net of manualbp layers for 28×28 images given as flat rows:
    (N, 784) → unflatten to (N, 1, 28, 28) → conv 5×5 (6, padding 2) → ReLU → max pool 2 →
    conv 5×5 (16) → ReLU → max pool 2 → flatten (N, 400) → Linear 120 → ReLU → Linear 84 → ReLU
    → Linear → (N, num_classes) logits. ``in_channels`` > 1 takes rows of C·784 values.
    ``group_norm=True`` puts a GroupNorm (2 and 4 groups) after each conv: a LeNet whose every layer
    has a per-example gradient (batch norm has none), for private training (``dp=on``)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, group_norm: bool = False, device=None,
                 dtype=None) -> None:
        factory = {"device": device, "dtype": dtype}

        def norm(groups: int, channels: int) -> list[torch.nn.Module]:
            return [GroupNorm(groups, channels, **factory)] if group_norm else []

        super().__init__(
            Unflatten(1, (in_channels, 28, 28)),  # a view: its backward is a reshape
            Conv2d(in_channels, 6, 5, padding=2, **factory),
            *norm(2, 6),
            ReLU(),
            MaxPool2d(2),
            Conv2d(6, 16, 5, **factory),
            *norm(4, 16),
            ReLU(),
            MaxPool2d(2),
            Flatten(),
            LinearReLU(400, 120, **factory),
            LinearReLU(120, 84, **factory),
            Linear(84, num_classes, **factory),
        )


class SampleConvNet(torch.nn.Sequential):
    """Opacus' private-MNIST network, of manualbp layers, for 28×28 images given as flat rows:
    (N, 784) → (N, 1, 28, 28) → conv 8×8 (16, stride 2, padding 3) → ReLU → max pool 2 (stride 1)
    → conv 4×4 (32, stride 2) → ReLU → max pool 2 (stride 1) → flatten (N, 512) → Linear 32 → ReLU
    → Linear → (N, num_classes) logits. No batch norm: every layer has a per-example gradient."""

    def __init__(self, num_classes: int = 10, device=None, dtype=None) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(
            Unflatten(1, (1, 28, 28)),
            Conv2d(1, 16, 8, stride=2, padding=3, **factory),
            ReLU(),
            MaxPool2d(2, 1),
            Conv2d(16, 32, 4, stride=2, **factory),
            ReLU(),
            MaxPool2d(2, 1),
            Flatten(),
            LinearReLU(32 * 4 * 4, 32, **factory),
            Linear(32, num_classes, **factory),
        )


def replace_modules(
    model: torch.nn.Module, replacement: Callable[[torch.nn.Module], torch.nn.Module | None]
) -> torch.nn.Module:
    """Replace, in place and recursively, every submodule for which ``replacement(module)``
    returns a module (None keeps it); return the model, or its replacement. A module used in
    several places (one instance twice) is replaced once, and every place gets that one
    replacement: what was shared stays shared. The hooks registered on a replaced module
    (forward, forward pre-, backward, state_dict, load_state_dict) are its replacement's, and their
    handles still remove them."""
    done: dict[int, torch.nn.Module] = {}  # id(module) -> what replaces it (itself if kept)

    def replace(module: torch.nn.Module) -> torch.nn.Module:
        if id(module) not in done:
            replaced = replacement(module)
            if replaced is not None:
                _carry_hooks(module, replaced)
            else:
                # _modules, not named_children(): that one lists a module used twice only once
                for name, child in list(module._modules.items()):
                    if child is not None:
                        setattr(module, name, replace(child))
                replaced = module
            done[id(module)] = replaced
        return done[id(module)]

    return replace(model)


# torch.nn.Module's hook registries (dicts, and the flag of full backward hooks), as this torch names them
_HOOK_ATTRIBUTES = tuple(name for name in vars(torch.nn.Module()) if "hook" in name)


def _carry_hooks(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Give ``target`` the very hook registries of ``source`` (the same dicts: a handle returned by
    ``register_forward_hook`` on ``source`` removes the hook from ``target``)."""
    for name in _HOOK_ATTRIBUTES:
        if name in vars(source):
            target.__dict__[name] = vars(source)[name]


def replace_functions(model: torch.nn.Module, replacements: dict[Callable, Callable]) -> torch.nn.Module:
    """In every submodule of ``model``, replace each setting that is one of the functions in
    ``replacements`` (``nn.TransformerEncoderLayer.activation = F.relu``) by its replacement, in place."""
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if callable(value) and not isinstance(value, (torch.nn.Module, torch.Tensor, type)):
                try:
                    replacement = replacements.get(value)
                except TypeError:  # an unhashable callable: nothing of ours
                    continue
                if replacement is not None:
                    module.__dict__[name] = replacement
    return model


def _manualbp_twin(module: torch.nn.Module) -> torch.nn.Module | None:
    """The manualbp layer that replaces ``module``, sharing its parameters; None if none does (no
    twin, or settings the twin does not support)."""
    layer = CONVERTIBLE.get(type(module))
    if layer is None or _reparametrized(module):
        return None
    try:
        return layer.from_torch(module).train(module.training)
    except NotConvertibleError:
        return None


def _reparametrized(module: torch.nn.Module) -> str | None:
    """Why ``module`` keeps PyTorch's layer although its class has a twin: a weight computed from
    other tensors before each forward (torch.nn.utils.parametrize, or the old weight_norm /
    spectral_norm hooks), which the twin would not recompute; None if nothing of the kind."""
    if torch.nn.utils.parametrize.is_parametrized(module):
        return f"parametrized {', '.join(module.parametrizations)} (torch.nn.utils.parametrize) is not converted"
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, (WeightNorm, SpectralNorm)):
            function = "weight_norm" if isinstance(hook, WeightNorm) else "spectral_norm"
            return f"{hook.name} from torch.nn.utils.{function} is not converted"
    return None


# Leaf modules whose backward is a reshape or nothing: keeping PyTorch's is no loss.
_SHAPE_ONLY = (torch.nn.Identity, torch.nn.Flatten, torch.nn.Unflatten)


def unconverted(model: torch.nn.Module) -> list[str]:
    """The modules of ``model`` that keep PyTorch's backward although they compute something: every
    leaf module that is not a manualbp layer, not a loss and not a pure reshape, as
    ``"name (Type: why)"`` (why: it has no manualbp twin, or the twin refuses its settings)."""
    left = []
    inside_layers: list[str] = []  # a manualbp layer's own submodules (MultiheadAttention's out_proj) are its business
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside_layers):
            continue
        if type(module) in TORCH_TWINS:
            inside_layers.append(f"{name}." if name else "")
            continue
        reparametrized = _reparametrized(module)
        if reparametrized is not None:
            left.append(f"{name or '(the model)'} ({type(module).__name__}: {reparametrized})")
            continue
        if next(module.children(), None) is not None:
            continue
        if isinstance(module, (torch.nn.modules.loss._Loss, *_SHAPE_ONLY)):
            continue
        layer = CONVERTIBLE.get(type(module))
        subclassed = next((twin for twin in CONVERTIBLE if isinstance(module, twin)), None)
        why = "no manualbp twin"
        if layer is not None:
            try:
                # from_torch builds the twin on the same Parameters, leaving the module as it was
                layer.check_convertible(module) if hasattr(layer, "check_convertible") else layer.from_torch(module)
                why = "not converted yet: convert(model) replaces it"
            except NotConvertibleError as error:
                why = str(error).split(";")[0].removeprefix(f"{type(module).__name__}: ")
        elif subclassed is not None:
            why = f"a subclass of {subclassed.__name__} is not converted"
        left.append(f"{name or '(the model)'} ({type(module).__name__}: {why})")
    return left


def convert(model: torch.nn.Module, strict: bool = False) -> torch.nn.Module:
    """Replace every torch layer that has a manualbp twin (``torch.nn.Linear``, ``Conv2d``,
    ``BatchNorm2d``, ``ReLU``, ``MaxPool2d``, ...: the keys of ``manualbp.layers.base.CONVERTIBLE``)
    in ``model`` by that twin, in place and recursively, and return the model.

    The twins share the original Parameter and buffer objects (same values, device, dtype; an
    optimizer built before the conversion keeps working; batch norm's running statistics are the
    same tensors), so outputs and gradients equal the original's. Only those exact classes are
    replaced (not their subclasses), and only with settings the twin supports (a Conv2d with
    padding_mode "reflect" stays torch's); losses are left as they are. Hooks registered on a
    replaced module (forward, pre-forward, backward, state_dict) are carried over to its twin.
    If ``model`` itself is one of those layers, the returned twin replaces it. A module's setting
    that is a torch function manualbp implements (``nn.TransformerEncoderLayer``'s
    ``activation=F.relu``) becomes manualbp's function.

    What is left with PyTorch's backward (see :func:`unconverted`) is reported: with
    ``strict=False`` in one warning, with ``strict=True`` as a ``NotConvertibleError`` (raised
    before anything is replaced). Call ``unconverted(model)`` for the list itself.
    """
    if strict:
        try:
            left = unconverted(replace_modules(copy.deepcopy(model), _manualbp_twin))
        except RuntimeError:  # a model that cannot be copied (old weight_norm's weight is no leaf)
            left = [entry for entry in unconverted(model) if "not converted yet" not in entry]
        if left:
            raise NotConvertibleError(
                f"convert(strict=True): {len(left)} module(s) would keep PyTorch's backward: {'; '.join(left)}; "
                f"replace them by hand, or use strict=False"
            )
    converted = replace_functions(replace_modules(model, _manualbp_twin), HAND_WRITTEN)
    left = unconverted(converted)
    if left and not strict:
        warnings.warn(
            f"convert: {len(left)} module(s) keep PyTorch's backward: {'; '.join(left)}", UserWarning, stacklevel=2
        )
    return converted
