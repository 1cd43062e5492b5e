"""``check_function``: every check on one function, against its reference, in one call."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch

from manualbp.testing import checks, transforms
from manualbp.testing.compare import first_line, index_of
from manualbp.testing.inputs import (
    LAYOUTS,
    describe,
    fresh,
    is_floating,
    name_of,
    prepare,
    usable_layouts,
    weight_layouts,
)
from manualbp.testing.report import FAILED, PASSED, SKIPPED, CheckResult, Errors, Report

# key: (line in the report, runs on every layout?, the check)
# The order of the report: an input modified in place explains every other failure, so it comes first.
CHECKS: dict[str, tuple[str, bool, Callable]] = {
    "unmodified": ("inputs and grad_output left unmodified", False, transforms.unmodified),
    "values": ("values vs reference", True, checks.values),
    "gradients": ("gradients vs reference (every requires-grad subset)", True, checks.gradients),
    "second_order": ("second-order gradients vs reference (double backward)", True, checks.second_order),
    "gradcheck": ("gradcheck: backward vs finite differences", True,
                  functools.partial(checks.run_gradcheck, "gradcheck")),
    "forward_ad": ("gradcheck: forward-mode AD (jvp)", True, functools.partial(checks.run_gradcheck, "forward_ad")),
    "batched_grad": ("gradcheck: batched backward (vmap over backward)", True,
                     functools.partial(checks.run_gradcheck, "batched_grad")),
    "batched_forward_ad": ("gradcheck: batched forward-mode AD", True,
                           functools.partial(checks.run_gradcheck, "batched_forward_ad")),
    "gradgradcheck": ("gradgradcheck: reverse over reverse", True,
                      functools.partial(checks.run_gradcheck, "gradgradcheck")),
    "batched_gradgrad": ("gradgradcheck: batched double backward (vmap over double backward)", True,
                         functools.partial(checks.run_gradcheck, "batched_gradgrad")),
    "fwd_over_rev": ("gradgradcheck: forward over reverse", True,
                     functools.partial(checks.run_gradcheck, "fwd_over_rev")),
    "vmap": ("torch.func.vmap vs the reference per sample", False, transforms.vmap),
    "jacrev": ("torch.func.jacrev vs the reference's Jacobian", False, transforms.jacobian(torch.func.jacrev)),
    "jacfwd": ("torch.func.jacfwd vs the reference's Jacobian", False, transforms.jacobian(torch.func.jacfwd)),
    "compile": ("torch.compile(fullgraph=True) values and gradients", False, transforms.compiled),
}

SECOND_ORDER_HINT = (
    "first order is right but second order is wrong: an intermediate kept on ctx instead of "
    "save_for_backward? (double backward only sees tensors saved with ctx.save_for_backward, "
    "and a backward built from detached tensors)"
)


def check_function(
    function,
    reference: Callable,
    inputs,
    *,
    layouts: Sequence[str] | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    seed: int = 0,
    compile: bool = False,
    skip: Iterable[str] = (),
    batched_inputs: Sequence[int] | None = None,
    no_grad: Sequence[int] | None = None,
    raise_on_failure: bool = True,
) -> Report:
    """Check ``function`` against ``reference`` in every way listed below, in float64; return a
    :class:`Report`, or raise ``AssertionError`` with the report as its message if a check fails.

    function: any callable over tensors (``MyFunction.apply``, a wrapper, an autograd.Function
        class, or an ``nn.Module``). It must return one tensor.
    reference: the same computation written with PyTorch ops (``torch.tanh``,
        ``torch.nn.functional.linear``, a lambda, or for a Module another Module).
    inputs: a tuple of example arguments (tensors and others, in order), one tensor, or a callable
        returning them (called with torch's RNG seeded with ``seed``). Floating-point tensors are
        converted to float64; so is a Module.

    Modules: a Module's parameters become extra inputs after the positional ones, named
    ``parameter <name>``, and their gradients are checked like any input's. The reference gets the
    same parameter values: a reference Module must have the same parameter names (its own values
    are ignored), a plain callable is called as ``reference(*inputs, *parameters)`` in
    ``named_parameters()`` order (``check_function(manualbp.nn.Linear(4, 3), torch.nn.functional.linear, (x,))``).

    Checks (keys for ``skip``): ``values``, ``gradients`` (every non-empty subset of floating inputs
    requiring grad), ``second_order``, ``gradcheck``, ``forward_ad``, ``batched_grad``,
    ``batched_forward_ad``, ``gradgradcheck``, ``batched_gradgrad``, ``fwd_over_rev`` run on every
    layout in ``layouts`` (``as_given``, ``batch_size_1``, ``leading_dims``: inputs (N, …) stacked
    to (2, N, …), ``non_contiguous``); ``unmodified``, ``vmap``, ``jacrev``, ``jacfwd`` and ``compile`` (only with
    ``compile=True``: slow) on the inputs as given. A layout the reference rejects is skipped, and
    so is a transform the function does not support (e.g. forward-mode AD without a ``jvp``). With
    ``layouts`` left out, a layout that changes shapes (batch size 1, extra leading dims) on which
    the function or its backward raises, while both run on the inputs as given, is reported as not
    supported by the function and left out (the slides' 2-D formulas); layouts named in ``layouts``
    must all work.
    The batched inputs are those whose first dimension equals the first tensor's (override with
    ``batched_inputs``, a list of argument positions).

    no_grad: positions of floating inputs the function does not differentiate (a loss's target):
        their gradient is not checked. By default, an input named like a target (``y``,
        ``target``, ``labels``, ...) for which backward returns None is taken as one, and the
        report says so; ``no_grad=()`` checks every floating input.

    rtol, atol: how close to the reference counts as equal (|got − expected| ≤ atol + rtol·|expected|).
        A correct float64 formula is within a few units of 1e-16; a wrong one is off by far more.
    """
    subject = prepare(function, reference, inputs, seed, batched_inputs)
    asked_for_layouts, layouts = layouts is not None, tuple(LAYOUTS) if layouts is None else tuple(layouts)
    _import_quietly_what_forward_mode_imports()
    subject.not_differentiated = _not_differentiated(subject, no_grad)
    tolerance = checks.Tolerance(rtol, atol, seed)
    unknown = set(skip) - set(CHECKS)
    if unknown:
        raise ValueError(f"skip: unknown checks {sorted(unknown)}; the checks are {list(CHECKS)}")
    runs, skipped_layouts = usable_layouts(subject, layouts)
    if not runs:
        raise ValueError(f"no layout to check on: {'; '.join(skipped_layouts)}; give inputs the reference accepts")
    _refuse_inputs_outside_the_domain(subject, runs[0][1], seed)
    subject.weight_layouts = weight_layouts(subject.args, subject.labels,
                                            tuple(_quietly(subject.reference, *fresh(subject.args)).shape))
    unsupported, rejected = _layouts_the_function_rejects(subject, runs, may_be_unsupported=not asked_for_layouts)
    runs = [(name, args) for name, args in runs if name not in unsupported]
    report = Report(f"check_function({name_of(function)} vs {name_of(reference)})")
    report.context.append(f"inputs: {describe(subject)} (seed {seed})")
    report.context.append("layouts: " + ", ".join(name for name, _ in runs)
                          + (f"; skipped: {'; '.join(skipped_layouts)}" if skipped_layouts else ""))
    if subject.not_differentiated:
        said = ", ".join(subject.labels[i] for i in subject.not_differentiated)
        why = ("as asked (no_grad=)" if no_grad is not None else
               "backward returns None for it and its name says it is a target; no_grad=() checks it")
        report.context.append(f"not differentiated, its gradient not checked: {said} ({why})")
    if unsupported:
        keys = [key for key in layouts if LAYOUTS.get(key) not in unsupported]
        report.context.append(
            "not supported by the function, so not checked: "
            + "; ".join(f"{name} ({error})" for name, error in unsupported.items())
            + " (it raises there and not on the inputs as given: a bug if it should be supported; else leave it out: "
            f"layouts={tuple(keys)} or --layouts {','.join(keys)})"
        )
    if rejected:
        report.context.append(
            f"the function raises on: {', '.join(rejected)} (reported by the values check only; if it is not "
            "meant to accept that layout, leave it out of layouts=)"
        )
    accepted = [(name, args) for name, args in runs if name not in rejected] or runs
    for key, (title, per_layout, run) in CHECKS.items():
        layouts_to_run = (runs if key == "values" else accepted) if per_layout else runs[:1]
        if key in skip:
            report.results.append(CheckResult(title, SKIPPED, note="asked to (skip=...)"))
        elif key == "compile" and not compile:
            report.results.append(CheckResult(title, SKIPPED, note="off by default (slow): pass compile=True"))
        else:
            report.results.append(_run(title, run, subject, layouts_to_run, tolerance))
    _add_second_order_hint(report)
    _add_forward_mode_hint(report)
    _add_nondeterminism_hint(report)
    if raise_on_failure and not report.passed:
        raise AssertionError(str(report))
    return report


# Layouts that change the inputs' shapes: a function written for one rank (the slides' 2-D X)
# may fairly not support them. A non-contiguous copy has the same shapes: raising there is a bug.
SHAPE_LAYOUTS = (LAYOUTS["batch_size_1"], LAYOUTS["leading_dims"])


def _forward_and_backward(subject, args) -> None:
    """Run the function and its backward once (every floating input requiring grad); raise what they raise."""
    inputs = fresh(args, subject.floating)
    output = checks.one_tensor(subject.function(*inputs), "the function")
    wanted = [inputs[i] for i in subject.floating]
    if wanted and output.requires_grad:
        torch.autograd.grad(output, wanted, torch.ones_like(output), allow_unused=True)


def _import_quietly_what_forward_mode_imports() -> None:
    """Forward-mode AD imports torch's jvp decompositions on first use, and they call the deprecated
    ``torch.jit.script``: a FutureWarning about torch's own code, not the function checked."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import torch._decomp.decompositions_for_jvp  # noqa: F401, PLC0415


# Argument names that say "a target, not something to differentiate".
TARGET_NAMES = frozenset({"y", "t", "target", "targets", "y_true", "label", "labels"})


def _not_differentiated(subject, no_grad: Sequence[int] | None) -> tuple[int, ...]:
    """The floating inputs whose gradient is not checked: ``no_grad`` if given, else those named
    like a target for which the function's backward returns None."""
    if no_grad is not None:
        wrong = [i for i in no_grad if not (0 <= i < len(subject.args) and is_floating(subject.args[i]))]
        if wrong:
            raise ValueError(f"no_grad={tuple(no_grad)}: {wrong} are not positions of floating-point inputs; "
                             f"those are {subject.floating}")
        return tuple(no_grad)
    named = [i for i in subject.floating if subject.labels[i].split("(")[-1].rstrip(")") in TARGET_NAMES]
    if not named:
        return ()
    inputs = fresh(subject.args, subject.floating)
    try:
        output = _quietly(subject.function, *inputs)
        grads = torch.autograd.grad(output, [inputs[i] for i in named], torch.ones_like(output), allow_unused=True)
    except Exception:  # noqa: BLE001 - the checks report it
        return ()
    return tuple(i for i, grad in zip(named, grads, strict=True) if grad is None)


def _quietly(function, *args):
    """``function(*args)`` with its warnings silenced (``x.T`` on a 3-D tensor warns before it fails)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args)


def _layouts_the_function_rejects(subject, runs, may_be_unsupported: bool) -> tuple[dict[str, str], list[str]]:
    """The layouts (other than the inputs as given) the function does not run on. ``unsupported``:
    a layout that changes shapes on which the function or its backward raises while both run on
    the inputs as given (name -> the error, in one line): left out of every check, not a failure.
    ``rejected``: the others on which the forward raises, reported once, by the values check,
    rather than by every check. With ``may_be_unsupported`` False (layouts asked for by name) none is
    unsupported."""
    unsupported, rejected = {}, []
    try:
        _quietly(_forward_and_backward, subject, runs[0][1])
    except Exception:  # noqa: BLE001 - it raises on the inputs as given: every check says so
        given_runs = False
    else:
        given_runs = True
    for name, args in runs[1:]:
        if may_be_unsupported and name in SHAPE_LAYOUTS:
            try:
                _quietly(_forward_and_backward, subject, args)
            except Exception as error:  # noqa: BLE001
                if given_runs:
                    unsupported[name] = f"{type(error).__name__}: {first_line(error, 160)}"
                    continue
        try:
            _quietly(subject.function, *fresh(args))
        except Exception:  # noqa: BLE001 - the values check reports what it was
            rejected.append(name)
    return unsupported, rejected


def _refuse_inputs_outside_the_domain(subject, args, seed: int) -> None:
    """A reference whose output or gradient is NaN on the given inputs (the square root of a
    negative number) makes every comparison meaningless: raise ValueError, naming where."""
    inputs = fresh(args, subject.floating)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        output = checks.one_tensor(subject.reference(*inputs), "the reference")
        found = [("output", output)]
        if subject.floating and output.requires_grad and output.is_floating_point():
            wanted = [inputs[i] for i in subject.floating]
            grads = torch.autograd.grad(output, wanted, checks.random_grad_output(output.shape, seed),
                                        allow_unused=True)
            found += [(f"the gradient of {subject.labels[i]}", grad)
                      for i, grad in zip(subject.floating, grads, strict=True) if grad is not None]
    finite_inputs = all(torch.isfinite(arg).all() for arg in args if is_floating(arg))
    for what, tensor in found:
        if finite_inputs and tensor.is_floating_point() and tensor.isnan().any():
            index = index_of(int(tensor.isnan().flatten().to(torch.int8).argmax()), tensor.shape)
            raise ValueError(
                f"the reference's {what} is NaN at {list(index)} for these inputs: they are outside the function's "
                "domain (a square root or log of a negative number?); give inputs inside it (from the shell: "
                "--low 0.1 --high 2, or --positive)"
            )


def _run(title: str, run: Callable, subject, runs, tolerance) -> CheckResult:
    """One check over the given layouts, merged: failed if any layout failed (its diagnosis names
    the layout unless it is the inputs as given), skipped if every layout was."""
    outcomes = []
    for layout_name, args in runs:
        try:
            outcome = run(subject, args, tolerance)
        except Exception as error:  # noqa: BLE001 - a crash in one check must not hide the others
            outcome = checks.Outcome(FAILED, None, f"{type(error).__name__}: {first_line(error)}")
        outcomes.append((layout_name, outcome))
    total = Errors()
    for name, outcome in outcomes:
        found = outcome.errors
        if found is not None and found.abs_where and name != runs[0][0]:  # say which layout it was found in
            found = Errors(found.max_abs, f"{found.abs_where} ({name})", found.max_rel, f"{found.rel_where} ({name})")
        total = total.merge(found)
    errors = total if total.abs_where else None
    failed = [(name, outcome) for name, outcome in outcomes if outcome.status == FAILED]
    ran = [name for name, outcome in outcomes if outcome.status != SKIPPED]
    note = f"ran on: {', '.join(ran)}" if ran and len(ran) < len(runs) else ""
    if failed:
        if errors is not None and errors.max_abs == 0:  # the failure raised: the zeros are from elsewhere
            errors = None
        name, outcome = failed[0]
        where = "" if name == runs[0][0] else f"({name} layout) "
        note = f"failed on: {', '.join(name for name, _ in failed)}" if len(runs) > 1 else ""
        return CheckResult(title, FAILED, errors, where + outcome.diagnosis, note)
    if not ran:
        return CheckResult(title, SKIPPED, None, note=outcomes[0][1].diagnosis if outcomes else "no layout to run on")
    return CheckResult(title, PASSED, errors, note=note)


FORWARD_MODE_HINT = "backward is right but forward mode is wrong: check the jvp"


def _add_forward_mode_hint(report: Report) -> None:
    if report[CHECKS["gradients"][0]].failed or report[CHECKS["gradcheck"][0]].failed:
        return
    for key in ("forward_ad", "batched_forward_ad", "fwd_over_rev", "jacfwd"):
        result = report[CHECKS[key][0]]
        if result.failed:
            result.diagnosis = f"{FORWARD_MODE_HINT}\n{result.diagnosis}"


FIRST_ORDER_FIRST = "the first-order gradients are wrong too: fix those first, this follows from them"


def _add_second_order_hint(report: Report) -> None:
    first_order = [report[CHECKS[key][0]] for key in ("values", "gradients", "gradcheck")]
    second_order = [report[CHECKS[key][0]] for key in ("second_order", "gradgradcheck", "batched_gradgrad")]
    first_order_right = all(not result.failed for result in first_order)
    for result in second_order:
        if result.failed and first_order_right:
            result.diagnosis = f"{SECOND_ORDER_HINT}\n{result.diagnosis}"
        elif result.failed:  # what it found follows from the first-order mistake: no more to say
            result.diagnosis, result.errors = FIRST_ORDER_FIRST, None


NONDETERMINISM_HINT = (
    f"{checks.NOT_DETERMINISTIC} (see the failure that says so): a comparison with a backward that changes "
    "from run to run tells nothing more; fix that first"
)


def _add_nondeterminism_hint(report: Report) -> None:
    """A backward that gives different gradients each run fails most checks, and each one's own
    guess (a missing factor, ...) would contradict the others: it is said once, and every other
    failure points to it instead of guessing."""
    if not any(result.failed and checks.NOT_DETERMINISTIC in result.diagnosis for result in report.results):
        return
    for result in report.results:
        if result.failed and checks.NOT_DETERMINISTIC not in result.diagnosis:
            result.diagnosis = NONDETERMINISM_HINT
        elif result.failed:  # the second-order hint's "first-order gradients are wrong too" is beside the point
            result.diagnosis = "\n".join(line for line in result.diagnosis.splitlines()
                                         if checks.NOT_DETERMINISTIC in line)
