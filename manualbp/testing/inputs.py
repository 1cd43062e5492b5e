"""The thing under test made uniform: a function over a flat tuple of float64 arguments (a
Module's parameters appended to its inputs), its reference, labels for every argument, and the
input layouts to run it on."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from manualbp.testing.compare import first_line

LAYOUTS = {
    "as_given": "as given",
    "batch_size_1": "batch size 1",
    "leading_dims": "extra leading dims",
    "non_contiguous": "non-contiguous",
}


@dataclass
class Subject:
    """``function(*args)`` and ``reference(*args)`` compute the same thing. ``labels[i]`` names
    ``args[i]`` in reports; ``batched`` lists the arguments that carry a batch dimension first."""

    function: Callable
    reference: Callable
    args: tuple
    labels: list[str]
    batched: tuple[int, ...]
    direct: bool = False  # function is a Function's apply: autograd's "input i" is args[i]
    not_differentiated: tuple[int, ...] = ()  # floating arguments whose gradient is not checked (a target)
    weight_layouts: dict[str, str] = field(default_factory=dict)  # label -> "slides", "torch" or "either"

    @property
    def floating(self) -> list[int]:
        """The arguments gradients are checked for: floating-point tensors, but for those not differentiated."""
        return [i for i, arg in enumerate(self.args) if is_floating(arg) and i not in self.not_differentiated]


def weight_layouts(args: tuple, labels: list[str], output_shape: tuple[int, ...]) -> dict[str, str]:
    """How each 2-D input that multiplies another input is stored: ``"slides"`` for W (in, out) in
    Z = XW, ``"torch"`` for W (out, in) in Z = XWᵀ, ``"either"`` when its shape cannot tell (square)."""
    found = {}
    for i, weight in enumerate(args):
        if not (is_floating(weight) and weight.dim() == 2) or not output_shape:
            continue
        rows, columns = weight.shape
        inner = {arg.shape[-1] for j, arg in enumerate(args) if j != i and is_floating(arg) and arg.dim() >= 1}
        slides = rows in inner and output_shape[-1] == columns
        torch_layout = columns in inner and output_shape[-1] == rows
        if slides or torch_layout:
            found[labels[i]] = "either" if slides and torch_layout else "slides" if slides else "torch"
    return found


def is_floating(arg) -> bool:
    return isinstance(arg, Tensor) and arg.is_floating_point()


def name_of(function) -> str:
    if isinstance(function, nn.Module):
        return f"{type(function).__module__}.{type(function).__qualname__}"
    owner = getattr(function, "__self__", None)  # SomeFunction.apply
    if isinstance(owner, type):
        return f"{owner.__name__}.{function.__name__}"
    name = getattr(function, "__name__", None)
    for namespace in (torch, torch.nn.functional, torch.special, torch.linalg):
        if name and getattr(namespace, name, None) is function:
            return f"{namespace.__name__}.{name}"
    return getattr(function, "__qualname__", None) or name or repr(function)


def _argument_names(function) -> list[str]:
    """Positional parameter names of ``function`` (a Function's ``apply`` reads its ``forward``)."""
    owner = getattr(function, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, torch.autograd.Function):
        function = owner.forward
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # builtins such as torch.tanh
        return []
    names = []
    for parameter in parameters:
        if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            break
        names.append(parameter.name)
    return names[1:] if names[:1] == ["ctx"] else names


def _float64(arg):
    if isinstance(arg, Tensor):
        arg = arg.detach()
        return arg.to(torch.float64).clone() if arg.is_floating_point() else arg.clone()
    return arg


def make_inputs(inputs, seed: int) -> tuple:
    """``inputs`` as a tuple of float64 copies: a tuple, one tensor, or a callable that makes them
    (called with torch's random generator seeded with ``seed``, restored afterwards)."""
    if callable(inputs) and not isinstance(inputs, Tensor):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inputs = inputs()
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)):
        raise TypeError(
            f"inputs: expected a tuple of example arguments (or a callable returning one), got {type(inputs).__name__}"
        )
    return tuple(_float64(arg) for arg in inputs)


def _module_call(module: nn.Module, count: int, names: list[str]) -> Callable:
    def call(*args):
        return torch.func.functional_call(module, dict(zip(names, args[count:], strict=True)), args[:count])

    return call


