"""The checks. Each runs on one set of arguments and returns an :class:`Outcome`; ``check_function``
runs the per-layout ones on every layout and merges the outcomes into one line of the report."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck
from torch.autograd.gradcheck import GradcheckError

from manualbp.testing.compare import close, diagnose, diagnose_error, errors, first_line
from manualbp.testing.inputs import Subject, fresh
from manualbp.testing.report import FAILED, PASSED, SKIPPED, Errors


@dataclass
class Outcome:
    status: str
    errors: Errors | None = None
    diagnosis: str = ""


@dataclass
class Tolerance:
    rtol: float
    atol: float
    seed: int


# Messages that mean "this function does not support the transform", not "it is wrong".
_UNSUPPORTED = (
    "must implement the jvp",
    "must override the setup_context",
    "generate_vmap_rule",
    "vmap staticmethod",
    "does not support",
    "not supported",
    "not implemented",
    "unsupported",
)


# What torch's messages mean for a custom Function, in a few words.
_REASONS = {
    "must implement the jvp": "the Function has no jvp (forward-mode AD needs one)",
    "must override the setup_context": "the Function has no setup_context (torch.func needs forward(*args) + "
    "setup_context)",
    "generate_vmap_rule": "the Function has no vmap rule (set generate_vmap_rule = True or define vmap)",
}


def unsupported(error: BaseException) -> str | None:
    """The reason, if ``error`` says a transform is not supported (rather than wrong)."""
    message = str(error)
    for phrase, reason in _REASONS.items():
        if phrase in message:
            return f"not supported: {reason}"
    if isinstance(error, NotImplementedError) or any(phrase in message.lower() for phrase in _UNSUPPORTED):
        return f"not supported by this function: {first_line(message, 200)}"
    return None


def one_tensor(output, who: str) -> Tensor:
    if not isinstance(output, Tensor):
        raise TypeError(f"{who} returned {type(output).__name__}: check_function compares one output tensor "
                        "(wrap a function with several outputs, e.g. lambda *a: f(*a)[0])")
    return output


def _batch_size(subject: Subject, args: tuple) -> int | None:
    return args[subject.batched[0]].shape[0] if subject.batched else None


def random_grad_output(shape, seed: int) -> Tensor:
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))


def compare_all(pairs, tolerance: Tolerance, batch_size=None, what="gradient", layouts=None) -> Outcome:
    """Compare (label, got, expected) triples; None means no gradient (zeros for the reference).
    ``layouts``: how each 2-D input is stored (label -> Subject.weight_layouts' words), for the hints."""
    layouts = layouts or {}
    total, diagnoses = Errors(), []
    for label, got, expected in pairs:
        if expected is None and got is not None:
            expected = torch.zeros_like(got)
        if got is None:
            if expected is not None and expected.abs().max() > 0:
                diagnoses.append(diagnose(label, None, expected))
            continue
        if got.shape != expected.shape:
            diagnoses.append(diagnose(label, got, expected, batch_size, what, layouts.get(label)))
            continue
        total = total.merge(errors(label, got, expected))
        if not close(got, expected, tolerance.rtol, tolerance.atol):
            diagnoses.append(diagnose(label, got, expected, batch_size, what, layouts.get(label)))
    return Outcome(FAILED if diagnoses else PASSED, total, "\n".join(diagnoses))


def raised(error: BaseException, who: str = "", subject: Subject | None = None) -> Outcome:
    labels = subject.labels if subject is not None and subject.direct else None
    layouts = subject.weight_layouts if subject is not None else None
    return Outcome(FAILED, None, f"{who}{diagnose_error(error, labels, layouts)}")


# ----------------------------------------------------------------------------------------------
# Against the reference
# ----------------------------------------------------------------------------------------------


def values(subject: Subject, args: tuple, tolerance: Tolerance) -> Outcome:
    """The outputs equal the reference's."""
    expected = one_tensor(subject.reference(*fresh(args)), "the reference")
    try:
        got = one_tensor(subject.function(*fresh(args)), "the function")
    except Exception as error:  # noqa: BLE001 - a check reports every error it meets
        return raised(error, "the function raised where the reference did not: ")
    if got.shape != expected.shape:
        return Outcome(FAILED, None, f"the output has the wrong shape: expected {tuple(expected.shape)}, "
                                     f"got {tuple(got.shape)}")
    return compare_all([("output", got, expected)], tolerance, _batch_size(subject, args), what="value")


def backward_of(function, args, indices, grad_output, create_graph=False):
    inputs = fresh(args, indices)
    output = one_tensor(function(*inputs), "the function")
    wanted = [inputs[i] for i in indices]
    grads = torch.autograd.grad(output, wanted, grad_output.clone(), allow_unused=True, create_graph=create_graph)
    return inputs, grads


NOT_DETERMINISTIC = "backward is not deterministic"


def nondeterminism(labels, first, second) -> str | None:
    """Why two backward passes on the same inputs and grad_output differ (None: they are equal,
    bit for bit)."""
    for label, one, other in zip(labels, first, second, strict=True):
        if one is None and other is None:
            continue
        if one is None or other is None or one.shape != other.shape:
            difference = "a gradient once and none the other time"
        elif torch.allclose(one, other, rtol=0, atol=0, equal_nan=True):
            continue
        else:
            found = errors(label, one, other)
            difference = f"by up to {found.max_abs:.3g} at {found.abs_where}"
        return (
            f"{NOT_DETERMINISTIC}: two runs on the same inputs and the same grad_output gave different gradients "
            f"for {label} ({difference}): random numbers drawn in backward (draw them in forward and save them, "
            "as dropout saves its mask), memory left unfilled (torch.empty), or state kept between calls?"
        )
    return None


def _backward_twice(subject: Subject, args: tuple, indices, labels, grad_output) -> str | None:
    """Run backward twice through one forward pass (so a random forward, such as dropout drawing
    its mask, plays no part): why the two differ, or None."""
    inputs = fresh(args, indices)
    output = one_tensor(subject.function(*inputs), "the function")
    wanted = [inputs[i] for i in indices]
    first = torch.autograd.grad(output, wanted, grad_output.clone(), allow_unused=True, retain_graph=True)
    second = torch.autograd.grad(output, wanted, grad_output.clone(), allow_unused=True)
    return nondeterminism(labels, first, second)


def gradients(subject: Subject, args: tuple, tolerance: Tolerance) -> Outcome:
    """The gradients of a random vector-Jacobian product equal the reference's, for every subset of
    the floating inputs requiring grad (all of them first); with all of them, backward run twice
    gives the same gradients (else nothing else is said: a non-deterministic backward is the
    mistake, whatever the comparison shows)."""
    floating = subject.floating
    if not floating:
        return Outcome(SKIPPED, None, "no floating-point input")
    grad_output = random_grad_output(subject.reference(*fresh(args)).shape, tolerance.seed)
    subsets = [tuple(floating)] + [
        subset for size in range(len(floating) - 1, 0, -1) for subset in itertools.combinations(floating, size)
    ]
    total, first_failure = Errors(), None
    for subset in subsets:
        _, expected = backward_of(subject.reference, args, subset, grad_output)
        try:
            _, got = backward_of(subject.function, args, subset, grad_output)
        except Exception as error:  # noqa: BLE001
            outcome = raised(error, subject=subject)
        else:
            labels = [subject.labels[i] for i in subset]
            if subset == tuple(floating) and (reason := _backward_twice(subject, args, subset, labels, grad_output)):
                return Outcome(FAILED, None, reason)
            outcome = compare_all(zip(labels, got, expected, strict=True), tolerance, _batch_size(subject, args),
                                  layouts=subject.weight_layouts)
        total = total.merge(outcome.errors)
        if outcome.status == FAILED and first_failure is None:
            first_failure = (subset, outcome)
    if first_failure is None:
        return Outcome(PASSED, total)
    subset, outcome = first_failure
    requiring = ", ".join(subject.labels[i] for i in subset)
    when = "" if subset == tuple(floating) else f"with only {requiring} requiring grad: "
    return Outcome(FAILED, total, when + outcome.diagnosis)


def _second_order(function, args, floating, grad_output, directions):
    """∂/∂inputs of Σ_i ⟨∂L/∂input_i, u_i⟩ with L = ⟨function(args), grad_output⟩: a Hessian-vector
    product through the backward pass; None for an input the backward's result does not reach."""
    inputs, grads = backward_of(function, args, floating, grad_output, create_graph=True)
    total = sum((grad * direction).sum() for grad, direction in zip(grads, directions, strict=True)
                if grad is not None and grad.requires_grad)
    if not isinstance(total, Tensor):
        return [None] * len(floating)
    return torch.autograd.grad(total, [inputs[i] for i in floating], allow_unused=True)


def second_order(subject: Subject, args: tuple, tolerance: Tolerance) -> Outcome:
    """Double backward (a Hessian-vector product through backward) equals the reference's."""
    floating = subject.floating
    if not floating:
        return Outcome(SKIPPED, None, "no floating-point input")
    grad_output = random_grad_output(subject.reference(*fresh(args)).shape, tolerance.seed)
    generator = torch.Generator().manual_seed(tolerance.seed + 2)
    directions = [torch.randn(args[i].shape, dtype=torch.float64, generator=generator) for i in floating]
    expected = _second_order(subject.reference, args, floating, grad_output, directions)
    try:
        got = _second_order(subject.function, args, floating, grad_output, directions)
    except Exception as error:  # noqa: BLE001
        return raised(error, "double backward raised: ", subject)
    labels = [subject.labels[i] for i in floating]
    return compare_all(zip(labels, got, expected, strict=True), tolerance, _batch_size(subject, args),
                       layouts=subject.weight_layouts)


# ----------------------------------------------------------------------------------------------
# Against finite differences (torch.autograd.gradcheck)
# ----------------------------------------------------------------------------------------------

GRADCHECKS = {
    "gradcheck": (gradcheck, {}),
    "forward_ad": (gradcheck, {"check_forward_ad": True, "check_backward_ad": False, "check_undefined_grad": False}),
    "batched_grad": (gradcheck, {"check_batched_grad": True}),
    "batched_forward_ad": (
        gradcheck,
        {"check_forward_ad": True, "check_batched_forward_grad": True, "check_backward_ad": False,
         "check_undefined_grad": False},
    ),
    "gradgradcheck": (gradgradcheck, {}),
    "batched_gradgrad": (gradgradcheck, {"check_batched_grad": True}),
    "fwd_over_rev": (
        gradgradcheck, {"check_fwd_over_rev": True, "check_rev_over_rev": False, "check_undefined_grad": False}
    ),
}


def _numerical_jacobian_errors(subject: Subject, args: tuple, eps: float = 1e-6) -> Errors:
    """Largest error between backward's Jacobian and central differences, located as
    (output element, input element)."""
    floating = subject.floating
    inputs = fresh(args)
    analytical = torch.autograd.functional.jacobian(
        lambda *diff: subject.function(*_replace(inputs, floating, diff)), tuple(inputs[i] for i in floating)
    )
    total = Errors()
    for position, index in enumerate(floating):
        numerical = torch.zeros_like(analytical[position])
        base = inputs[index].detach()
        for element in range(base.numel()):
            step = torch.zeros(base.numel(), dtype=base.dtype)
            step[element] = eps
            step = step.view_as(base)
            plus = subject.function(*_replace(inputs, [index], [base + step])).detach()
            minus = subject.function(*_replace(inputs, [index], [base - step])).detach()
            element_index = torch.unravel_index(torch.tensor(element), base.shape) if base.dim() else ()
            numerical[(..., *element_index)] = (plus - minus) / (2 * eps)
        label = f"∂output/∂{subject.labels[index]}"
        total = total.merge(errors(label, analytical[position], numerical, floor=1e-6))  # differences are noisy
    return total


def _replace(args: tuple, indices, values) -> tuple:
    replaced = list(args)
    for index, value in zip(indices, values, strict=True):
        replaced[index] = value
    return tuple(replaced)


def _gradcheck_input_label(subject: Subject, message: str) -> str:
    """gradcheck counts only the inputs requiring grad: name them as the report does."""
    floating = subject.floating
    for position, index in enumerate(floating):
        message = message.replace(f"respect to input {position},", f"respect to {subject.labels[index]}", 1)
    return message


def run_gradcheck(kind: str, subject: Subject, args: tuple, tolerance: Tolerance) -> Outcome:
    """``torch.autograd.gradcheck`` / ``gradgradcheck`` in mode ``kind`` (a key of GRADCHECKS)."""
    if not subject.floating:
        return Outcome(SKIPPED, None, "no floating-point input")
    check, options = GRADCHECKS[kind]
    try:
        check(subject.function, fresh(args, subject.floating), **options)
    except GradcheckError as error:
        reason = unsupported(error)
        if reason:
            return Outcome(SKIPPED, None, reason)
        diagnosis = _gradcheck_input_label(subject, first_line(error)).rstrip(",")
        if "not reentrant" in diagnosis:  # torch's words for it
            return Outcome(FAILED, None, f"{NOT_DETERMINISTIC}: gradcheck ran backward twice on the same inputs "
                                         "and grad_output and got different values")
        found = _numerical_jacobian_errors(subject, args) if kind == "gradcheck" else None
        return Outcome(FAILED, found, f"gradcheck: {diagnosis}")
    except Exception as error:  # noqa: BLE001
        reason = unsupported(error)
        return Outcome(SKIPPED, None, reason) if reason else raised(error, subject=subject)
    return Outcome(PASSED)
