"""One LightningModule for every task: a manualbp net, its manualbp loss, an optimizer, and
torchmetrics accuracy per stage. Lightning runs the loop (the lecture's "Iterate: load data,
forward pass, compute loss, backward pass, adjust parameters, diagnostics")."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import Accuracy

TASKS = ("multiclass", "binary")


class LitNet(L.LightningModule):
    """Trains ``net`` on ``loss`` with ``optimizer`` (a partial taking the parameters).

    net: inputs (N, D) -> outputs (N, C) logits for ``task="multiclass"`` (targets (N,) class
    indices), or (N, 1) probabilities for ``task="binary"`` (targets (N, 1) in {0, 1}).
    ``scheduler``: an optional partial taking the optimizer; if it has a ``total_steps``
    argument (OneCycleLR), the run's total number of steps is filled in. It steps every batch.
    Logs ``train/loss``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        loss: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        task: str = "multiclass",
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.task = task
        accuracy = {"task": "binary"} if task == "binary" else {
            "task": "multiclass", "num_classes": num_classes, "average": "micro"
        }
        self.val_acc, self.test_acc = Accuracy(**accuracy), Accuracy(**accuracy)
        self.trained_samples = 0  # over this process's fit, for train/samples_per_s

    def forward(self, inputs: Tensor) -> Tensor:
        return self.net(inputs)

    def on_fit_start(self) -> None:
        self.trained_samples = 0

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        loss = self.loss(self.net(inputs), targets)  # forward pass, then the loss
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(inputs))
        self.trained_samples += len(inputs)
        return loss  # Lightning calls backward (manualbp's formulas) and the optimizer step

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: Accuracy) -> None:
        inputs, targets = batch
        outputs = self.net(inputs)
        loss = self.loss(outputs, targets)
        accuracy.update(outputs, targets.long())
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(inputs))
        self.log(f"{stage}/acc", accuracy, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        arguments = {}
        bound = getattr(self.scheduler_factory, "keywords", {})
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters and "total_steps" not in bound:
            arguments["total_steps"] = self.trainer.estimated_stepping_batches
        scheduler = self.scheduler_factory(optimizer=optimizer, **arguments)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
