"""``manualbp.hand_written()``: run manualbp's layers in place of the torch functions that anyone's
forward calls.

``manualbp.convert`` swaps Modules; a forward that calls ``F.gelu``, ``F.cross_entropy``,
``F.scaled_dot_product_attention``, ``torch.softmax`` or ``q @ k.mT`` directly keeps PyTorch's
backward whatever convert does. Under this mode those calls run the manualbp function that
computes the same thing (each layer's public function says which torch callables it replaces with
``@hand_writes``), so their backward is the hand-written formula::

    with manualbp.hand_written():
        loss = F.cross_entropy(model(x), y)   # manualbp's cross_entropy and every layer under it
    loss.backward()

Anything manualbp does not implement, and any call with arguments its function does not take
(``F.scaled_dot_product_attention(..., dropout_p=0.1)``, a vector ``matmul``, integer or complex
tensors), runs PyTorch's own op unchanged.
It is a ``torch.overrides.TorchFunctionMode``: it sees every torch call made while it
is active on this thread, costs one dictionary look-up for a call it passes through, and works under
``torch.compile`` (Dynamo traces the mode and the manualbp Functions it picks).
"""

from __future__ import annotations

from torch import Tensor
from torch.overrides import TorchFunctionMode

from manualbp.layers.base import HAND_WRITTEN

__all__ = ["hand_written", "HandWrittenMode"]


class HandWrittenMode(TorchFunctionMode):
    """The mode behind :func:`hand_written`. ``calls`` counts, per torch callable, how many calls
    ran manualbp's function (``replaced``) and how many fell back to PyTorch's (``fell_back``)."""

    def __init__(self) -> None:
        super().__init__()
        self.replaced: dict[str, int] = {}
        self.fell_back: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        manualbp_function = HAND_WRITTEN.get(func)
        if manualbp_function is not None:
            # While this runs, the mode is off (PyTorch pops it), so the torch ops inside the
            # manualbp function are PyTorch's own.
            try:
                result = manualbp_function(*args, **kwargs)
            except NotImplementedError:
                if _any_floating_tensor(args):  # integer arithmetic (indices, lengths) has no backward to miss
                    _count(self.fell_back, func)
            except TypeError:
                # manualbp computes floating-point tensors only: integer, bool or complex ones go to
                # PyTorch's op (which computes them, or says why not); any other TypeError is ours.
                if not _any_tensor_not_floating(args, kwargs):
                    raise
                _count(self.fell_back, func)
            else:
                _count(self.replaced, func)
                return result
        return func(*args, **kwargs)


def _any_floating_tensor(args) -> bool:
    return any(isinstance(arg, Tensor) and arg.is_floating_point() for arg in args)


def _any_tensor_not_floating(args, kwargs) -> bool:
    """Whether a tensor among the arguments (or in a list or tuple of them) is integer, bool or complex."""
    for value in (*args, *kwargs.values()):
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, Tensor) and not item.is_floating_point():
                return True
    return False


def _count(counts: dict[str, int], func) -> None:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    counts[name] = counts.get(name, 0) + 1


def hand_written() -> HandWrittenMode:
    """A context manager under which the torch functions manualbp implements run manualbp's
    Functions (same values, the hand-written backward); see :mod:`manualbp.mode`.

    ``with manualbp.hand_written() as mode: ...``; afterwards ``mode.replaced`` and
    ``mode.fell_back`` count the calls of each torch callable that ran manualbp's function or
    PyTorch's."""
    return HandWrittenMode()
