"""Compare a result with the reference's: the largest errors and where, and a diagnosis in words
of what kind of mistake the difference looks like."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from manualbp.testing.report import Errors

# How close "equals the reference transposed / times a constant" must be: far looser than a
# passing check (a few ulps) and far tighter than a wrong formula.
_DIAGNOSIS_RTOL = 1e-6


def where(label: str, index: tuple[int, ...]) -> str:
    """``"input 0 (x)[2, 3]"``; the label alone for a scalar."""
    return f"{label}[{', '.join(map(str, index))}]" if index else label


def index_of(flat: int, shape: torch.Size) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), shape)) if len(shape) else ()


def errors(label: str, got: Tensor, expected: Tensor, floor: float = 1e-12) -> Errors:
    """The largest absolute and relative errors of ``got`` against ``expected`` (same shape). The
    relative error |got − expected| / |expected| counts only where |expected| > floor·max|expected|
    (where the reference is 0 the absolute error says it all)."""
    got, expected = got.detach().to(torch.float64), expected.detach().to(torch.float64)
    if got.numel() == 0:
        return Errors()
    difference = torch.nan_to_num((got - expected).abs(), nan=torch.inf)
    significant = expected.abs() > floor * torch.nan_to_num(expected.abs().max())
    relative = torch.where(significant, difference / expected.abs(), 0.0)
    abs_flat, rel_flat = int(difference.argmax()), int(relative.argmax())
    return Errors(
        float(difference.flatten()[abs_flat]),
        where(label, index_of(abs_flat, got.shape)),
        float(relative.flatten()[rel_flat]),
        where(label, index_of(rel_flat, got.shape)),
    )


def close(got: Tensor, expected: Tensor, rtol: float, atol: float) -> bool:
    """|got − expected| ≤ atol + rtol·|expected| everywhere (NaN only where the reference has NaN), in
    the reference's dtype (another dtype is never close: ``diagnose`` names the mismatch)."""
    return (got.shape == expected.shape and got.dtype == expected.dtype
            and torch.allclose(got.detach(), expected.detach(), rtol, atol, equal_nan=True))


def _roughly(got: Tensor, expected: Tensor) -> bool:
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return got.shape == expected.shape and torch.allclose(got, expected, _DIAGNOSIS_RTOL, _DIAGNOSIS_RTOL * scale)


def _roughly_at(got: Tensor, expected: Tensor, dtype: torch.dtype, steps: int = 64) -> bool:
    """``got`` equals ``expected`` within ``steps`` rounding steps of ``dtype``."""
    step = steps * torch.finfo(dtype).eps
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return torch.allclose(got, expected, rtol=step, atol=step * scale)


# A constant factor written in terms of a count N: (the form, the factor for N, what it suggests).
_FACTORS_OF_N = (
    ("N", lambda n: n, "a missing or extra 1/N? N times too large: a sum for a mean?"),
    ("1/N", lambda n: 1 / n, "a missing or extra 1/N? N times too small: a mean for a sum?"),
    ("N/2", lambda n: n / 2, "a missing 2/N? (the mean of squares' derivative is 2/N·(ŷ − y))"),
    ("2/N", lambda n: 2 / n, "an extra 2/N?"),
    ("2N", lambda n: 2 * n, "a missing 1/(2N)? (a ½ and a 1/N)"),
    ("1/(2N)", lambda n: 1 / (2 * n), "an extra 1/(2N), or a ½ where the mean is already taken?"),
)
_SMALL_FACTORS = (
    (2.0, "2", "a missing ½ or an extra 2 (the 2 of d(x²)/dx = 2x taken twice, or a ½·x² loss)?"),
    (0.5, "1/2", "a missing 2 (d(x²)/dx = 2x)?"),
)


def _fraction(value: float, batch_size: int | None, count: int = 0) -> str:
    """What a constant factor may mean, in a parenthesis (or nothing): N, N/2, 2/N, ... for N the
    batch size or the number of elements ``count`` (a mean over all of them), or a small constant."""
    def near(target: float) -> bool:
        return abs(value - target) <= 1e-6 * abs(target)

    counts = [(batch_size, "the batch size")] if batch_size and batch_size > 1 else []
    if count > 1 and count != batch_size:
        counts.append((count, "the number of elements"))
    for size, what in counts:
        for form, factor, meaning in _FACTORS_OF_N:
            if near(factor(size)):
                named = f"N, {what}" if form == "N" else f"{form}, N = {size} {what}"
                return f" ({value:.6g} = {named}: {meaning})"
    for target, form, meaning in _SMALL_FACTORS:
        if near(target):
            return f" (= {form}: {meaning})"
    if value and abs(value) < 1 and abs(1 / value - round(1 / value)) < 1e-6:
        return f" (= 1/{round(1 / value)})"
    return ""


