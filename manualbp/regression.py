"""Multiple linear regression on MNIST by gradient descent (MNIST_Multiple_Linear_Regression).

The model is one manualbp Linear layer, Yp = X W + b, with one-hot targets Y and the ridge loss

    L = ½‖X W + 1bᵀ − Y‖² + γ/2 ‖W‖²        (W: (in, out) as on the slides)

trained by full-batch gradient descent (``python train.py model=mnist_linreg``). Training gets
δW from the Linear layer's backward (XᵀδZ with δZ = Yp − Y) plus the optimizer's weight decay
γW; this module holds the slide's closed form of the same gradient, and the exact minimiser from
the normal equations, to check both against.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from manualbp.module import class_indices


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


class RidgeClosedForm(L.Callback):
    """At the end of training, solves the normal equations on the training split and reports
    (results.json) the closed-form solution's test accuracy and how close gradient descent got:
    ‖W_gd − W*‖ / ‖W*‖ and the training loss of both."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma
        self.results: dict = {}

    @torch.no_grad()
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        inputs, targets = data.splits["train"]
        weight, bias = ridge_solution(inputs, targets, self.gamma)
        layer = next(m for m in pl_module.net.modules() if isinstance(m, torch.nn.Linear))
        trained_weight = layer.weight.detach().double().T.cpu()
        test_inputs, test_targets = data.splits["test"]
        predictions = (test_inputs.double() @ weight + bias).argmax(1)

        def loss(w, b):
            residual = inputs.double() @ w + b - targets.double()
            return 0.5 * residual.pow(2).sum().item() + 0.5 * self.gamma * w.pow(2).sum().item()

        self.results = {
            "closed_form/test_acc": (predictions == class_indices(test_targets)).double().mean().item(),
            "closed_form/weight_rel_distance": ((trained_weight - weight).norm() / weight.norm()).item(),
            "closed_form/train_loss": loss(weight, bias),
            "gradient_descent/train_loss": loss(trained_weight, layer.bias.detach().double().cpu()),
        }

    def report(self, module: L.LightningModule) -> dict:
        return self.results
