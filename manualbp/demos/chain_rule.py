"""The chain rule on the lecture's worked examples (Understanding_chain_rule), each number by hand
next to PyTorch's autograd.

    python -m manualbp.demos.chain_rule

1. f(x) = (x1 + 10x2)² + 5(x3 − x4)² + (x2 + 2x3)⁴ + 10(x1 − x4)⁴ at x = [3, −1, 0, 1]:
   the hand-derived gradient.
2. x = (z1 − z2, z1², z2², z1² + z1z2): ∇z f as the Jacobian-vector product Jᵀ ∇x f.
3. The scalar net Yp = σ(X W1 + b1) W2 + b2 with L = ½(Yp − Y)²: every δ of the slide, by
   manualbp's formula functions (the same code the layers' backward runs).
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

import manualbp.functional as mbf

Rows = list[tuple[str, Tensor, Tensor]]  # (name, by hand, by autograd)


# ----------------------------------------------------------------------------------------------
# 1. Four variables
# ----------------------------------------------------------------------------------------------


def f(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x
    return (x1 + 10 * x2) ** 2 + 5 * (x3 - x4) ** 2 + (x2 + 2 * x3) ** 4 + 10 * (x1 - x4) ** 4


def grad_f_by_hand(x: Tensor) -> Tensor:
    """∂f/∂x1 = 2(x1 + 10x2) + 40(x1 − x4)³, ∂f/∂x2 = 20(x1 + 10x2) + 4(x2 + 2x3)³,
    ∂f/∂x3 = 10(x3 − x4) + 8(x2 + 2x3)³, ∂f/∂x4 = −10(x3 − x4) − 40(x1 − x4)³."""
    x1, x2, x3, x4 = x
    return torch.stack([
        2 * (x1 + 10 * x2) + 40 * (x1 - x4) ** 3,
        20 * (x1 + 10 * x2) + 4 * (x2 + 2 * x3) ** 3,
        10 * (x3 - x4) + 8 * (x2 + 2 * x3) ** 3,
        -10 * (x3 - x4) - 40 * (x1 - x4) ** 3,
    ])


def _autograd(function, *inputs: Tensor) -> tuple[Tensor, ...]:
    inputs = tuple(t.detach().clone().requires_grad_(True) for t in inputs)
    return torch.autograd.grad(function(*inputs), inputs)


def four_variables(x=(3.0, -1.0, 0.0, 1.0)) -> Rows:
    x = torch.tensor(x, dtype=torch.float64)
    return [("∇x f", grad_f_by_hand(x), _autograd(f, x)[0])]


# ----------------------------------------------------------------------------------------------
# 2. Through x(z): the Jacobian-vector product
# ----------------------------------------------------------------------------------------------


def x_of_z(z: Tensor) -> Tensor:
    z1, z2 = z
    return torch.stack([z1 - z2, z1**2, z2**2, z1**2 + z1 * z2])


def jacobian_by_hand(z: Tensor) -> Tensor:
    """J = ∂x/∂z, (4, 2): rows ∂x_i/∂(z1, z2)."""
    z1, z2 = z
    one, zero = torch.ones_like(z1), torch.zeros_like(z1)
    return torch.stack([
        torch.stack([one, -one]),
        torch.stack([2 * z1, zero]),
        torch.stack([zero, 2 * z2]),
        torch.stack([2 * z1 + z2, z1]),
    ])


def through_z(z=(2.0, 1.0)) -> Rows:
    z = torch.tensor(z, dtype=torch.float64)
    by_hand = jacobian_by_hand(z).T @ grad_f_by_hand(x_of_z(z))  # ∇z f = Jᵀ ∇x f
    return [("∇z f = Jᵀ∇x f", by_hand, _autograd(lambda t: f(x_of_z(t)), z)[0])]


# ----------------------------------------------------------------------------------------------
# 3. The scalar net
# ----------------------------------------------------------------------------------------------


def scalar_net(x=1.5, y=0.5, w1=0.8, b1=-0.2, w2=1.3, b2=0.1) -> Rows:
    """Every δ of the slide for Yp = σ(X W1 + b1) W2 + b2, L = ½(Yp − Y)², by hand (manualbp's
    formulas on 1×1 tensors) and by autograd (``retain_grad`` on every intermediate)."""
    X, Y, W1, B1, W2, B2 = (torch.tensor([[v]], dtype=torch.float64) for v in (x, y, w1, b1, w2, b2))

    # Forward pass, by the formulas: Z1 = X W1, Z2 = Z1 + b1, Z3 = σ(Z2), Z4 = Z3 W2, Yp = Z4 + b2.
    Z2 = mbf.linear_forward(X, W1, B1.flatten())  # Z1 + b1 with Z1 = X W1
    Z3 = mbf.sigmoid_forward(Z2)
    Yp = mbf.linear_forward(Z3, W2, B2.flatten())  # Z4 + b2 with Z4 = Z3 W2

    # Backward pass, by the formulas.
    one = torch.ones((), dtype=torch.float64)
    dYp = mbf.euclidean_loss_backward(one, Yp, Y)  # δYp = yp − y
    dZ4 = dYp  # Yp = Z4 + b2
    dZ3, dW2, db2 = mbf.linear_backward(dZ4, Z3, W2)  # δZ3 = W2 δZ4, δW2 = Z3 δZ4, δb2 = δYp
    dZ2 = mbf.sigmoid_backward(dZ3, Z3)  # δZ2 = σ'(Z2) δZ3
    dZ1 = dZ2  # Z2 = Z1 + b1
    _, dW1, db1 = mbf.linear_backward(dZ1, X, W1)  # δW1 = X δZ1, δb1 = δZ2

    # The same net through autograd, every intermediate kept.
    w1_, b1_, w2_, b2_ = (t.clone().requires_grad_(True) for t in (W1, B1, W2, B2))
    z1 = X * w1_
    z2 = z1 + b1_
    z3 = torch.sigmoid(z2)
    z4 = z3 * w2_
    yp = z4 + b2_
    for tensor in (z1, z2, z3, z4, yp):
        tensor.retain_grad()
    (0.5 * (yp - Y) ** 2).sum().backward()

    return [
        ("δYp", dYp, yp.grad), ("δZ4", dZ4, z4.grad), ("δZ3", dZ3, z3.grad),
        ("δZ2", dZ2, z2.grad), ("δZ1", dZ1, z1.grad), ("δW1", dW1, w1_.grad),
        ("δb1", db1.reshape(1, 1), b1_.grad), ("δW2", dW2, w2_.grad), ("δb2", db2.reshape(1, 1), b2_.grad),
    ]


def _print(title: str, rows: Rows) -> None:
    print(title)
    for name, by_hand, by_autograd in rows:
        agree = "agree" if torch.allclose(by_hand, by_autograd, rtol=1e-12, atol=1e-12) else "DISAGREE"
        hand = [round(v, 10) for v in by_hand.flatten().tolist()]
        auto = [round(v, 10) for v in by_autograd.flatten().tolist()]
        print(f"  {name:14s} by hand {hand}   autograd {auto}   {agree}")
    print()


def main(argv: list[str] | None = None) -> dict[str, Rows]:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    sections = {
        "f at x = [3, -1, 0, 1]": four_variables(),
        "f(x(z)) at z = [2, 1], x = (z1 - z2, z1², z2², z1² + z1z2)": through_z(),
        "scalar net Yp = σ(X·W1 + b1)·W2 + b2, L = ½(Yp - Y)², X=1.5 Y=0.5 W1=0.8 b1=-0.2 W2=1.3 b2=0.1": scalar_net(),
    }
    for title, rows in sections.items():
        _print(title, rows)
    return sections


if __name__ == "__main__":
    main()