def prepare(function, reference, inputs, seed: int, batched_inputs: Sequence[int] | None) -> Subject:
    """A :class:`Subject` for ``check_function``'s arguments (see its docstring for modules)."""
    args = make_inputs(inputs, seed)
    count = len(args)
    if isinstance(function, type) and issubclass(function, torch.autograd.Function):
        function = function.apply
    owner = getattr(function, "__self__", None)
    direct = isinstance(owner, type) and issubclass(owner, torch.autograd.Function)
    if isinstance(reference, type) and issubclass(reference, torch.autograd.Function):
        reference = reference.apply
    names = _argument_names(function.forward if isinstance(function, nn.Module) else function) or _argument_names(
        reference
    )
    labels = [f"input {i} ({names[i]})" if i < len(names) else f"input {i}" for i in range(count)]
    if isinstance(function, nn.Module):
        module = copy.deepcopy(function).to(torch.float64)
        parameter_names = [name for name, _ in module.named_parameters()]
        args += tuple(parameter.detach().clone() for _, parameter in module.named_parameters())
        labels += [f"parameter {name}" for name in parameter_names]
        function = _module_call(module, count, parameter_names)
        if isinstance(reference, nn.Module):
            reference_module = copy.deepcopy(reference).to(torch.float64)
            reference_names = [name for name, _ in reference_module.named_parameters()]
            if sorted(reference_names) != sorted(parameter_names):
                raise ValueError(
                    f"the reference module's parameters {reference_names} differ from the function module's "
                    f"{parameter_names}: give a reference module with the same parameter names, or a callable "
                    "taking (*inputs, *parameters)"
                )
            reference = _module_call(reference_module, count, parameter_names)
    elif isinstance(reference, nn.Module):
        raise TypeError("reference is a Module but function is not: give a reference callable over the same inputs")
    if not callable(function) or not callable(reference):
        raise TypeError(f"function and reference must be callable, got {type(function).__name__} and "
                        f"{type(reference).__name__}")
    if batched_inputs is None:
        tensors = [i for i in range(count) if isinstance(args[i], Tensor) and args[i].dim() >= 1]
        batched_inputs = [i for i in tensors if args[i].shape[0] == args[tensors[0]].shape[0]] if tensors else []
    return Subject(function, reference, args, labels, tuple(batched_inputs), direct)


def _non_contiguous(tensor: Tensor) -> Tensor:
    """The same values with strides (…, 2): every other element of the last dimension of a wider tensor."""
    wide = tensor.new_zeros(*tensor.shape[:-1], 2 * tensor.shape[-1])
    wide[..., ::2] = tensor
    return wide[..., ::2]


def layout(subject: Subject, name: str) -> tuple[tuple | None, str]:
    """The arguments in layout ``name`` and a description, or None and why the layout does not apply."""
    args, batched = subject.args, subject.batched
    if name == "as_given":
        return args, "as given"
    if name == "non_contiguous":
        spread = [i for i, arg in enumerate(args) if isinstance(arg, Tensor) and arg.dim() >= 1 and arg.numel() > 1]
        if not spread:
            return None, "no input has more than one element"
        return tuple(_non_contiguous(arg) if i in spread else arg for i, arg in enumerate(args)), LAYOUTS[name]
    if not batched:
        return None, "no input has a batch dimension (pass batched_inputs=)"
    if name == "batch_size_1":
        if args[batched[0]].shape[0] == 1:
            return None, "the inputs as given already have batch size 1"
        return tuple(arg[:1].clone() if i in batched else arg for i, arg in enumerate(args)), LAYOUTS[name]
    if name == "leading_dims":  # (N, ...) -> (2, N, ...): the batch and a shuffled copy of it
        stacked = tuple(torch.stack([arg, arg.roll(1, 0)]) if i in batched else arg for i, arg in enumerate(args))
        return stacked, LAYOUTS[name]
    raise ValueError(f"unknown layout {name!r}: expected one of {list(LAYOUTS)}")


def usable_layouts(subject: Subject, names: Sequence[str]) -> tuple[list[tuple[str, tuple]], list[str]]:
    """The layouts to run (label, args) and notes on those skipped, e.g. because the reference rejects them."""
    usable, skipped = [], []
    for name in names:
        args, description = layout(subject, name)
        if args is not None:
            try:
                subject.reference(*fresh(args))
            except Exception as error:  # noqa: BLE001 - any refusal by the reference means: not this layout
                args, description = None, f"the reference rejects it ({first_line(error, 120)})"
        if args is None:
            skipped.append(f"{LAYOUTS.get(name, name)}: {description}")
        else:
            usable.append((LAYOUTS[name], args))
    return usable, skipped


def fresh(args: tuple, requires_grad: Sequence[int] = ()) -> tuple:
    """New copies of ``args`` with the same values and strides, floating ones requiring grad if listed."""
    copies = []
    for i, arg in enumerate(args):
        if isinstance(arg, Tensor):
            arg = arg.detach().clone() if arg.is_contiguous() else _non_contiguous(arg.detach().contiguous())
            if arg.is_floating_point():
                arg.requires_grad_(i in requires_grad)
        copies.append(arg)
    return tuple(copies)


def describe(subject: Subject) -> str:
    """``input 0 (x) (5, 4) float64, ...``: what each argument is."""
    return ", ".join(
        f"{label} {tuple(arg.shape)} {str(arg.dtype).removeprefix('torch.')}" if isinstance(arg, Tensor)
        else f"{label} = {arg!r}"
        for label, arg in zip(subject.labels, subject.args, strict=True)
    )
