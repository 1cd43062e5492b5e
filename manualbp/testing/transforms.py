"""Checks run once, on the inputs as given: torch.func transforms, torch.compile, and whether the
function modifies its inputs (or the incoming gradient) in place."""

from __future__ import annotations

import torch
from torch import Tensor

from manualbp.testing.checks import (
    Outcome,
    Tolerance,
    backward_of,
    compare_all,
    one_tensor,
    raised,
    random_grad_output,
    unsupported,
)
from manualbp.testing.compare import errors, first_line, index_of, where
from manualbp.testing.inputs import Subject, fresh
from manualbp.testing.report import FAILED, PASSED, SKIPPED


def _transform_failed(error: BaseException) -> Outcome:
    reason = unsupported(error)
    return Outcome(SKIPPED, None, reason) if reason else raised(error)


def vmap(subject: Subject, args: tuple, tolerance: Tolerance) -> Outcome:
    """``torch.func.vmap(function)`` over two stacked samples (the inputs, and the batch rolled by one)
    equals the reference applied to each sample."""
    second = tuple(arg.roll(1, 0) if i in subject.batched else arg for i, arg in enumerate(args))
    samples = (args, second)
    in_dims = tuple(0 if isinstance(arg, Tensor) else None for arg in args)
    pairs = zip(*samples, strict=True)
    stacked = tuple(torch.stack(pair) if isinstance(pair[0], Tensor) else pair[0] for pair in pairs)
    expected = torch.stack([subject.reference(*fresh(sample)) for sample in samples])
    try:
        got = one_tensor(torch.func.vmap(subject.function, in_dims=in_dims)(*stacked), "vmap(function)")
    except Exception as error:  # noqa: BLE001
        return _transform_failed(error)
    if got.shape != expected.shape:
        return Outcome(FAILED, None, f"vmap's output has the wrong shape: expected {tuple(expected.shape)}, "
                                     f"got {tuple(got.shape)}")
    return compare_all([("vmapped output", got, expected)], tolerance, what="value")


def jacobian(transform):
    """A check that ``transform(function)`` (torch.func.jacrev or jacfwd) equals the reference's Jacobian."""

    def check(subject: Subject, args: tuple, tolerance: Tolerance) -> Outcome:
        floating = subject.floating
        if not floating:
            return Outcome(SKIPPED, None, "no floating-point input")
        inputs = fresh(args)

        def reference_of(*diff):
            replaced = list(inputs)
            for index, value in zip(floating, diff, strict=True):
                replaced[index] = value
            return subject.reference(*replaced)

        expected = torch.autograd.functional.jacobian(reference_of, tuple(inputs[i] for i in floating))
        try:
            got = transform(subject.function, argnums=tuple(floating))(*inputs)
        except Exception as error:  # noqa: BLE001
            return _transform_failed(error)
        labels = [f"∂output/∂{subject.labels[i]}" for i in floating]
        return compare_all(zip(labels, got, expected, strict=True), tolerance)

    return check


def unmodified(subject: Subject, args: tuple, tolerance: Tolerance) -> Outcome:
    """Forward and backward leave the inputs, and backward the incoming gradient, as they were."""
    floating = subject.floating
    grad_output = random_grad_output(subject.reference(*fresh(args)).shape, tolerance.seed)
    inputs = fresh(args, floating)
    before = [arg.detach().clone() if isinstance(arg, Tensor) else None for arg in inputs]
    findings, total = [], None

    def compare(stage: str, tensors, originals, labels):
        nonlocal total
        for label, tensor, original in zip(labels, tensors, originals, strict=True):
            if original is None or torch.equal(tensor.detach(), original) or (
                tensor.is_floating_point() and torch.allclose(tensor.detach(), original, 0, 0, equal_nan=True)
            ):
                continue
            found = errors(label, tensor, original)
            total = found if total is None else total.merge(found)
            changed = (tensor.detach() != original).flatten()
            flat = int(changed.to(torch.int8).argmax())
            index = index_of(flat, original.shape)
            findings.append(
                f"{label} was modified in place by {stage}: {where(label, index)} changed from "
                f"{original.flatten()[flat].item():.6g} to {tensor.detach().flatten()[flat].item():.6g} "
                f"({int(changed.sum())} of {changed.numel()} elements; compute into a new tensor instead)"
            )

    try:
        output = one_tensor(subject.function(*inputs), "the function")
    except Exception as error:  # noqa: BLE001
        return raised(error)
    compare("the forward", inputs, before, subject.labels)
    if floating and output.requires_grad:
        incoming = grad_output.clone()
        try:
            torch.autograd.grad(output, [inputs[i] for i in floating], incoming, allow_unused=True)
        except Exception as error:  # noqa: BLE001
            findings.append(f"backward raised, so only the forward was checked: {first_line(error, 200)}")
        else:
            if not findings:
                compare("the backward", inputs, before, subject.labels)
            compare("the backward", [incoming], [grad_output], ["grad_output"])
    if not findings:
        return Outcome(PASSED)
    return Outcome(FAILED, total, "\n".join(findings))


def compiled(subject: Subject, args: tuple, tolerance: Tolerance) -> Outcome:
    """``torch.compile(function, fullgraph=True)``: values and gradients equal the reference's."""
    import torch._dynamo  # noqa: PLC0415 - only when asked: importing it is slow

    torch._dynamo.reset()
    function = torch.compile(subject.function, fullgraph=True)
    floating = subject.floating
    expected_output = subject.reference(*fresh(args))
    grad_output = random_grad_output(expected_output.shape, tolerance.seed)
    try:
        output = one_tensor(function(*fresh(args)), "the compiled function")
        got = backward_of(function, args, floating, grad_output)[1] if floating else []
    except Exception as error:  # noqa: BLE001
        message = f"{type(error).__name__}: {first_line(error, 240)}"
        if "custom jvp" in message:
            message += " (Dynamo refuses a Function that defines jvp: compile a copy without it)"
        return Outcome(FAILED, None, f"torch.compile(fullgraph=True) failed: {message}")
    expected = backward_of(subject.reference, args, floating, grad_output)[1] if floating else []
    pairs = [("output", output, expected_output)]
    pairs += list(zip([subject.labels[i] for i in floating], got, expected, strict=True))
    return compare_all(pairs, tolerance, layouts=subject.weight_layouts)