# Lower precisions a float64 result may have been computed or returned in, finest first.
_LOWER_PRECISIONS = (torch.float32, torch.float16, torch.bfloat16)


def _lower_precision(got: Tensor, expected: Tensor) -> torch.dtype | None:
    """The lower-precision dtype whose rounding explains the whole difference between ``got`` and
    ``expected`` (float64): every value of ``got`` is one of that dtype's numbers (the reference's
    are not) and lies within a few of its rounding steps of the reference; None if none does."""
    for dtype in _LOWER_PRECISIONS:
        if not torch.equal(got, got.to(dtype).to(torch.float64)):
            continue
        if torch.equal(expected, expected.to(dtype).to(torch.float64)):
            return None  # the reference's values are that dtype's numbers too: its rounding tells nothing
        if _roughly_at(got, expected, dtype):
            return dtype
    return None


def _dtype_mismatch(label: str, got_dtype: torch.dtype, expected_dtype: torch.dtype, what: str) -> str:
    who = "backward" if what == "gradient" else "the function"
    return (
        f"{label}: a dtype mismatch: the {what} has {str(got_dtype).removeprefix('torch.')} precision where the "
        f"reference's is {str(expected_dtype).removeprefix('torch.')}: {who} computed or returned "
        f"{str(got_dtype).removeprefix('torch.')} for {str(expected_dtype).removeprefix('torch.')} inputs"
        + (" (autograd casts a gradient to its input's dtype without a word)" if what == "gradient" else "")
        + "; compute in the inputs' dtype (no .float(), new tensors made with dtype=x.dtype)"
    )


# What a transposed δW most likely is, by how W is stored (see inputs.weight_layouts).
TRANSPOSED_HINTS = {
    "slides": "e.g. δW = δZᵀX where W stored (in, out), as on the slides (Z = XW), needs XᵀδZ",
    "torch": "e.g. δW = XᵀδZ where torch's (out, in) layout (Z = XWᵀ) needs δZᵀX",
    "either": "e.g. XᵀδZ and δZᵀX swapped: W stored (in, out) as on the slides (Z = XW) needs δW = XᵀδZ, "
              "torch's (out, in) (Z = XWᵀ) needs δZᵀX",
}


def diagnose(
    label: str, got: Tensor | None, expected: Tensor | None, batch_size: int | None = None, what: str = "gradient",
    layout: str | None = None,
) -> str:
    """In words, what ``got`` looks like next to the reference's ``expected`` gradient.

    Tries, in order: no gradient (None or zeros), wrong shape, a dtype mismatch (another dtype,
    or float64 values with only float32's precision: autograd casts a gradient back to its input's
    dtype), sign flipped, transposed, a constant factor (naming 1/N when it is the batch size);
    otherwise the ratio is not constant and the largest mismatch is named.
    """
    if got is None:
        return f"{label}: no gradient reached it: backward returned None for it (the reference's gradient is not zero)"
    if expected is None:
        return f"{label}: got a gradient where the reference has none (is it an input of the reference?)"
    got_dtype, expected_dtype = got.dtype, expected.dtype
    got, expected = got.detach().to(torch.float64), expected.detach().to(torch.float64)
    if got.shape != expected.shape:
        return wrong_shape(label, tuple(expected.shape), tuple(got.shape), what, layout)
    if (not_finite := _not_finite(label, got, expected, what)) is not None:
        return not_finite
    if got_dtype != expected_dtype and got_dtype.is_floating_point and _roughly_at(got, expected, got_dtype):
        return _dtype_mismatch(label, got_dtype, expected_dtype, what)
    if expected_dtype == torch.float64 and (lower := _lower_precision(got, expected)) is not None:
        return _dtype_mismatch(label, lower, expected_dtype, what)
    if expected_dtype == torch.float64 and _roughly_at(got, expected, torch.float32, steps=16):
        # float64 values, but equal to the reference only to float32's precision: some step ran in float32?
        worst = float(((got - expected).abs() / expected.abs().clamp_min(1e-300)).max())
        return (
            f"{label}: equals the reference only to about float32's precision (relative error up to {worst:.1e}): "
            "a dtype mismatch? a step computed in float32 (a .float(), a float32 tensor or constant) for float64 "
            "inputs; compute in the inputs' dtype"
        )
    if what == "gradient" and expected.abs().max() > 0 and got.abs().max() == 0:
        return f"{label}: no gradient reached it: backward returned zeros (the reference's gradient is not zero)"
    if expected.abs().max() == 0:
        return f"{label}: the reference's {what} is zero here, but got nonzero values"
    if _roughly(got, -expected):
        return f"{label}: the sign is flipped: the {what} is minus the reference's (a − b written as b − a?)"
    if got.dim() >= 2 and got.shape[-1] == got.shape[-2] and _roughly(got, expected.transpose(-1, -2)):
        hint = f" ({TRANSPOSED_HINTS[layout]})" if layout else " (a product's operands in the wrong order?)"
        return f"{label}: the {what} equals the reference's transposed{hint}"
    factor = float((got * expected).sum() / (expected * expected).sum())  # least-squares got ≈ c·expected
    if _roughly(got, factor * expected):
        meaning = _fraction(factor, batch_size, got.numel())
        return f"{label}: off by a constant factor: the {what} is {factor:.6g} × the reference's{meaning}"
    return _largest_mismatch(label, got, expected, what)


