"""What every manualbp layer shares, written once, so that a layer file declares only its layer.

A layer file (``linear.py``, ``activations.py``, ``losses.py``) gives, for each layer:

* its Function, ``class TanhFunction(LayerFunction)``, in the style of PyTorch's docs (forward,
  setup_context, backward, jvp). :class:`LayerFunction` derives from it, once, the copies that
  :func:`apply` picks between (see there).
* its public function, ``tanh(input)``: argument checks, then ``apply(TanhFunction, input)``
  (with ``autocast_to=`` where PyTorch's own op changes dtype under autocast).
* its Module, whose class statement declares what the rest of the package needs to know::

      class Tanh(torch.nn.Tanh, Activation, torch_twin=torch.nn.Tanh, name="tanh")

  ``torch_twin`` is the torch.nn Module (or one made of torch built-ins) that computes the same
  thing with PyTorch's own autograd. :class:`Layer` registers the class, and from that registry:
  ``manualbp.convert`` replaces exact ``torch_twin`` instances by the class (losses excepted),
  ``manualbp.reference.to_torch`` does the inverse (the gradient audit, the benchmark), the explicit
  engine ``manualbp.manual.backprop`` runs exactly the registered classes through their
  ``function_and_arguments``, ``manualbp.nn.MLP`` takes any registered ``Activation`` by ``name``
  and the configs any registered ``Loss`` by ``name``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function

from manualbp import torch_private

# ----------------------------------------------------------------------------------------------
# The Function: eager and compile copies, autocast
# ----------------------------------------------------------------------------------------------


class LayerFunction(Function):
    """Base of manualbp's Functions: written in the separate forward / setup_context style that
    ``torch.func`` needs, with two copies of each made from the same methods for the cases where
    that style costs or breaks:

    * plain eager autograd (training): for setup_context-style Functions, every ``apply`` binds its
      arguments with ``inspect.signature`` (torch.autograd.function._bind_default_args), about
      45 µs per layer per step on a 2-core CPU, more than a whole small layer. The eager copy
      enters through the classic ``forward(ctx, *args)``, which runs the same forward and
      setup_context.
    * torch.compile: Dynamo refuses any Function that defines ``jvp`` ("Unsupported custom jvp"),
      and forward-mode AD does not run inside a compiled graph, so the compile copy has none.
    """

    generate_vmap_rule = True  # forward and backward are plain torch ops: torch.func derives vmap

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.manualbp_function = cls  # what every copy names too: manualbp.coverage reads it from a graph's nodes
        eager_copy, compile_copy = _eager_entry(cls), _without_jvp(cls)

        def copy_for_this_call() -> type[Function]:
            if torch.compiler.is_compiling():
                return compile_copy
            if _functorch_transforms_active():
                return cls  # vmap, grad, jacrev, jvp of torch.func need the setup_context style
            return eager_copy

        # A staticmethod, because torch.compile can call one on a Function class but cannot read
        # any other custom attribute of it (nor use the class as a dict key).
        cls.copy_for_this_call = staticmethod(copy_for_this_call)


def _eager_entry(function: type[Function]) -> type[Function]:
    """``function`` entered through the classic ``forward(ctx, *args)``: same forward,
    setup_context, backward and jvp, without the per-call signature binding."""

    def forward(ctx, *args):
        output = function.forward(*args)
        if _forward_ad_level() < 0:  # no dual tensors anywhere: jvp cannot run, keep nothing for it
            ctx.save_for_forward = _keep_nothing
        function.setup_context(ctx, args, output)
        return output

    def backward(ctx, *grad_outputs):
        session = PER_EXAMPLE.session
        if session is None:
            return batch_backward(ctx, *grad_outputs)
        # inside manualbp.per_example(...): the batch's terms, then their sum
        targets = session.record(function, ctx, grad_outputs)
        grads = batch_backward(ctx, *grad_outputs)
        session.add_batch_gradients(targets, grads)
        return grads

    batch_backward = function.backward
    methods = {"forward": forward, "backward": backward, "jvp": function.jvp}
    attributes = {name: staticmethod(m) for name, m in methods.items()}
    return type(function.__name__, (Function,), attributes | {"manualbp_function": function})


class _PerExampleSlot:
    """Where ``manualbp.per_example`` puts its session while a block is active (None outside): the
    eager backward of every Function reads it once. A plain attribute, not a thread-local, because
    autograd may run a backward on a thread of its own (one per device)."""

    session = None


PER_EXAMPLE = _PerExampleSlot()


# torch-private (manualbp/torch_private.py): the innermost forward-AD level, -1 outside every
# ``forward_ad.dual_level()`` (gradcheck's forward-AD checks run inside one; torch.func.jvp takes
# the original class).
_forward_ad_level = torch_private.forward_ad_level


def _keep_nothing(*tensors: Tensor) -> None:
    """``ctx.save_for_forward`` where forward-mode AD is off (it costs µs per node and step)."""


def _without_jvp(function: type[Function]) -> type[Function]:
    """``function`` minus its ``jvp``, for torch.compile."""
    methods = {name: staticmethod(getattr(function, name)) for name in ("forward", "setup_context", "backward")}
    return type(function.__name__, (Function,), methods | {"generate_vmap_rule": True, "manualbp_function": function})


# torch-private (manualbp/torch_private.py, with its fallback): torch.func has no public "am I
# inside vmap/grad/jacrev/jvp?".
_functorch_transforms_active = torch_private.functorch_transforms_active


def is_traced(tensor: Tensor) -> bool:
    """True under torch.compile or a torch.func transform, where a tensor's values can't be read."""
    if torch.compiler.is_compiling():
        return True
    return _is_functorch_wrapped(tensor) or _is_legacy_batched(tensor)


# torch-private (manualbp/torch_private.py, with their fallbacks): no public API tells a
# torch.func-wrapped tensor from a plain one, nor one batched by autograd.grad(...,
# is_grads_batched=True) (the older vmap, which gradcheck uses). Looked up once: is_traced runs
# several times per layer and step.
_is_functorch_wrapped = torch_private.is_functorch_wrapped_tensor
_is_legacy_batched = torch_private.is_legacy_batched_tensor


def owns_buffers(*tensors: Tensor) -> bool:
    """Whether a backward formula may overwrite the buffers it has just made itself (saving a
    buffer and a pass): not when autograd records the backward (``create_graph=True``, double
    backward), nor under torch.compile or a torch.func transform, where one of ``tensors`` (the
    incoming gradient, say) may be batched while the buffer is not."""
    if torch.is_grad_enabled() or _functorch_transforms_active():
        return False
    return not any(is_traced(tensor) for tensor in tensors)


def multiply(first: Tensor, *factors: Tensor, into_first: bool) -> Tensor:
    """first · factors[0] · factors[1] · ..., left to right: written into ``first`` (a buffer the
    caller has just made, see :func:`owns_buffers`) when ``into_first``, else into new tensors."""
    for factor in factors:
        first = first.mul_(factor) if into_first else first * factor
    return first


def one_minus(tensor: Tensor, in_place: bool) -> Tensor:
    """1 − t: written over ``tensor`` (a buffer the caller has just made) when ``in_place``; as
    −t + 1, which is 1 − t to the bit."""
    return tensor.neg_().add_(1) if in_place else 1 - tensor


def apply(function: type[LayerFunction], *args, autocast_to: str | None = None):
    """Apply ``function`` to ``args`` the way PyTorch runs its own op, through the copy that fits.

    ``torch.amp.custom_fwd`` does not work with the separate ``setup_context`` style
    (pytorch/pytorch#132388), so the cast happens here, outside the Function: under autocast,
    floating-point tensors are cast to the autocast dtype (``autocast_to="lower"``, as PyTorch does
    for matmuls) or to float32 (``"float32"``, as for losses), and the Function then runs
    with autocast off, so forward and backward see one dtype. The casts are ordinary autograd ops,
    so gradients reach float32 parameters in float32. As in PyTorch, float64 tensors are left as
    they are. Outside autocast this is just ``function.apply(*args)``.
    """
    if torch.jit.is_tracing():
        raise torchscript_error(f"torch.jit.trace through {function.__name__}")
    chosen = function.copy_for_this_call()
    if not _any_autocast_enabled():  # the common case, checked in one call (this runs every layer, every step)
        return chosen.apply(*args)
    device_type = args[0].device.type
    if not autocast_enabled(device_type):
        return chosen.apply(*args)
    if autocast_to is not None:
        dtype = torch.get_autocast_dtype(device_type) if autocast_to == "lower" else torch.float32
        args = tuple(arg.to(dtype) if _autocast_eligible(arg) else arg for arg in args)
    with torch.autocast(device_type, enabled=False):
        return chosen.apply(*args)


def apply_inplace(inplace_function: type[LayerFunction], function: type[LayerFunction], input: Tensor, *args):
    """Apply a layer in place, as ``torch.nn.ReLU(inplace=True)`` does: ``input`` holds the result
    afterwards and is returned, and autograd knows it (its other users see the new values).

    Eager autograd runs ``inplace_function``, whose ``setup_context`` marks the input dirty
    (``ctx.mark_dirty``) and whose backward is the layer's own. torch.compile and the torch.func
    transforms take no such Function (functorch refuses to save an input returned as-is, Dynamo
    rejects it, forward-mode AD wants the tangent modified in place), so there the out-of-place
    ``function`` runs and its result is copied over the input: the same values and gradients
    (``copy_`` passes the gradient through), one more buffer of the input's size.
    """
    if torch.compiler.is_compiling() or _functorch_transforms_active():
        return input.copy_(apply(function, input, *args))
    return apply(inplace_function, input, *args)


# torch-private (manualbp/torch_private.py): autocast on for any device at all (one C call; the
# public check wants a device).
_any_autocast_enabled = torch_private.any_autocast_enabled


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, False for a device autocast does not know (meta,
    where ``is_autocast_enabled`` raises "unknown device type for autocast")."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def dtype_under_autocast(tensor: Tensor) -> torch.dtype:
    """The dtype ``tensor`` has once :func:`apply` casts it for a matmul-like op
    (``autocast_to="lower"``): the autocast dtype where autocast is on for its device and casts it
    (float32, float16, bfloat16), else its own. Argument checks compare these, since they run
    before the cast (a bfloat16 input and a float32 weight are one dtype under bfloat16 autocast)."""
    if _any_autocast_enabled() and _autocast_eligible(tensor) and autocast_enabled(tensor.device.type):
        return torch.get_autocast_dtype(tensor.device.type)
    return tensor.dtype


def computes_in_float32(input: Tensor, *parameters: Tensor | None) -> bool:
    """Whether a normalization runs as PyTorch's does on a float16/bfloat16 input with float32
    parameters or statistics (mixed precision, e.g. under autocast): in float32, its output cast
    back to the input's dtype."""
    return input.dtype in (torch.float16, torch.bfloat16) and any(
        parameter is not None and parameter.dtype == torch.float32 for parameter in parameters
    )


def torchscript_error(what: str) -> RuntimeError:
    """The one error for TorchScript: it cannot hold a Python autograd.Function (script cannot
    compile one; trace records one that ``torch.jit.save`` cannot export)."""
    return RuntimeError(
        f"{what}: TorchScript cannot hold manualbp's layers (their backward is a Python "
        f"autograd.Function); export with torch.export.export(model, (example_input,)), speed up "
        f"with torch.compile(model), or script manualbp.reference.to_torch(model), the same model "
        f"with PyTorch's built-in layers"
    )


def _autocast_eligible(arg) -> bool:
    """Autocast casts float32, float16 and bfloat16 tensors, never float64 (as PyTorch does)."""
    return isinstance(arg, Tensor) and arg.dtype in (torch.float32, torch.float16, torch.bfloat16)


def as_rows(tensor: Tensor) -> Tensor:
    """``(*, features)`` -> (rows, features), rows = the product of the leading sizes (1 for a vector):
    a view where it can be. Sizes are spelled out, not ``reshape(-1, features)``, which fails for
    zero features ("cannot reshape tensor of 0 elements into shape [-1, 0]")."""
    if tensor.dim() == 2:
        return tensor  # already rows (the common case, every step: no reshape to dispatch)
    return tensor.reshape(math.prod(tensor.shape[:-1]), tensor.shape[-1])


def check_floating(name: str, argument: str, tensor: Tensor) -> None:
    """The argument checks every layer shares: ``tensor`` must be floating point."""
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point {argument}, got dtype {tensor.dtype}; "
            f"convert it first, e.g. {argument}.float()"
        )


