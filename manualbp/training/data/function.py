"""Samples of a 1-D function, for a net as a universal function approximator."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from manualbp.errors import ConfigError
from manualbp.training import figures
from manualbp.training.data.base import LectureDataModule
from manualbp.training.data.batches import index_loader

TARGET_FUNCTIONS = {
    "sin": torch.sin,
    "abs": torch.abs,
    "step": lambda x: (x > 0).to(x.dtype),
    "gauss": lambda x: torch.exp(-(x**2)),
    "cubic": lambda x: x**3 / 10 - x,
}


class FunctionDataModule(LectureDataModule):
    """Samples of y = f(x) on [low, high] for fitting a net to a 1-D function.

    Training: ``num_points`` evenly spaced points (N, 1) as one full batch, ``steps_per_epoch``
    steps an epoch; validation and test: 4× as many points in between, to measure the fit
    between the training points too. ``function``: one of TARGET_FUNCTIONS.
    """

    def __init__(
        self,
        function: str = "sin",
        low: float = -3.0,
        high: float = 3.0,
        num_points: int = 200,
        steps_per_epoch: int = 500,
    ) -> None:
        super().__init__()
        if function not in TARGET_FUNCTIONS:
            raise ConfigError(
                f"data.function={function!r} is not known; choose one of {sorted(TARGET_FUNCTIONS)}"
            )
        if not high > low or num_points < 2 or steps_per_epoch < 1:
            raise ConfigError(
                f"need data.low < data.high, data.num_points >= 2 and data.steps_per_epoch >= 1, "
                f"got {low}, {high}, {num_points}, {steps_per_epoch}"
            )
        self.name, self.function = function, TARGET_FUNCTIONS[function]
        self.low, self.high, self.steps_per_epoch = low, high, steps_per_epoch
        self.input_size, self.output_size = 1, 1
        self.task, self.num_classes = "regression", None
        self.train_points = self.sample(num_points)
        self.eval_points = self.sample(4 * num_points + 1)

    def sample(self, count: int) -> tuple[Tensor, Tensor]:
        inputs = torch.linspace(self.low, self.high, count).unsqueeze(1)
        return inputs, self.function(inputs)

    def train_dataloader(self) -> DataLoader:
        count = len(self.train_points[0])
        return index_loader(self.train_points, count, shuffle=False, repeats=self.steps_per_epoch, training=True)

    def val_dataloader(self) -> DataLoader:
        return index_loader(self.eval_points, len(self.eval_points[0]), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    @torch.no_grad()
    def report(self, module: L.LightningModule) -> dict:
        """How far the fit is from f on the evaluation grid: max |net(x) − f(x)| and the RMSE."""
        inputs, targets = self.eval_points
        errors = module.net(inputs.to(module.device)).cpu() - targets
        return {
            "approx/function": self.name,
            "approx/max_abs_err": errors.abs().max().item(),
            "approx/rmse": errors.pow(2).mean().sqrt().item(),
        }


    def draw_figures(self, net: torch.nn.Module, figure_dir: Path) -> list[Path]:
        inputs, targets = self.eval_points
        fitted = net(inputs.to(next(net.parameters()))).cpu()
        return [figures.plot_function_fit(inputs, targets, fitted, self.train_points, figure_dir / "fit.png")]
