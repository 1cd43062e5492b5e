"""The check cells of the notebooks' exercises: is your answer right, and if not, what is wrong?

Every ``check_*`` function prints one verdict line and returns True only for a right answer:

* ``<exercise>: correct (...)``
* ``<exercise>: wrong: ...`` followed by what is wrong (for a backward pass: the failing checks of
  :func:`manualbp.testing.check_function`, with its diagnosis: transposed, a missing factor, a flipped
  sign, a wrong shape, ...)
* ``<exercise>: not done yet: ...`` while the exercise still raises ``NotImplementedError``.

They never raise, so a notebook with unsolved exercises still runs top to bottom. The inputs are
small random float64 tensors made here (seeded), not the notebook's data.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from manualbp.regression import ridge_solution
from manualbp.testing import check_function

# A hand-written backward is checked on the layouts it can be expected to handle: the inputs as
# given, a batch of one (where there is a batch) and non-contiguous tensors.
LAYOUTS = ("as_given", "batch_size_1", "non_contiguous")


def function_from(forward: Callable[..., Tensor], backward: Callable[..., tuple]) -> Callable[..., Tensor]:
    """An autograd Function computing ``forward(*inputs)`` whose backward pass is yours:
    ``backward(grad_output, *inputs)`` returns one gradient per input (None for a non-tensor).
    Returns its ``apply``."""

    class HandWritten(torch.autograd.Function):
        @staticmethod
        def forward(*inputs):
            return forward(*inputs)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, grad_output):
            return tuple(backward(grad_output, *ctx.saved_tensors))

    return HandWritten.apply


def _not_done(exercise: str, answer: Callable[[], object]) -> bool:
    """Call the student's function once; print the verdict and return True if it is not written yet
    (raises NotImplementedError) or cannot be called at all."""
    try:
        answer()
    except NotImplementedError as error:
        print(f"{exercise}: not done yet: {error or 'the function still raises NotImplementedError'}")
        return True
    except Exception as error:  # noqa: BLE001 - whatever the student's code raises is the answer
        print(f"{exercise}: wrong: it raises {type(error).__name__}: {error}")
        return True
    return False


def check_backward(exercise: str, backward: Callable, forward: Callable, reference: Callable, inputs: tuple,
                   layouts=LAYOUTS) -> bool:
    """Check a hand-written ``backward(grad_output, *inputs)`` of ``forward`` against autograd through
    ``reference`` (the same computation in torch ops) with :func:`manualbp.testing.check_function`."""
    grad_output = torch.ones_like(forward(*inputs))
    if _not_done(exercise, lambda: backward(grad_output, *inputs)):
        return False
    with warnings.catch_warnings():  # torch's own deprecation notices (torch.jit.script) are not the student's
        warnings.simplefilter("ignore", FutureWarning)
        report = check_function(function_from(forward, backward), reference, inputs, layouts=layouts,
                                raise_on_failure=False)
    if report.passed:
        passed = [result.name for result in report.results if result.passed]
        print(f"{exercise}: correct ({len(passed)} checks passed: {', '.join(passed)})")
        return True
    # The gradient comparison says most about the mistake; the other failures mostly follow from it.
    failures = sorted(report.failures, key=lambda result: not result.name.startswith("gradients vs reference"))
    print(f"{exercise}: wrong: {len(failures)} of manualbp.testing.check_function's checks failed. The first:")
    print("\n".join(failures[0].lines()))
    if failures[1:]:
        print("        also failed: " + "; ".join(result.name for result in failures[1:]))
    return False


def _random(*shape: int, generator: torch.Generator) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=generator)


# ----------------------------------------------------------------------------------------------
# Understanding_chain_rule: Examples 1 and 2
# ----------------------------------------------------------------------------------------------


def matmul(X: Tensor, W: Tensor) -> Tensor:
    """Z = X W, in torch (the reference)."""
    return X @ W


def check_example_1(example_1_backward: Callable) -> bool:
    """``example_1_backward(dz, x1, x2, w1, w2) -> (dx1, dx2, dw1, dw2)`` for z = x1 w1 + x2 w2, i.e.
    Z = X W with X = [x1 x2] (1×2) and W = [w1; w2] (2×1)."""

    def backward(grad_z, X, W):
        dx1, dx2, dw1, dw2 = (
            torch.as_tensor(d, dtype=X.dtype)
            for d in example_1_backward(grad_z[0, 0], X[0, 0], X[0, 1], W[0, 0], W[1, 0])
        )
        return torch.stack([dx1, dx2]).reshape(1, 2), torch.stack([dw1, dw2]).reshape(2, 1)

    generator = torch.Generator().manual_seed(1)
    inputs = (_random(1, 2, generator=generator), _random(2, 1, generator=generator))
    return check_backward("Example 1", backward, matmul, matmul, inputs, layouts=("as_given", "non_contiguous"))


def check_example_2(example_2_backward: Callable) -> bool:
    """``example_2_backward(dZ, X, W) -> (dX, dW)`` for Z = X W, X: (N, D), W: (D, M)."""
    generator = torch.Generator().manual_seed(2)
    inputs = (_random(5, 3, generator=generator), _random(3, 4, generator=generator))
    return check_backward("Example 2", example_2_backward, matmul, matmul, inputs)


# ----------------------------------------------------------------------------------------------
# MNIST_NN_manualBP: softmax with the L2 loss
# ----------------------------------------------------------------------------------------------


def softmax_l2_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """L = ½ Σ_n ‖softmax(logits_n) − y_n‖², y_n the one-hot row of labels_n (the reference)."""
    targets = torch.nn.functional.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return 0.5 * ((torch.softmax(logits, dim=-1) - targets) ** 2).sum()


def check_softmax_l2_backward(softmax_l2_backward: Callable) -> bool:
    """``softmax_l2_backward(logits, Y) -> δlogits`` for L = ½ Σ_n ‖softmax(logits_n) − Y_n‖²,
    logits: (N, C), Y: one-hot rows (N, C)."""

    def backward(grad_output, logits, labels):
        targets = torch.nn.functional.one_hot(labels, logits.shape[-1]).to(logits.dtype)
        return grad_output * softmax_l2_backward(logits, targets), None

    generator = torch.Generator().manual_seed(3)
    inputs = (3 * _random(6, 4, generator=generator), torch.randint(0, 4, (6,), generator=generator))
    return check_backward("softmax + L2 loss", backward, softmax_l2_loss, softmax_l2_loss, inputs)


# ----------------------------------------------------------------------------------------------
# MNIST_Multiple_Linear_Regression: the ridge gradient and gradient descent
# ----------------------------------------------------------------------------------------------


def _regression_problem(seed: int = 4) -> tuple[Tensor, Tensor, float]:
    """A small, well-conditioned problem: X (40, 5), Y (40, 3) one-hot rows, γ = 0.5."""
    generator = torch.Generator().manual_seed(seed)
    inputs = _random(40, 5, generator=generator)
    targets = torch.nn.functional.one_hot(torch.randint(0, 3, (40,), generator=generator), 3).to(torch.float64)
    return inputs, targets, 0.5


def ridge_loss(inputs: Tensor, targets: Tensor, weight: Tensor, bias: Tensor, gamma: float) -> Tensor:
    """L = ½‖X W + 1bᵀ − Y‖² + γ/2 ‖W‖², W: (in, out) as on the slides."""
    return 0.5 * ((inputs @ weight + bias - targets) ** 2).sum() + 0.5 * gamma * (weight**2).sum()


def check_ridge_gradient(my_ridge_gradient: Callable) -> bool:
    """``my_ridge_gradient(X, Y, W, b, gamma) -> (∇W L, ∇b L)`` of :func:`ridge_loss`."""
    inputs, targets, gamma = _regression_problem()
    generator = torch.Generator().manual_seed(5)
    weight, bias = _random(5, 3, generator=generator), _random(3, generator=generator)

    def loss(W, b):
        return ridge_loss(inputs, targets, W, b, gamma)

    def backward(grad_output, W, b):
        grad_weight, grad_bias = my_ridge_gradient(inputs, targets, W, b, gamma)
        return grad_output * grad_weight, grad_output * grad_bias

    layouts = ("as_given", "non_contiguous")
    return check_backward("ridge gradient", backward, loss, loss, (weight, bias), layouts=layouts)


def check_gradient_descent(my_gradient_descent: Callable) -> bool:
    """``my_gradient_descent(X, Y, gamma, lr, steps) -> (W, b)`` from W = 0, b = 0 must reach the
    minimiser of :func:`ridge_loss` (the normal equations' solution) on a small problem."""
    exercise = "gradient descent"
    inputs, targets, gamma = _regression_problem()
    augmented = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], dim=1)
    lr = 1 / torch.linalg.eigvalsh(augmented.T @ augmented + gamma * torch.eye(6, dtype=inputs.dtype)).max().item()
    steps = 500
    answer: list = []
    if _not_done(exercise, lambda: answer.extend(my_gradient_descent(inputs, targets, gamma, lr, steps))):
        return False
    best_weight, best_bias = ridge_solution(inputs, targets, gamma)
    best_loss = ridge_loss(inputs, targets, best_weight, best_bias, gamma).item()
    try:
        weight, bias = (torch.as_tensor(value, dtype=torch.float64) for value in answer)
        loss = ridge_loss(inputs, targets, weight, bias, gamma).item()
    except (TypeError, ValueError, RuntimeError) as error:
        print(f"{exercise}: wrong: expected (W of shape (5, 3), b of shape (3,)), got {answer!r:.200} ({error})")
        return False
    if weight.shape != best_weight.shape or bias.shape != best_bias.shape:
        print(f"{exercise}: wrong: expected W of shape {tuple(best_weight.shape)} and b of shape "
              f"{tuple(best_bias.shape)} (the slides' layout), got {tuple(weight.shape)} and {tuple(bias.shape)}")
        return False
    distance = max((weight - best_weight).abs().max().item(), (bias - best_bias).abs().max().item())
    start_loss = ridge_loss(inputs, targets, torch.zeros_like(weight), torch.zeros_like(bias), gamma).item()
    if distance < 1e-6:
        print(f"{exercise}: correct ({steps} steps of lr {lr:.4f} reach the closed-form minimiser to {distance:.1e}; "
              f"loss {loss:.6f}, minimum {best_loss:.6f})")
        return True
    if not loss == loss or loss > start_loss:  # NaN, or worse than W = 0, b = 0
        why = "the loss went up: is the step θ ← θ − lr·∇θ L (minus, not plus), with the gradient of this loss?"
    elif bias.abs().max().item() == 0 and best_bias.abs().max().item() > 0:
        why = "b is still 0: update the bias too, b ← b − lr·∇b L"
    else:
        why = (f"the loss fell from {start_loss:.4f} to {loss:.4f} but the minimum is {best_loss:.6f}: "
               "check the gradient (run its check first), and that every step uses the current W and b")
    print(f"{exercise}: wrong: after {steps} steps of lr {lr:.4f} from W = 0, b = 0 the answer is {distance:.2e} "
          f"away from the closed-form minimiser: {why}")
    return False


# ----------------------------------------------------------------------------------------------
# Attention_manualBP: the softmax backward
# ----------------------------------------------------------------------------------------------


def softmax_rows(logits: Tensor) -> Tensor:
    """Y = softmax(X) over each row, in torch (the reference)."""
    return torch.softmax(logits, dim=-1)


def check_softmax_backward(softmax_backward: Callable) -> bool:
    """``softmax_backward(dY, Y) -> δX`` for Y = softmax(X) over each row; dY, Y, δX: (N, C)."""

    def backward(grad_output, logits):
        return (softmax_backward(grad_output, torch.softmax(logits, dim=-1)),)

    generator = torch.Generator().manual_seed(5)
    inputs = (2 * _random(6, 5, generator=generator),)
    return check_backward("softmax backward", backward, softmax_rows, softmax_rows, inputs)