# ----------------------------------------------------------------------------------------------
# The Module: what convert, to_torch, the explicit engine, MLP and the configs read
# ----------------------------------------------------------------------------------------------

def refuse_inplace(function: str, why: str) -> None:
    """``inplace=True`` of a torch.nn.functional signature that the hand-written layer does not
    run: NotImplementedError, so that a caller (``manualbp.hand_written()``) runs torch's instead."""
    raise NotImplementedError(f"{function}: inplace=True is not hand-written ({why}); pass inplace=False, or "
                              f"call torch.nn.functional.{function} for the in-place version")


# Filled by the layers' own public functions (@hand_writes), never by hand.
HAND_WRITTEN: dict[Callable, Callable] = {}  # a torch callable -> the manualbp function computing the same


def hand_writes(*torch_callables: Callable) -> Callable[[Callable], Callable]:
    """Decorator of a layer's public function: it computes what each of ``torch_callables``
    computes (``@hand_writes(torch.nn.functional.gelu)`` above ``def gelu(input, approximate="none")``),
    taking the same arguments, so that ``manualbp.hand_written()`` may run it in their place
    inside anyone's forward. A function that cannot take some of the torch callable's arguments
    raises ``NotImplementedError``; the mode then runs the torch callable instead."""

    def register(function: Callable) -> Callable:
        for torch_callable in torch_callables:
            HAND_WRITTEN[torch_callable] = function
        return function

    return register


