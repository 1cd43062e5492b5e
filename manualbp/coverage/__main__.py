"""``python -m manualbp.coverage MODULE:FACTORY [--shape 2,3,224,224]`` or
``python -m manualbp.coverage timm:MODEL | transformers:CONFIG [key=value ...]``

Prints the backward coverage of the model FACTORY() builds: as built, after ``manualbp.convert``
(with the modules convert left to PyTorch, and why), and after ``convert`` under
``manualbp.hand_written()``. A timm or transformers model is built by :mod:`manualbp.zoo` from its
config (small ``key=value`` overrides, nothing downloaded), with its example inputs and loss, and the
loss and every gradient of the last are also checked against the model as built, in float64.
Exits 0 when nothing is left to PyTorch, 1 when something is, 2 when the report could not be made
(a bad spec, a module that does not import, a factory that raises or returns something else than a
model, inputs the model rejects), said in one line.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings

import torch

from manualbp.coverage import CoverageReport, backward_coverage
from manualbp.testing.compare import first_line
from manualbp.testing.resolve import UsageError, resolve_function


def load_model(spec: str) -> tuple[torch.nn.Module, tuple | None]:
    """The model a spec names, and its example inputs if the spec gives them (else None).

    ``MODULE:FACTORY``: ``FACTORY()`` returns a model, or ``(model, example inputs)``. Raises
    :class:`UsageError`, one line, when the spec cannot be made into a model.
    """
    factory = resolve_function(spec)
    if not callable(factory):
        raise UsageError(f"{spec} is a {type(factory).__name__}, not a factory: name a function or class that "
                         "returns a model")
    try:
        built = factory()
    except Exception as error:  # noqa: BLE001 - the user's factory
        raise UsageError(f"{spec}() raised {type(error).__name__}: {first_line(error)}: fix the factory, or name "
                         "one that builds with no arguments") from error
    model, inputs = built if isinstance(built, tuple) and len(built) == 2 else (built, None)
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{spec}() returned {type(built).__name__}, expected a torch.nn.Module or (model, example "
                         "inputs): return the model")
    return model, inputs


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(size) for size in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(size < 1 for size in shape):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: expected positive integers joined by commas, "
                                         "like 2,3,224,224")
    return shape


def _outputs(model: torch.nn.Module, inputs: tuple, what: str, shape_given: bool) -> tuple[torch.Tensor, ...]:
    try:
        output = model(*inputs)
    except Exception as error:  # noqa: BLE001 - the model refuses the inputs
        shapes = ", ".join(str(tuple(value.shape)) for value in inputs if isinstance(value, torch.Tensor))
        advice = ("give --shape the sizes the model takes" if shape_given or shapes
                  else "return (model, example inputs) from the factory")
        raise UsageError(f"{what} raised {type(error).__name__} on inputs of shape {shapes}: "
                         f"{first_line(error, 200)}: {advice}") from error
    if isinstance(output, torch.Tensor):
        return (output,)
    if isinstance(output, dict):
        output = tuple(output.values())
    return tuple(value for value in output if isinstance(value, torch.Tensor) and value.grad_fn is not None)


def coverage_reports(model: torch.nn.Module, outputs_of) -> tuple[list[str], bool]:
    """The report's lines, and whether nothing is left to PyTorch under ``hand_written()``.
    ``outputs_of(model, what)``: the tensors whose graph is counted (the model's outputs, or its loss)."""
    import manualbp  # noqa: PLC0415 - the library, imported here so that ``import manualbp.coverage`` stays light

    model.train()
    lines = ["as built:", _indent(backward_coverage(*outputs_of(model, "the model")))]
    with warnings.catch_warnings():  # convert's warning lists what is left: the report below says it, with why
        warnings.simplefilter("ignore")
        converted = manualbp.convert(copy.deepcopy(model))
    lines += ["manualbp.convert(model):", _indent(backward_coverage(*outputs_of(converted, "the converted model")))]
    left = manualbp.nn.unconverted(converted)
    if left:
        lines.append(f"  left with PyTorch's backward by convert ({len(left)}):")
        lines += [f"    {module}" for module in left]
    with manualbp.hand_written():
        outputs = outputs_of(converted, "the converted model under hand_written()")
    report = backward_coverage(*outputs)
    lines += ["manualbp.convert(model) under manualbp.hand_written():", _indent(report)]
    return lines, report.complete


def load_zoo_model(spec: str, overrides: list[str]):
    """timm:MODEL and transformers:CONFIG specs: the model :mod:`manualbp.zoo` builds (float64, with its
    inputs and loss); None for any other spec. Raises :class:`UsageError`, one line, when it cannot."""
    if not spec.startswith(("timm:", "transformers:")):
        return None
    from manualbp import zoo  # noqa: PLC0415 - timm and transformers only when asked for

    try:
        return zoo.build(spec, overrides)
    except (ImportError, ValueError, TypeError) as error:
        raise UsageError(first_line(error, 300)) from error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m manualbp.coverage",
        description="Count the hand-written backward nodes of a model: as built, after manualbp.convert, and "
                    "after convert under manualbp.hand_written(). Exit status: 0 when nothing is left to PyTorch, "
                    "1 when something is, 2 when the report could not be made.")
    parser.add_argument("factory", help="MODULE:FACTORY; FACTORY() returns a model, or (model, example inputs); "
                                        "or timm:MODEL or transformers:CONFIG (built by manualbp.zoo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="for timm:/transformers: specs, settings of the model or config (hidden_size=64, "
                             "attn_implementation=eager, image_size=64)")
    parser.add_argument("--shape", type=parse_shape, default=None,
                        help="shape of a random float input when FACTORY returns a model only (default 2,3,224,224)")
    arguments = parser.parse_args(argv)
    try:
        zoo_model = load_zoo_model(arguments.factory, arguments.overrides)
        if zoo_model is not None:
            model = zoo_model.model

            def outputs_of(model, what):
                return (zoo_model.loss(model),)
        else:
            if arguments.overrides:
                raise UsageError(f"key=value overrides are for timm: and transformers: specs, got "
                                 f"{' '.join(arguments.overrides)!r} after {arguments.factory!r}")
            model, inputs = load_model(arguments.factory)
            if inputs is None:
                inputs = (torch.randn(arguments.shape or (2, 3, 224, 224)),)
            inputs = inputs if isinstance(inputs, tuple) else (inputs,)

            def outputs_of(model, what):
                return _outputs(model, inputs, what, arguments.shape is not None)
        lines, complete = coverage_reports(model, outputs_of)
    except UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(" ".join([arguments.factory, *arguments.overrides]) + ":")
    print("\n".join(lines))
    if zoo_model is not None:
        from manualbp import zoo  # noqa: PLC0415

        print(zoo.gradient_check(zoo_model))
    return 0 if complete else 1


def _indent(report: CoverageReport) -> str:
    return "\n".join("  " + line for line in str(report).splitlines())


if __name__ == "__main__":
    sys.exit(main())
