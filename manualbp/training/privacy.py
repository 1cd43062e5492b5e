"""Private training (DP-SGD) in the trainer: ``python train.py model=mnist_dp`` or ``dp=on`` on a model config.

Each step, as Abadi et al.'s DP-SGD and Opacus do it:

1. the batch is drawn by Poisson sampling: every training example is in it with probability q
   (``expected_batch_size`` / the training set's size), independently of the others;
2. each example's gradient gₖ is clipped to norm ≤ C: gₖ·min(1, C/‖gₖ‖) -- manualbp's ghost norms
   (``manualbp.clipped_gradients``: two backward passes, no per-example gradient materialised);
3. Gaussian noise N(0, σ²C²) is added to their sum, which is divided by the expected batch size;
4. the optimizer steps, and the privacy accountant (Opacus' RDP or PRV accountant, not written
   here) adds the step to the privacy spent: ε at the configured δ.

ε is shown in the progress bar, logged per epoch (``dp/epsilon``) and written to results.json
beside ``dp/delta``. With ``target_epsilon`` the noise multiplier σ is chosen for the planned
epochs, and a run that would go past it (more epochs on resume) stops, saying so. A resumed run
keeps the accountant's history: it reports the ε of an uninterrupted run.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

import manualbp
from manualbp.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["DifferentialPrivacy", "PoissonBatchSampler"]


class PoissonBatchSampler(Sampler[Tensor]):
    """Batches of indices by Poisson sampling: each of ``size`` examples is in a batch with
    probability ``sample_rate``, independently; round(1/sample_rate) batches an epoch (one pass over the
    data in expectation). Epoch e draws from ``torch.Generator().manual_seed(seed + e)``, so a run
    resumed at epoch e draws the batches it would have drawn (Lightning calls ``set_epoch``)."""

    def __init__(self, size: int, sample_rate: float, seed: int = 0) -> None:
        if not 0 < sample_rate <= 1:
            raise ConfigError(f"dp: expected a sampling rate in (0, 1], got {sample_rate} (the expected batch size "
                              f"over the {size} training examples); choose a smaller dp.expected_batch_size")
        self.size, self.sample_rate, self.seed, self.epoch = size, sample_rate, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, round(1 / self.sample_rate))

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        for _ in range(len(self)):
            yield (torch.rand(self.size, generator=generator) < self.sample_rate).nonzero().flatten()


class DifferentialPrivacy(L.Callback):
    """DP-SGD for a ``LitNet`` (see :mod:`manualbp.training.privacy`); built from ``conf/dp/on.yaml``.

    noise_multiplier σ (or None with ``target_epsilon``), max_grad_norm C, delta δ,
    target_epsilon (None: no target), expected_batch_size (None: the data's batch_size),
    accountant: "rdp" or "prv" (Opacus' accountants), seed: of the batches and the noise."""

    def __init__(self, noise_multiplier: float | None = 1.1, max_grad_norm: float = 1.0, delta: float = 1e-5,
                 target_epsilon: float | None = None, expected_batch_size: int | None = None,
                 accountant: str = "rdp", seed: int = 0) -> None:
        try:
            from opacus.accountants import create_accountant
        except ImportError:
            raise ConfigError("dp=on needs Opacus' privacy accountant: pip install -e '.[dp]'") from None
        if noise_multiplier is None and target_epsilon is None:
            raise ConfigError("dp: give dp.noise_multiplier, or dp.target_epsilon to choose it")
        if max_grad_norm <= 0 or not 0 < delta < 1:
            raise ConfigError(f"dp: expected max_grad_norm > 0 and 0 < delta < 1, got {max_grad_norm} and {delta}")
        self.noise_multiplier, self.max_grad_norm, self.delta = noise_multiplier, max_grad_norm, delta
        self.target_epsilon, self.expected_batch_size, self.seed = target_epsilon, expected_batch_size, seed
        self.accountant_name = accountant
        self.accountant = create_accountant(accountant)
        self.noise = torch.Generator().manual_seed(seed + 1)
        self.sample_rate: float | None = None
        self.stopped_for_budget = False

    # -- wiring ---------------------------------------------------------------------------------
    def attach(self, module, datamodule) -> None:
        """Make ``module`` train privately on ``datamodule``: manual optimization through
        :meth:`training_step`, and Poisson-sampled training batches."""
        if module.engine != "autograd":
            raise ConfigError("dp=on runs with engine=autograd (its clipping is manualbp.per_example's); "
                              "drop engine=manual")
        if datamodule.task not in ("multiclass", "next_token"):
            raise ConfigError(f"dp=on trains classifiers and language models (per-example cross-entropy), got "
                              f"a {datamodule.task} task")
        module.automatic_optimization = False
        module.privacy = self
        self.expected_batch_size = self.expected_batch_size or datamodule.batch_size
        batches = datamodule.train_dataloader

        def poisson_batches() -> DataLoader:
            loader = batches()
            size = len(loader.dataset)
            self.sample_rate = self.expected_batch_size / size
            return DataLoader(loader.dataset, sampler=PoissonBatchSampler(size, self.sample_rate, self.seed),
                              batch_size=None)

        datamodule.train_dataloader = poisson_batches

    def on_train_start(self, trainer, pl_module) -> None:
        if self.noise_multiplier is None:
            from opacus.accountants.utils import get_noise_multiplier

            self.noise_multiplier = get_noise_multiplier(
                target_epsilon=self.target_epsilon, target_delta=self.delta, sample_rate=self.sample_rate,
                epochs=trainer.max_epochs, accountant=self.accountant_name)
            log.info("dp: noise multiplier %.4f for ε = %s at δ = %g over %d epochs", self.noise_multiplier,
                     self.target_epsilon, self.delta, trainer.max_epochs)

    # -- the step ---------------------------------------------------------------------------------
    def training_step(self, module, inputs: Tensor, targets: Tensor) -> Tensor | None:
        """One DP-SGD step of ``module`` on a Poisson batch; returns the batch's mean loss (None if
        the privacy budget is spent: the run stops)."""
        if self._would_exceed_target():
            self.stopped_for_budget = True
            module.trainer.should_stop = True
            log.warning("dp: the privacy budget ε = %s at δ = %g is spent (ε = %.3f now): training stops here",
                        self.target_epsilon, self.delta, self.epsilon())
            return None
        optimizer = module.optimizers()
        optimizer.zero_grad(set_to_none=False)
        parameters = [p for p in module.net.parameters() if p.requires_grad]
        if len(inputs):
            losses = per_example_losses(module.net(inputs), targets)
            manualbp.clipped_gradients(module.net, losses, self.max_grad_norm)  # Σₖ clipped gₖ in p.grad
            loss = losses.detach().mean()
        else:  # an empty Poisson batch: noise alone
            loss = torch.zeros((), device=inputs.device)
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            noise = torch.randn(parameter.shape, generator=self.noise).to(parameter)
            parameter.grad.add_(noise, alpha=self.noise_multiplier * self.max_grad_norm)  # + N(0, σ²C²)
            parameter.grad.div_(self.expected_batch_size)  # / the expected batch size
        optimizer.step()
        if module.scheduler_factory is not None:
            module.lr_schedulers().step()
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        if module.trainer.global_step % 50 == 0:
            module.log("dp/epsilon", self.epsilon(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _would_exceed_target(self) -> bool:
        if self.target_epsilon is None or not self.accountant.history:
            return False
        trial = type(self.accountant)()
        trial.load_state_dict(self.accountant.state_dict())
        trial.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return trial.get_epsilon(self.delta) > self.target_epsilon * 1.001

    def epsilon(self) -> float:
        """ε spent so far at δ (0 before the first step)."""
        return self.accountant.get_epsilon(self.delta) if self.accountant.history else 0.0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pl_module.log("dp/epsilon", self.epsilon(), on_epoch=True, prog_bar=True)

    # -- resume and results -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"accountant": self.accountant.state_dict(), "noise": self.noise.get_state(),
                "noise_multiplier": self.noise_multiplier}

    def load_state_dict(self, state_dict: dict) -> None:
        """A resumed run takes the checkpoint's accountant, noise and σ. Privacy once spent stays spent:
        testing an earlier (best) checkpoint after training does not take ε back to that checkpoint's."""
        if self.accountant.history:
            return
        self.accountant.load_state_dict(state_dict["accountant"])
        self.noise.set_state(state_dict["noise"])
        self.noise_multiplier = state_dict["noise_multiplier"]

    def report(self, module) -> dict:
        """results.json's privacy entries."""
        return {"dp/epsilon": self.epsilon(), "dp/delta": self.delta, "dp/noise_multiplier": self.noise_multiplier,
                "dp/max_grad_norm": self.max_grad_norm, "dp/sample_rate": self.sample_rate,
                "dp/accountant": self.accountant_name, "dp/stopped_for_budget": self.stopped_for_budget}


def per_example_losses(outputs: Tensor, targets: Tensor) -> Tensor:
    """Each example's cross-entropy, (N,): logits (N, C) and labels (N,), or a sequence's logits
    (N, T, V) and tokens (N, T) (its mean over the positions: one sequence, one example)."""
    if outputs.dim() == 3:
        rows = manualbp.functional.cross_entropy(outputs.flatten(0, 1), targets.flatten(), reduction="none")
        return rows.reshape(targets.shape).mean(1)
    if targets.dim() == 2:  # one-hot rows
        targets = targets.argmax(1)
    return manualbp.functional.cross_entropy(outputs, targets, reduction="none")

