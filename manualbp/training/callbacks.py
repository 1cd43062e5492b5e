"""Lightning callbacks: the live gradient audit, the NaN stop, progress for logs, and the ridge
regression's closed form.

A callback with a ``report(module) -> dict`` method adds those entries to results.json."""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar, TQDMProgressBar
from torch.func import functional_call

from manualbp.errors import GradientMismatchError, NonFiniteLossError
from manualbp.nn import positions_as_rows
from manualbp.reference import to_torch
from manualbp.regression import ridge_solution
from manualbp.training.module import class_indices


def max_relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours − theirs| / max |theirs|: 0 for identical tensors, ~1e-7 for float32 rounding."""
    scale = theirs.abs().max().clamp_min(torch.finfo(theirs.dtype).tiny)
    return ((ours - theirs).abs().max() / scale).item()


class GradientAudit(Callback):
    """Shows, live, that the hand-written backward is right.

    Every ``every_n_steps`` training steps (the first included), before the step, it takes the
    current weights and batch in float64 and computes the gradient of the batch loss twice: the
    way the run computes it (manualbp's hand-written backward, through autograd or the explicit
    manual loop) and through the net's torch built-in twin (``reference.to_torch``, PyTorch's
    own autograd). It logs the largest relative difference over all parameters as
    ``audit/max_rel_err`` and stops the run with GradientMismatchError above ``tolerance``.

    Float64 keeps the comparison about the formulas: in float32 two correct summation orders
    already differ by ~1e-7 of the summands, and near a minimum, where the gradient is a small
    difference of large terms, that is a large fraction of the gradient itself. The audit uses
    the first ``max_samples`` examples of the batch (plenty to exercise every formula) and costs
    two float64 forward/backward passes on them every ``every_n_steps`` steps; the run's
    ``.grad`` and weights are not touched.
    """

    def __init__(self, every_n_steps: int = 100, tolerance: float = 1e-6, max_samples: int = 128) -> None:
        if every_n_steps < 1 or not tolerance > 0 or max_samples < 1:
            raise ValueError(
                f"GradientAudit needs every_n_steps >= 1, tolerance > 0 and max_samples >= 1, got "
                f"{every_n_steps}, {tolerance} and {max_samples}"
            )
        self.every_n_steps, self.tolerance, self.max_samples = every_n_steps, tolerance, max_samples
        self.history: list[tuple[int, float]] = []  # (step, max relative difference)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.torch_net = to_torch(pl_module.net).double()
        self.torch_loss = to_torch(pl_module.loss)

    def compare(self, pl_module, inputs, targets) -> dict[str, float]:
        """Max relative difference per parameter between the run's gradient and PyTorch's, in
        float64 on copies of the current weights."""
        net = copy.deepcopy(pl_module.net).double()
        inputs = inputs.double() if inputs.is_floating_point() else inputs  # token indices stay indices
        targets = targets.double() if targets.is_floating_point() else targets
        ours = pl_module.gradients(inputs, targets, net)
        parameters = {name: p for name, p in net.named_parameters() if p.requires_grad}
        with torch.enable_grad():
            outputs = functional_call(self.torch_net, parameters, (inputs,))
            theirs = torch.autograd.grad(self.torch_loss(*positions_as_rows(outputs, targets)),
                                         list(parameters.values()))
        return {name: max_relative_difference(ours[name], grad) for name, grad in zip(parameters, theirs, strict=True)}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps:
            return
        inputs, targets = batch
        differences = self.compare(pl_module, inputs[: self.max_samples], targets[: self.max_samples])
        worst = max(differences, key=differences.get)
        self.history.append((step, differences[worst]))
        pl_module.log("audit/max_rel_err", differences[worst], on_step=True, on_epoch=False)
        if differences[worst] > self.tolerance:
            raise GradientMismatchError(
                f"at step {step}, manualbp's gradient of {worst} differs from PyTorch's built-in "
                f"autograd by {differences[worst]:.2e} (max relative difference in float64; "
                f"tolerance {self.tolerance:.0e}). The hand-written backward disagrees with "
                f"PyTorch on this batch: the run is stopped. All parameters: "
                + ", ".join(f"{name} {value:.1e}" for name, value in differences.items())
            )

    def report(self, module: L.LightningModule) -> dict:
        return {"audit/max_rel_err": max((err for _, err in self.history), default=None)}


def last_checkpoint_path(trainer: L.Trainer) -> str | None:
    """The newest checkpoint written during fit (conf: callbacks.last_checkpoint, and
    callbacks.step_checkpoint's every N steps and on Ctrl+C), if any."""
    paths = [callback.last_model_path for callback in trainer.callbacks
             if isinstance(callback, CheckpointEveryNStepsAndOnInterrupt) and callback.last_model_path]
    for callback in trainer.checkpoint_callbacks:
        path = callback.last_model_path or (callback.best_model_path if callback.monitor is None else "")
        if path:
            paths.append(path)
    existing = [path for path in paths if os.path.exists(path)]
    return max(existing, key=os.path.getmtime) if existing else (paths[0] if paths else None)


class StopOnNonFiniteLoss(Callback):
    """Stops the run with NonFiniteLossError when the training loss or the weights become NaN or
    infinite.

    The loss check accumulates on the loss's device and is read every ``check_every_n_steps``
    steps and before each validation and epoch end, together with a check of the weights (a
    step can turn them non-finite after its loss was computed) -- so no host sync per step, and
    no checkpoint is written from non-finite weights: the last good one is kept. Under DDP every
    process takes the same decision.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._all_finite: torch.Tensor | None = None
        self._since_step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs  # automatic / manual optimization
        if loss is None:  # a step that trained nothing (dp=on, its privacy budget spent)
            return
        finite = torch.isfinite(loss.detach())
        self._all_finite = finite if self._all_finite is None else self._all_finite & finite
        if trainer.global_step % self.check_every_n_steps == 0:
            self._check(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        losses_finite, self._all_finite = self._all_finite, None
        weights_finite = all(bool(torch.isfinite(p).all()) for p in pl_module.parameters())
        finite = weights_finite and (losses_finite is None or bool(losses_finite))
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            self._since_step = trainer.global_step
            return
        last = last_checkpoint_path(trainer)
        kept = f"the last good checkpoint is kept: {last}" if last else "no checkpoint was saved yet"
        what = "training loss" if weights_finite else "model's weights"
        raise NonFiniteLossError(
            f"the {what} became NaN or infinite between steps {self._since_step} and "
            f"{trainer.global_step} (epoch {trainer.current_epoch}); the run is stopped and "
            f"{kept}. Lower the learning rate (model.optimizer.lr=...) and start again"
            + (f", or resume with ckpt_path={last}" if last else "")
        )


class LineProgressBar(ProgressBar):
    """Progress as plain lines for logs and pipes: one every ``every_s`` seconds during training,
    one per epoch with the epoch's metrics. (A terminal gets Lightning's Rich or TQDM bar instead.)

    An epoch's line is printed once its own train/loss is known: Lightning logs what
    ``on_train_epoch_end`` computes after the callbacks' hook, so the line comes at the next
    epoch's start, or at the end of training."""

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, flush=True)

    def _metrics(self, trainer: L.Trainer, keys: list[str]) -> str:
        metrics = trainer.callback_metrics
        return "  ".join(f"{key} {float(metrics[key]):.4f}" for key in keys if key in metrics)

    def on_train_start(self, trainer, pl_module) -> None:
        self._start_epoch()  # a run resumed inside an epoch gets no on_train_epoch_start for it

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._print_finished_epoch(trainer)
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._epoch_started = self._last_line = time.perf_counter()
        self._epoch_samples = self._epoch_steps = 0
        self._finished_epoch: tuple[int, float] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._epoch_samples += len(batch[0])
        self._epoch_steps += 1
        now = time.perf_counter()
        if now - self._last_line < self.every_s:
            return
        self._last_line = now
        seconds = now - self._epoch_started
        rate = self._epoch_samples / seconds
        eta = self._steps_left(trainer, batch_idx) * seconds / self._epoch_steps
        self._print(
            f"{self._where(trainer, trainer.current_epoch, batch_idx)}  "
            f"{self._metrics(trainer, ['train/loss_step'])}  {rate:,.0f} samples/s  ETA {duration(eta)}"
        )

    def _steps_left(self, trainer: L.Trainer, batch_idx: int) -> int:
        """Training steps left in the run after this one (the validation's time not counted)."""
        if trainer.max_steps > 0:
            return max(0, trainer.max_steps - trainer.global_step)
        epochs_after_this = (trainer.max_epochs or trainer.current_epoch + 1) - trainer.current_epoch - 1
        return int(self.total_train_batches - batch_idx - 1 + epochs_after_this * self.total_train_batches)

    def _where(self, trainer: L.Trainer, epoch: int, batch_idx: int | None = None) -> str:
        """"epoch 3/12  step 40/54" for a run of epochs; "epoch 3  step 540/2000" (steps of the
        run) for a run of ``max_steps``."""
        if trainer.max_steps > 0:
            return f"epoch {epoch + 1}" + (f"  step {trainer.global_step}/{trainer.max_steps}"
                                           if batch_idx is not None else "")
        step = f"  step {batch_idx + 1}/{self.total_train_batches}" if batch_idx is not None else ""
        return f"epoch {epoch + 1}/{trainer.max_epochs}{step}"

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._finished_epoch = (trainer.current_epoch, time.perf_counter() - self._epoch_started)

    def on_train_end(self, trainer, pl_module) -> None:
        self._print_finished_epoch(trainer)

    def _print_finished_epoch(self, trainer: L.Trainer) -> None:
        if getattr(self, "_finished_epoch", None) is None:
            return
        epoch, seconds = self._finished_epoch
        self._finished_epoch = None
        self._print(
            f"{self._where(trainer, epoch)} done in {seconds:.1f} s  "
            + self._metrics(trainer, ["train/loss", "val/loss", "val/acc"])
        )


