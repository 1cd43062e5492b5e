"""Multiple linear regression on MNIST by gradient descent (MNIST_Multiple_Linear_Regression).

The model is one manualbp Linear layer, Yp = X W + b, with one-hot targets Y and the ridge loss

    L = ½‖X W + 1bᵀ − Y‖² + γ/2 ‖W‖²        (W: (in, out) as on the slides)

trained by full-batch gradient descent (``python train.py model=mnist_linreg``). Training gets
δW from the Linear layer's backward (XᵀδZ with δZ = Yp − Y) plus the optimizer's weight decay
γW; this module holds the slide's closed form of the same gradient, and the exact minimiser from
the normal equations, to check both against (``manualbp.training.callbacks.RidgeClosedForm``
reports both after a run).
"""

from __future__ import annotations

import torch
from torch import Tensor


def ridge_gradient(inputs: Tensor, targets: Tensor, weight: Tensor, bias: Tensor, gamma: float):
    """The slide's closed form: ∇W L = (XᵀX + γI)W − XᵀY (+ Xᵀ1bᵀ for the bias), ∇b L = Σ(yp − y).

    inputs X: (N, in); targets Y: (N, out); weight W: (in, out) (the slides' layout, the
    transpose of torch's); bias b: (out,). Returns (∇W: (in, out), ∇b: (out,)).
    """
    gram = inputs.T @ inputs + gamma * torch.eye(inputs.shape[1], dtype=inputs.dtype, device=inputs.device)
    grad_weight = gram @ weight - inputs.T @ targets + torch.outer(inputs.sum(0), bias)  # (XᵀX + γI)W − XᵀY + Xᵀ1bᵀ
    grad_bias = (inputs @ weight + bias - targets).sum(0)  # Σ_i (yp_i − y_i)
    return grad_weight, grad_bias


def ridge_solution(inputs: Tensor, targets: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """The minimiser of L, where the gradient above is zero: the normal equations
    [XᵀX + γI, Xᵀ1; 1ᵀX, N] [W; bᵀ] = [XᵀY; 1ᵀY], solved in float64. Returns (W: (in, out), b)."""
    x, y = inputs.double(), targets.double()
    augmented = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
    penalty = torch.full((augmented.shape[1],), float(gamma), dtype=x.dtype, device=x.device)
    penalty[-1] = 0  # the bias is not penalised
    solution = torch.linalg.solve(augmented.T @ augmented + torch.diag(penalty), augmented.T @ y)
    return solution[:-1], solution[-1]