# Filled by the layers' own class statements (Layer.__init_subclass__), never by hand.
TORCH_TWINS: dict[type, type[torch.nn.Module]] = {}  # manualbp Module class -> its torch twin class
CONVERTIBLE: dict[type[torch.nn.Module], type] = {}  # torch twin class -> the manualbp layer convert makes
ACTIVATIONS: dict[str, type] = {}  # MLP's activation names: "relu", "sigmoid", ...
LOSSES: dict[str, type] = {}  # the configs' loss names: model.loss=softmax_euclidean


class Layer:
    """Mixin of every manualbp Module, after its torch.nn base:
    ``class Linear(torch.nn.Linear, Layer, torch_twin=torch.nn.Linear)``.

    Declaring ``torch_twin`` registers the class (exactly that class: a subclass that declares no
    twin of its own is not registered, so it is left alone by convert, to_torch and the engine).
    The defaults below fit a layer without parameters or settings; override them otherwise.
    """

    torch_twin: type[torch.nn.Module]
    # The explicit engine (manualbp.manual) runs a Sequential of layers that each apply one Function
    # to one input; a layer made of several nodes (MultiheadAttention) says False.
    runs_in_manual_engine: bool = True

    def __init_subclass__(cls, torch_twin: type[torch.nn.Module] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if torch_twin is None:
            return
        cls.torch_twin = torch_twin
        TORCH_TWINS[cls] = torch_twin
        if not issubclass(cls, Loss):  # a model's losses are not converted: convert() swaps layers
            CONVERTIBLE[torch_twin] = cls

    def __prepare_scriptable__(self) -> torch.nn.Module:
        """What ``torch.jit.script`` calls on every submodule first: here, one clear error."""
        raise torchscript_error(f"torch.jit.script of a model holding manualbp.{type(self).__name__}")

    @classmethod
    def from_torch(cls, module: torch.nn.Module) -> torch.nn.Module:
        """The manualbp layer that replaces ``module`` (a ``torch_twin``) in ``convert``."""
        return cls()

    def to_torch(self) -> torch.nn.Module:
        """This layer's torch twin, for ``to_torch`` (same settings, same Parameter objects)."""
        return self.torch_twin()

    def function_and_arguments(self, *inputs: Tensor) -> tuple[type[LayerFunction], tuple]:
        """The Function this Module applies to ``inputs`` and its arguments (checked tensors and
        settings), for the explicit engine, which runs the Function's own forward and backward."""
        raise NotImplementedError(f"{type(self).__name__} does not say how the manual engine runs it")

    @classmethod
    def example(cls, dtype: torch.dtype = torch.float64) -> tuple[torch.nn.Module, tuple[Tensor, ...]]:
        """A small instance of this layer and inputs for its forward, floating point ones in
        ``dtype``: what the tests that run every registered layer build (``tests/test_layers.py``:
        convert and to_torch, the explicit engine; the meta-tensor test), so that a new layer needs
        no edit there. Tensors come from the default device (under ``torch.device("meta")``, meta
        tensors). The default fits a layer without settings on rows of 4 features, (6, 4);
        override it otherwise (``Conv2d``: ``cls(2, 2, 3)`` on (6, 2, 4, 4) images)."""
        return cls().to(dtype), (torch.randn(6, 4, dtype=dtype),)


class Activation(Layer):
    """A Layer that ``MLP`` puts after a Linear, by its ``name`` (``activation="tanh"``)."""

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            ACTIVATIONS[name] = cls


class Loss(Layer):
    """A Layer that ends a net: ``forward(output, target)``, chosen in configs by its ``name``."""

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            LOSSES[name] = cls