def _not_finite(label: str, got: Tensor, expected: Tensor, what: str) -> str | None:
    """NaN or an infinity in ``got`` where the reference's value is finite: said first, since no
    comparison means anything past it."""
    for kind, bad in (("NaN", got.isnan()), ("an infinity", got.isinf())):
        bad = bad & expected.isfinite()
        if bad.any():
            flat = int(bad.flatten().to(torch.int8).argmax())
            return (
                f"{label}: {kind} in the {what} at {where(label, index_of(flat, got.shape))} ({int(bad.sum())} of "
                f"{bad.numel()} elements; the reference's is {float(expected.flatten()[flat]):.6g} there): a 0/0, a "
                "division by zero, a log or square root of a negative number, or inf − inf?"
            )
    return None


def _largest_mismatch(label: str, got: Tensor, expected: Tensor, what: str) -> str:
    flat = int((got - expected).abs().argmax())
    index = index_of(flat, got.shape)
    at = where(label, index)
    message = (
        f"{label}: the largest mismatch is at {at}: got {float(got.flatten()[flat]):.6g}, "
        f"expected {float(expected.flatten()[flat]):.6g}"
    )
    nonzero = expected.abs() > 1e-12 * expected.abs().max()
    ratio = got[nonzero] / expected[nonzero]
    if ratio.numel() > 1:
        message += (
            f"; the ratio to the reference is not constant (from {float(ratio.min()):.4g} to {float(ratio.max()):.4g} "
            "across elements)"
        )
        if what == "gradient":
            message += ": a factor of the derivative missing or wrong (e.g. σ instead of σ(1 − σ))?"
    return message


def wrong_shape(label: str, expected: tuple[int, ...], got: tuple[int, ...], what: str = "gradient",
                layout: str | None = None) -> str:
    message = f"{label}: the {what} has the wrong shape: expected {expected}, got {got}"
    if len(got) >= 2 and got == expected[:-2] + (expected[-1], expected[-2]):
        hint = TRANSPOSED_HINTS[layout] if layout else "a product's operands in the wrong order?"
        message += f" (the reference's shape transposed: {hint})"
    return message


_INVALID_GRADIENT = re.compile(
    r"(?P<function>\w+) returned an invalid gradient at index (?P<index>\d+) - got \[(?P<got>[\d, ]*)\] "
    r"but expected shape compatible with \[(?P<expected>[\d, ]*)\]"
)
_GRADIENT_COUNT = re.compile(
    r"(?P<function>\w+) returned an incorrect number of gradients \(expected (\d+), got (\d+)\)"
)
_NOT_CONNECTED = "does not require grad and does not have a grad_fn"


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(size) for size in text.split(",") if size.strip())


def diagnose_error(error: BaseException, labels: list[str] | None = None,
                   layouts: dict[str, str] | None = None) -> str:
    """A backward that raised: say what autograd's message means. ``labels`` names the Function's
    inputs when the function checked is the Function itself; ``layouts`` how its 2-D inputs are stored."""
    message = str(error).strip()
    if match := _INVALID_GRADIENT.search(message):
        index = int(match["index"])
        name = labels[index] if labels and index < len(labels) else f"its input {index}"
        return wrong_shape(
            f"{match['function']}'s gradient for {name}",
            _shape(match["expected"]),
            _shape(match["got"]),
            layout=(layouts or {}).get(name),
        )
    if match := _GRADIENT_COUNT.search(message):
        return (
            f"{match['function']} returned {match[3]} gradients for {match[2]} forward inputs: backward must return "
            "one gradient per forward input (None for non-tensor arguments)"
        )
    if _NOT_CONNECTED in message:
        return (
            "the output is not connected to the inputs by autograd (computed under no_grad, detached, "
            "or backward's result built from tensors autograd cannot see?)"
        )
    return f"{type(error).__name__}: {first_line(message)}"


def first_line(message: str, limit: int = 300) -> str:
    line = str(message).strip().splitlines()[0] if str(message).strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