def duration(seconds: float) -> str:
    """"45 s", "3 min 05 s", "1 h 02 min": a time left as a person reads it."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class CheckpointEveryNStepsAndOnInterrupt(Callback):
    """Writes ``<dirpath>/last.ckpt`` every ``every_n_steps`` training steps (0: never) and when the
    run is stopped by Ctrl+C or SIGTERM during fit, so that a long run (the GPT's 2,000 steps) can
    be resumed from where it was rather than from its last epoch. The epochs' last.ckpt
    (``callbacks.last_checkpoint``) is the same file: the newest of them is what a resume reads."""

    def __init__(self, dirpath: str, every_n_steps: int = 500) -> None:
        super().__init__()
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be 0 (never) or a positive number of steps, got {every_n_steps}")
        self.path = f"{dirpath}/last.ckpt"
        self.every_n_steps = every_n_steps
        self.last_model_path = ""  # as ModelCheckpoint's: what last_checkpoint_path reads

    def _save(self, trainer: L.Trainer) -> None:
        if not all(torch.isfinite(parameter).all() for parameter in trainer.lightning_module.parameters()):
            return  # NaN weights: the last good checkpoint stays (StopOnNonFiniteLoss stops the run)
        trainer.save_checkpoint(self.path)
        self.last_model_path = self.path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.state.fn == "fit" and trainer.global_step > 0:
            self._save(trainer)


def rich_installed() -> bool:
    return importlib.util.find_spec("rich") is not None


def progress_bar(every_s: float = 10.0) -> ProgressBar:
    """In a terminal, Lightning's RichProgressBar (TQDMProgressBar without ``rich``); when output
    goes to a file or a pipe, ``LineProgressBar``."""
    if sys.stdout.isatty() and sys.stderr.isatty():
        return RichProgressBar() if rich_installed() else TQDMProgressBar()
    return LineProgressBar(every_s)


class RidgeClosedForm(Callback):
    """At the end of training, solves the normal equations on the training split
    (``manualbp.regression.ridge_solution``) and reports (results.json) the closed-form
    solution's test accuracy and how close gradient descent got: ‖W_gd − W*‖ / ‖W*‖ and the
    training loss of both. For ``python train.py model=mnist_linreg``."""

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
