"""``python -m manualbp.testing MODULE:NAME --reference torch.tanh --shape 5,4 [--shape ...]``

Checks the function NAME of the importable module MODULE (an autograd.Function class is used
through its ``apply``) against the reference, on random float64 inputs of the given shapes, prints
the report and exits 0 if every check passed, 1 if one failed, 2 if the arguments are wrong.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import torch

from manualbp.testing.check import CHECKS, check_function


class UsageError(Exception):
    """A bad argument, reported as one line."""


def _import_module(path: str):
    try:
        return importlib.import_module(path)
    except ImportError as error:
        raise UsageError(f"cannot import module {path!r} ({error}): check the name, and run from the folder that "
                         "holds it or add that folder to PYTHONPATH") from error


def resolve_function(spec: str):
    """``package.module:name`` (``name`` may be dotted: ``module:MyFunction.apply``)."""
    module_path, colon, name = spec.partition(":")
    if not colon or not module_path or not name:
        raise UsageError(f"expected MODULE:NAME (e.g. mypkg.mymod:my_tanh), got {spec!r}")
    target = _import_module(module_path)
    for part in name.split("."):
        if not hasattr(target, part):
            raise UsageError(f"module {module_path!r} has no {name!r}: check the name after the colon")
        target = getattr(target, part)
    return target


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
    parser.add_argument("--compile", action="store_true", help="also check torch.compile(fullgraph=True) (slow)")
    parser.add_argument("--skip", action="append", default=[], choices=list(CHECKS), metavar="CHECK",
                        help=f"leave out a check (repeatable): {', '.join(CHECKS)}")
    args = parser.parse_args(argv)
    try:
        function, reference = resolve_function(args.function), resolve_reference(args.reference)
    except UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    generator = torch.Generator().manual_seed(args.seed)
    inputs = tuple(torch.randn(shape, dtype=torch.float64, generator=generator) for shape in args.shape)
    try:
        report = check_function(function, reference, inputs, seed=args.seed, compile=args.compile,
                                skip=args.skip, raise_on_failure=False)
    except (TypeError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
