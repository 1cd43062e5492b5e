"""One LightningModule for every task: a manualbp net, its manualbp loss, an optimizer, and
torchmetrics accuracy per stage. Lightning runs the loop (the lecture's "Iterate: load data,
forward pass, compute loss, backward pass, adjust parameters, diagnostics").

``conf/model/*.yaml`` build it (``_target_: manualbp.training.module.LitNet``) with its nested
net, loss, optimizer and scheduler; its task and number of classes come from the data."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import Accuracy

from manualbp.coverage import backward_coverage
from manualbp.errors import ConfigError
from manualbp.manual import backprop
from manualbp.nn import LOSSES, forward_and_loss, positions_as_rows
from manualbp.training.data.base import LectureDataModule

log = logging.getLogger(__name__)

ENGINES = ("autograd", "manual")


def class_indices(targets: Tensor) -> Tensor:
    """Class labels: (N,) from one-hot / probability rows (N, C > 1); other targets as integers
    ((N,) labels, or (N, 1) binary targets)."""
    one_hot = targets.is_floating_point() and targets.dim() == 2 and targets.shape[1] > 1
    return targets.argmax(dim=1) if one_hot else targets.long()


def resolve_loss(loss: torch.nn.Module | str) -> torch.nn.Module:
    """A loss module as it is, or a new one from its name in ``manualbp.nn.LOSSES``
    (``python train.py model.loss=softmax_euclidean``)."""
    if not isinstance(loss, str):
        return loss
    if loss not in LOSSES:
        raise ConfigError(f"model.loss={loss} is not known; choose one of {', '.join(LOSSES)}")
    return LOSSES[loss]()


class LitNet(L.LightningModule):
    """Trains ``net`` on ``loss`` with ``optimizer`` (a partial taking the parameters).

    net: inputs (N, D) -> outputs: (N, C) logits for a ``multiclass`` task (targets (N,) class
    indices or (N, C) one-hot rows), (N, 1) probabilities for ``binary`` (targets (N, 1) in
    {0, 1}), or any values for ``regression`` (no accuracy). The task and the number of classes
    are the data's (``LectureDataModule.task``, ``num_classes``), read in ``setup``. ``loss``: a
    module, or its name in ``manualbp.nn.LOSSES``.

    ``engine="autograd"``: Lightning calls ``loss.backward()``, and autograd runs manualbp's
    hand-written backward. ``engine="manual"``: the explicit backprop loop of
    :mod:`manualbp.manual` computes every δθ with no autograd engine, then the optimizer steps
    (Lightning's manual optimization). ``ridge`` (γ ≥ 0) adds γW to the gradient of every weight
    matrix -- the ridge term of ½‖XW + b − Y‖² + γ/2‖W‖² -- as the optimizer's weight decay,
    biases excluded. ``scheduler``: an optional partial taking the optimizer; a ``total_steps``
    argument (OneCycleLR) is filled in; it steps every batch. ``name``: the model's name, for
    results.json. ``settings``: further keys of the model's config that its parts refer to
    (``width`` in conf/model/approx.yaml: ``python train.py model=approx model.width=32``);
    kept as ``self.settings``, not used.

    Logs ``train/loss`` (epoch mean), ``train/loss_step``, ``val/loss``, ``test/loss`` and, for
    classification, ``val/acc`` and ``test/acc``.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        loss: torch.nn.Module | str,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        engine: str = "autograd",
        ridge: float = 0.0,
        name: str = "net",
        **settings,
    ) -> None:
        super().__init__()
        if engine not in ENGINES:
            raise ConfigError(f"engine={engine} is not known; choose one of {', '.join(ENGINES)}")
        self.net, self.loss = net, resolve_loss(loss)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.engine, self.ridge, self.name, self.settings = engine, ridge, name, settings
        self.automatic_optimization = engine == "autograd"
        self.val_acc: Accuracy | None = None  # made in setup, once the task is known
        self.test_acc: Accuracy | None = None
        self.trained_samples = 0  # over this process's fit, for train/samples_per_s
        self._coverage_logged = False
        self.privacy = None  # dp=on: a DifferentialPrivacy callback runs each step (manualbp.training.privacy)
        self.train_time_s = 0.0  # stays 0 if the fit has no training left (resumed at the end)

    def setup(self, stage: str) -> None:
        """Accuracy per stage for the data's task (none for regression)."""
        data = self.trainer.datamodule
        if not isinstance(data, LectureDataModule):
            raise ConfigError(
                "LitNet takes its task from a LectureDataModule (manualbp.training.data); pass "
                "one as trainer.fit(module, datamodule=...)"
            )
        if data.task in ("regression", "next_token") or self.val_acc is not None:
            return
        if data.task == "binary":
            accuracy = {"task": "binary"}
        else:
            accuracy = {"task": "multiclass", "num_classes": data.num_classes, "average": "micro"}
        self.val_acc, self.test_acc = Accuracy(**accuracy), Accuracy(**accuracy)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.net(inputs)

    def gradients(self, inputs: Tensor, targets: Tensor, net: torch.nn.Module | None = None) -> dict[str, Tensor]:
        """δθ of the batch loss for every trainable parameter of ``net`` (default: this module's),
        by the configured engine, without touching ``.grad``."""
        net = self.net if net is None else net
        if self.engine == "manual":
            return backprop(net, self.loss, inputs, targets)[1]
        parameters = {name: p for name, p in net.named_parameters() if p.requires_grad}
        with torch.enable_grad():
            grads = torch.autograd.grad(forward_and_loss(net, self.loss, inputs, targets), list(parameters.values()))
        return dict(zip(parameters, grads, strict=True))

    def on_fit_start(self) -> None:
        self.trained_samples = 0

    def on_train_start(self) -> None:
        self._train_started = time.perf_counter()
        self.on_train_epoch_start()  # a run resumed inside an epoch gets no on_train_epoch_start for it

    def on_train_end(self) -> None:
        """The training loop's wall time (validation and checkpoints included, the setup and
        data loading before it not), for ``train/samples_per_s``."""
        self.train_time_s = time.perf_counter() - self._train_started

    def on_train_epoch_start(self) -> None:
        self._epoch_loss_sum, self._epoch_samples = torch.zeros((), device=self.device), 0

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        if self.privacy is not None:  # DP-SGD: clipped per-example gradients, noise, the accountant
            loss = self.privacy.training_step(self, inputs, targets)
            if loss is None:  # the privacy budget is spent
                return None
        elif self.engine == "manual":
            loss = self._manual_step(inputs, targets)
        else:
            # forward pass, then the loss (one node for a net that computes its loss: MLPClassifier)
            loss = forward_and_loss(self.net, self.loss, inputs, targets)
            if not self._coverage_logged:  # once: which backward formulas this run's steps use
                self._coverage_logged = True
                line = "backward of the training loss: " + str(backward_coverage(loss)).replace("\n", ";")
                log.info(line, extra={"console": False})  # into train.log; the console gets it through the bar:
                self.print(line)  # a live progress bar prints it on a line of its own above itself
        self._log_training_loss(loss, len(inputs))
        self.trained_samples += len(inputs)
        return loss  # autograd engine: Lightning calls backward and the optimizer step

    def _log_training_loss(self, loss: Tensor, batch_size: int) -> None:
        """``train/loss_step`` every ``log_every_n_steps`` steps, ``train/loss`` (the mean
        over the epoch's samples) at the epoch's end. The epoch sum stays on the loss's device,
        and ``self.log`` -- about a millisecond per call on a small CPU -- runs only on the steps
        whose metrics Lightning writes, not every step."""
        self._epoch_loss_sum += loss.detach() * batch_size
        self._epoch_samples += batch_size
        # Lightning has no public "are this step's metrics written?": ask its logger connector,
        # so that the step logs exactly when Lightning writes (every log_every_n_steps).
        if getattr(self.trainer._logger_connector, "should_update_logs", True):
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)

    def on_train_epoch_end(self) -> None:
        if self._epoch_samples:
            mean = self._epoch_loss_sum / self._epoch_samples
            self.log("train/loss", mean, on_epoch=True, sync_dist=True)

    def _manual_step(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Forward and backward pass by hand, then the update with the computed δθ."""
        loss, grads = backprop(self.net, self.loss, inputs, targets)
        for name, parameter in self.net.named_parameters():
            parameter.grad = grads.get(name)
        optimizer = self.optimizers()
        optimizer.step()  # the configured optimizer with δθ; torch.optim.SGD: θ ← θ − lr·δθ
        optimizer.zero_grad(set_to_none=True)
        if self.scheduler_factory is not None:
            self.lr_schedulers().step()
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: Accuracy | None) -> None:
        inputs, targets = batch
        outputs, targets = positions_as_rows(self.net(inputs), targets)  # a sequence's logits: B·T rows
        loss = self.loss(outputs, targets)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(inputs))
        if accuracy is not None:
            accuracy.update(outputs, class_indices(targets))
            self.log(f"{stage}/acc", accuracy, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def configure_optimizers(self):
        if self.ridge:  # weight decay on weight matrices only: δW += γW, δb unchanged
            parameters = [
                {"params": [p for p in self.parameters() if p.dim() >= 2], "weight_decay": self.ridge},
                {"params": [p for p in self.parameters() if p.dim() < 2], "weight_decay": 0.0},
            ]
        else:
            parameters = self.parameters()
        optimizer = self.optimizer_factory(params=parameters)
        if self.scheduler_factory is None:
            return optimizer
        arguments = {}
        bound = getattr(self.scheduler_factory, "keywords", {})
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters and "total_steps" not in bound:
            arguments["total_steps"] = self.trainer.estimated_stepping_batches
        scheduler = self.scheduler_factory(optimizer=optimizer, **arguments)
        self._check_schedule_fits_checkpoint(scheduler)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Remember the resumed schedule's length (called before ``configure_optimizers``)."""
        schedulers = checkpoint.get("lr_schedulers") or [{}]
        self._resumed_total_steps = schedulers[0].get("total_steps")
        self._resumed_epoch, self._resumed_step = checkpoint.get("epoch"), checkpoint.get("global_step")

    def _check_schedule_fits_checkpoint(self, scheduler) -> None:
        """A fixed-length schedule (OneCycleLR) cannot be stretched once it has run: resuming
        with another number of epochs -- extending a finished run -- is refused in one line."""
        resumed = getattr(self, "_resumed_total_steps", None)
        total = getattr(scheduler, "total_steps", None)
        if resumed is None or total is None or resumed == total:
            return
        epochs = self.trainer.max_epochs
        own = f"trainer.max_epochs={resumed * epochs // total}" if resumed * epochs % total == 0 else "its epochs"
        raise ConfigError(
            f"the checkpoint (epoch {self._resumed_epoch}, step {self._resumed_step}) follows a "
            f"{type(scheduler).__name__} schedule of {resumed} steps, and trainer.max_epochs={epochs} needs one "
            f"of {total}: a one-cycle schedule cannot be stretched once it has run. Resume the run with {own}, "
            f"or train a new run for {epochs} epochs (without ckpt_path)"
        )
