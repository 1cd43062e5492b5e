"""``python -m manualbp.coverage MODULE:FACTORY [--shape 2,3,224,224]``

Prints the backward coverage of the model FACTORY() builds: as built, after ``manualbp.convert``
(with the modules convert left to PyTorch, and why), and after ``convert`` under
``manualbp.hand_written()``. Exits 0 when nothing is left to PyTorch, 1 when something is, 2 when
the report could not be made (a bad spec, a module that does not import, a factory that raises or
returns something else than a model, inputs the model rejects), said in one line.
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


def coverage_reports(model: torch.nn.Module, inputs: tuple, shape_given: bool) -> tuple[list[str], bool]:
    """The report's lines, and whether nothing is left to PyTorch under ``hand_written()``."""
    import manualbp  # noqa: PLC0415 - the library, imported here so that ``import manualbp.coverage`` stays light

    model.train()
    lines = ["as built:", _indent(backward_coverage(*_outputs(model, inputs, "the model", shape_given)))]
    with warnings.catch_warnings():  # convert's warning lists what is left: the report below says it, with why
        warnings.simplefilter("ignore")
        converted = manualbp.convert(copy.deepcopy(model))
    lines += ["manualbp.convert(model):",
              _indent(backward_coverage(*_outputs(converted, inputs, "the converted model", shape_given)))]
    left = manualbp.nn.unconverted(converted)
    if left:
        lines.append(f"  left with PyTorch's backward by convert ({len(left)}):")
        lines += [f"    {module}" for module in left]
    with manualbp.hand_written():
        outputs = _outputs(converted, inputs, "the converted model under hand_written()", shape_given)
    report = backward_coverage(*outputs)
    lines += ["manualbp.convert(model) under manualbp.hand_written():", _indent(report)]
    return lines, report.complete


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m manualbp.coverage",
        description="Count the hand-written backward nodes of a model: as built, after manualbp.convert, and "
                    "after convert under manualbp.hand_written(). Exit status: 0 when nothing is left to PyTorch, "
                    "1 when something is, 2 when the report could not be made.")
    parser.add_argument("factory", help="MODULE:FACTORY; FACTORY() returns a model, or (model, example inputs)")
    parser.add_argument("--shape", type=parse_shape, default=None,
                        help="shape of a random float input when FACTORY returns a model only (default 2,3,224,224)")
    arguments = parser.parse_args(argv)
    try:
        model, inputs = load_model(arguments.factory)
        if inputs is None:
            inputs = (torch.randn(arguments.shape or (2, 3, 224, 224)),)
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        lines, complete = coverage_reports(model, inputs, arguments.shape is not None)
    except UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"{arguments.factory}:")
    print("\n".join(lines))
    return 0 if complete else 1


def _indent(report: CoverageReport) -> str:
    return "\n".join("  " + line for line in str(report).splitlines())


if __name__ == "__main__":
    sys.exit(main())
