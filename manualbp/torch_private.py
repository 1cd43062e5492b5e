"""Every torch-private name manualbp relies on, in one place.

PyTorch offers no public API for these, and any release may rename or drop one. The ones manualbp
calls through this module are looked up once, at import; one that is missing is replaced by the
fallback that keeps results right (at some cost in speed, or a check skipped) and a
``RuntimeWarning`` says so, naming what is lost: never a silent change of behaviour.
``tests/test_torch_private.py`` checks that every name in ``PRIVATE_NAMES`` exists on the
installed torch, so an upgrade that drops one fails a test instead of only warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch


class TorchPrivateMissingWarning(RuntimeWarning):
    """A torch-private name manualbp uses is missing from this torch: a fallback is used."""


def lookup(owner: Any, name: str, where: str, fallback: Any, without_it: str) -> Any:
    """``owner.name``, or ``fallback`` with a warning saying what ``without_it`` costs."""
    found = getattr(owner, name, None)
    if found is not None:
        return found
    warnings.warn(
        f"manualbp: this torch ({torch.__version__}) has no {where}.{name}: {without_it}. manualbp's tests "
        f"say which torch versions have it (tests/test_torch_private.py); install one of those, or report it",
        TorchPrivateMissingWarning,
        stacklevel=2,
    )
    return fallback


# Inside a torch.func transform (vmap, grad, jacrev, jvp)? torch.func has no public question for it.
# Without it: assume yes, always (the Functions' setup_context style, no buffer reuse: slower, right).
functorch_transforms_active: Callable[[], bool] = lookup(
    torch._C, "_are_functorch_transforms_active", "torch._C", lambda: True,
    "every layer takes its torch.func-safe path (slower: no per-call fast path, no buffer reuse)",
)

# Is this tensor wrapped by torch.func, or batched by autograd.grad(is_grads_batched=True) (the
# older vmap that gradcheck uses)? No public API tells. Without them: treat every tensor as wrapped
# (backward never overwrites a buffer it made, the checks that read values are skipped).
is_functorch_wrapped_tensor: Callable[[torch.Tensor], bool] = lookup(
    torch._C._functorch, "is_functorch_wrapped_tensor", "torch._C._functorch", lambda tensor: True,
    "every tensor is treated as wrapped by torch.func (no buffer reuse in backward, value checks such as "
    "a target's class range skipped)",
)
is_legacy_batched_tensor: Callable[[torch.Tensor], bool] = lookup(
    torch._C._functorch, "is_legacy_batchedtensor", "torch._C._functorch", lambda tensor: True,
    "every tensor is treated as batched (no buffer reuse in backward, value checks skipped)",
)

# Autocast on for any device at all, in one C call (the public check wants a device type).
# Without it: assume it may be on and ask per device (slower per layer call, same results).
any_autocast_enabled: Callable[[], bool] = lookup(
    torch._C, "_is_any_autocast_enabled", "torch._C", lambda: True,
    "autocast is checked per device on every layer call (slower)",
)


def forward_ad_level() -> int:
    """The innermost forward-AD level, -1 outside every ``forward_ad.dual_level()``. Without
    ``torch.autograd.forward_ad._current_level``: 0 (save for forward mode always: slower, right)."""
    return getattr(torch.autograd.forward_ad, "_current_level", 0)


if not hasattr(torch.autograd.forward_ad, "_current_level"):
    lookup(torch.autograd.forward_ad, "_current_level", "torch.autograd.forward_ad", 0,
           "every layer keeps what forward-mode AD would need (slower)")


# Every torch-private name manualbp uses, here or where it is used (their modules say why), for
# the test that each exists on the installed torch.
PRIVATE_NAMES = (
    # this module
    "torch._C._are_functorch_transforms_active",
    "torch._C._functorch.is_functorch_wrapped_tensor",
    "torch._C._functorch.is_legacy_batchedtensor",
    "torch._C._is_any_autocast_enabled",
    "torch.autograd.forward_ad._current_level",
    # manualbp/layers/activations.py: aten's backward kernels, by overload
    "torch.ops.aten.threshold_backward",
    "torch.ops.aten.hardtanh_backward.default",
    # manualbp/layers/losses.py: a device-side assertion without a sync
    "torch._assert_async",
    # manualbp/testing/transforms.py: a fresh Dynamo cache before compiling
    "torch._dynamo.reset",
    # manualbp/bench/memory.py: the profiler's event kinds
    "torch._C._profiler._EventType",
)

# Module internals manualbp reads or writes (sharing.py and mlp.py share Parameter objects between
# twins; nn.replace_modules lists every place of a module used twice): attributes of every Module.
MODULE_INTERNALS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")
