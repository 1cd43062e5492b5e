"""The slide's four XOR points (Learn_XOR)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from manualbp.errors import ConfigError
from manualbp.training import figures
from manualbp.training.data.base import LectureDataModule
from manualbp.training.data.batches import index_loader


class XORDataModule(LectureDataModule):
    """The slide's four XOR points, X: (4, 2) and Y: (4, 1), as one full batch.

    An "epoch" is ``steps_per_epoch`` gradient steps on that batch (four points make a poor
    epoch: Lightning's per-epoch work would dominate). Validation and test use the same points.
    """

    # The table on the slide: X = (x1, x2), Y = x1 XOR x2.
    inputs = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([[1.0], [0.0], [1.0], [0.0]])

    def __init__(self, steps_per_epoch: int = 100) -> None:
        super().__init__()
        if steps_per_epoch < 1:
            raise ConfigError(f"data.steps_per_epoch must be at least 1, got {steps_per_epoch}")
        self.steps_per_epoch = steps_per_epoch
        self.input_size, self.output_size = 2, 1  # one output: the probability of y = 1
        self.task, self.num_classes = "binary", 2

    def train_dataloader(self) -> DataLoader:
        return index_loader((self.inputs, self.targets), 4, shuffle=False, repeats=self.steps_per_epoch, training=True)

    def val_dataloader(self) -> DataLoader:
        return index_loader((self.inputs, self.targets), 4, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def draw_figures(self, net: torch.nn.Module, figure_dir: Path) -> list[Path]:
        return [figures.plot_decision_boundary(net, self.inputs, self.targets, figure_dir / "decision_boundary.png")]
