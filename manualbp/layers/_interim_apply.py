"""Interim: how the conv-net layers apply their Functions until the shared machinery merges.

The shared layer machinery (issue 8) will own this: eager / compile copies of each Function and
autocast dispatch. Until then, ``apply_function`` does the part the conv-net layers need to be
usable and tested now, the same way ``manualbp.functional._function`` does for the lecture's
layers; at integration each public function's ``apply_function(XFunction, ...)`` line becomes the
machinery's call and this file goes.

* plain eager autograd: the Function entered through the classic ``forward(ctx, *args)`` (no
  per-call ``inspect.signature`` binding, ~45 µs per layer per step on a 2-core CPU);
* torch.compile: a copy without ``jvp`` (Dynamo refuses Functions that define one);
* torch.func transforms (vmap, grad, jacrev, jvp): the Function itself.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

# Keyed by the layer's name (a str constant at the call, as in manualbp.functional._apply): Dynamo
# cannot hash a Function class, nor read an attribute or the __name__ of one.
_FUNCTIONS: dict[str, type[Function]] = {}
_EAGER: dict[str, type[Function]] = {}
_FOR_COMPILE: dict[str, type[Function]] = {}


def _eager_entry(function: type[Function]) -> type[Function]:
    def forward(ctx, *args):
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    methods = {"forward": staticmethod(forward), "backward": staticmethod(function.backward)}
    return type(function.__name__, (Function,), methods | {"jvp": staticmethod(function.jvp)})


def _without_jvp(function: type[Function]) -> type[Function]:
    return type(function.__name__, (function,), {"jvp": staticmethod(Function.jvp)})


def with_copies(name: str):
    """Class decorator: register the Function as ``name`` with its eager and compile copies."""

    def register(function: type[Function]) -> type[Function]:
        _FUNCTIONS[name], _EAGER[name], _FOR_COMPILE[name] = function, _eager_entry(function), _without_jvp(function)
        return function

    return register


def apply_function(name: str, *args):
    """The Function registered as ``name``, applied through the copy that suits the current mode."""
    if torch.compiler.is_compiling():
        return _FOR_COMPILE[name].apply(*args)
    if torch._C._are_functorch_transforms_active():  # vmap, grad, jacrev, jvp of torch.func
        return _FUNCTIONS[name].apply(*args)
    return _EAGER[name].apply(*args)
