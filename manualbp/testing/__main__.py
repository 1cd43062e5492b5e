"""``python -m manualbp.testing MODULE:NAME --reference torch.tanh --shape 5,4 [--shape ...]``

Checks the function NAME of the importable module MODULE (an autograd.Function class is used
through its ``apply``) against the reference, on random float64 inputs of the given shapes, prints
the report and exits 0 if every check passed, 1 if one failed, 2 if the check could not run (bad
arguments, a module that does not import, shapes the reference rejects), said in one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import torch

from manualbp.testing.check import CHECKS, check_function
from manualbp.testing.compare import first_line
from manualbp.testing.inputs import LAYOUTS
from manualbp.testing.resolve import UsageError, resolve_function


def resolve_reference(spec: str):
    """A dotted path to a callable (``torch.tanh``, ``torch.nn.functional.relu``) or MODULE:NAME."""
    if ":" in spec:
        return resolve_function(spec)
    parts = spec.split(".")
    for split in range(len(parts) - 1, 0, -1):  # the longest importable module prefix, then attributes
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:]:
            if not hasattr(target, part):
                raise UsageError(f"--reference {spec!r}: {'.'.join(parts[:split])!r} has no {part!r}")
            target = getattr(target, part)
        if not callable(target):
            raise UsageError(f"--reference {spec!r} is not callable")
        return target
    raise UsageError(f"--reference {spec!r}: expected a dotted path to a callable, like torch.tanh")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(size) for size in text.split(",") if size.strip())
    except ValueError:
        shape = None
    if not shape or any(size < 1 for size in shape):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: expected positive integers joined by commas, like 5,4")
    return shape


def parse_layouts(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in LAYOUTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"bad layouts {text!r}: expected names joined by commas, from "
                                         f"{', '.join(LAYOUTS)} (e.g. as_given,non_contiguous for a 2-D-only function)")
    return names


def random_inputs(shapes, seed: int, low: float | None, high: float | None) -> tuple[torch.Tensor, ...]:
    """float64 inputs of the given shapes: standard normal, or uniform in [low, high) when either is given."""
    generator = torch.Generator().manual_seed(seed)
    if low is None and high is None:
        return tuple(torch.randn(shape, dtype=torch.float64, generator=generator) for shape in shapes)
    low, high = (-1.0 if low is None else low), (1.0 if high is None else high)
    if not low < high:
        raise UsageError(f"--low {low} --high {high}: expected low < high")
    return tuple(low + (high - low) * torch.rand(shape, dtype=torch.float64, generator=generator) for shape in shapes)


def module_instance(target, spec: str):
    """A Module class named on the command line is built with no arguments (a factory): its parameters are checked."""
    if isinstance(target, type) and issubclass(target, torch.nn.Module):
        try:
            return target()
        except Exception as error:  # noqa: BLE001 - the user's constructor
            raise UsageError(f"{spec}() raised {type(error).__name__}: {first_line(error)}: name a Module class that "
                             "builds with no arguments, or a function") from error
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m manualbp.testing",
        description="Check a hand-written backward against a PyTorch reference, in float64, and say what is wrong.",
        epilog="example: python -m manualbp.testing mymod:my_tanh --reference torch.tanh --shape 5,4",
    )
    parser.add_argument("function", help="MODULE:NAME of the function (or autograd.Function class) to check")
    parser.add_argument("--reference", required=True, help="dotted path of the PyTorch reference, e.g. torch.tanh")
    parser.add_argument("--shape", type=parse_shape, action="append", required=True,
                        help="shape of one random input, e.g. 5,4; repeat for each input, in order")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random inputs (default 0: the same inputs every run; "
                             "try others to move away from an unlucky point)")
    parser.add_argument("--layouts", type=parse_layouts, default=None, metavar="NAME,NAME",
                        help=f"the input layouts to check on, each required to work (default: all of "
                             f"{','.join(LAYOUTS)}, and those that change shapes and that the function does not run "
                             "on are reported as not supported); a function for 2-D inputs only: "
                             "as_given,batch_size_1,non_contiguous")
    parser.add_argument("--low", type=float, default=None,
                        help="draw the inputs uniformly in [LOW, HIGH) instead of from a standard normal: for a "
                             "function defined on part of the line (sqrt, log: --low 0.1 --high 2)")
    parser.add_argument("--high", type=float, default=None, help="see --low")
    parser.add_argument("--positive", action="store_true", help="the same as --low 0.1 --high 2")
    parser.add_argument("--no-grad", type=int, action="append", default=None, metavar="INDEX",
                        help="position of an input the function does not differentiate (a target), from 0; "
                             "repeatable (default: inputs named like a target whose gradient is None)")
    parser.add_argument("--compile", action="store_true", help="also check torch.compile(fullgraph=True) (slow)")
    parser.add_argument("--skip", action="append", default=[], choices=list(CHECKS), metavar="CHECK",
                        help=f"leave out a check (repeatable): {', '.join(CHECKS)}")
    args = parser.parse_args(argv)
    if args.positive:
        args.low, args.high = 0.1, 2.0
    try:
        function = module_instance(resolve_function(args.function), args.function)
        reference = module_instance(resolve_reference(args.reference), args.reference)
        inputs = random_inputs(args.shape, args.seed, args.low, args.high)
        report = check_function(function, reference, inputs, seed=args.seed, compile=args.compile,
                                skip=args.skip, layouts=args.layouts, no_grad=args.no_grad,
                                raise_on_failure=False)
    except (UsageError, TypeError, ValueError) as error:
        print(f"{parser.prog}: error: {first_line(error, 1000)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - e.g. the reference raised on these shapes
        print(f"{parser.prog}: error: the check could not run: {type(error).__name__}: {first_line(error)}: check "
              "the --shape values against what the function and the reference take", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
