"""A twin that shares a module's state: the same settings and the same Parameter and buffer
objects, under another class. ``convert`` and ``to_torch`` use it for the layers whose twin is
their own torch.nn base class (Conv2d, BatchNorm2d, the pools, Dropout, Flatten)."""

from __future__ import annotations

import torch

from manualbp.layers.base import Layer


def share_state(module: torch.nn.Module, kind: type[torch.nn.Module]) -> torch.nn.Module:
    """A ``kind`` module with ``module``'s settings and its own Parameter and buffer objects (an
    optimizer built for one trains the other; running statistics are the same tensors). Hooks
    and submodules are not carried over."""
    twin = kind.__new__(kind)
    torch.nn.Module.__init__(twin)
    fresh = set(vars(twin))  # the module machinery (hook dicts, ...): the twin keeps its own
    for key, value in vars(module).items():
        if key not in fresh:
            twin.__dict__[key] = value  # settings: in_channels, stride, eps, momentum, ...
    twin._parameters = dict(module._parameters)
    twin._buffers = dict(module._buffers)
    twin._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    twin.training = module.training
    return twin


class SharesState(Layer):
    """Mixin: ``from_torch`` and ``to_torch`` by :func:`share_state` (settings, Parameters and
    buffers shared). A layer refuses settings it does not support in ``check_convertible``."""

    @classmethod
    def check_convertible(cls, module: torch.nn.Module) -> None:
        """Raise ``NotConvertibleError`` (saying why) if ``module``'s settings are not supported."""

    @classmethod
    def from_torch(cls, module: torch.nn.Module) -> torch.nn.Module:
        cls.check_convertible(module)
        return share_state(module, cls)

    def to_torch(self) -> torch.nn.Module:
        return share_state(self, self.torch_twin)
