"""``train(cfg)``: build everything from a composed Hydra config, fit, test, and leave in the run
folder what a person wants to see: results.json, metrics.csv, checkpoints and figures.

``train.py`` is the command-line entry (``@hydra.main``); tests and benchmarks call ``train``.
Every part is a config with a ``_target_`` (``conf/``): the data, the LightningModule with its net,
loss, optimizer and scheduler, the callbacks, loggers and trainer; an option a part gains is a
key in its config, not a line here.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from manualbp.errors import ConfigError
from manualbp.training import figures
from manualbp.training.callbacks import last_checkpoint_path
from manualbp.training.config import build, check_config
from manualbp.training.data.base import LectureDataModule
from manualbp.training.module import LitNet

log = logging.getLogger(__name__)


def check_net_fits_data(net: torch.nn.Module, datamodule: LectureDataModule) -> None:
    """The net's first Linear layer takes the data's features (unless a convolution comes first),
    its last gives the data's outputs."""
    linears = [module for module in net.modules() if isinstance(module, torch.nn.Linear)]
    if not linears:
        return
    first_weighted = next(module for module in net.modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)))
    if first_weighted is linears[0] and linears[0].in_features != datamodule.input_size:
        raise ConfigError(
            f"the net's first layer takes {linears[0].in_features} inputs but the data has "
            f"{datamodule.input_size} features; set model.net.sizes[0]={datamodule.input_size}"
        )
    if linears[-1].out_features != datamodule.output_size:
        raise ConfigError(
            f"the net's last layer has {linears[-1].out_features} outputs but the data needs "
            f"{datamodule.output_size}; set the last of model.net.sizes to {datamodule.output_size}"
        )


def check_engine_fits_trainer(module: LitNet, trainer: L.Trainer) -> None:
    if module.engine == "manual" and trainer.world_size > 1:
        raise ConfigError(
            f"engine=manual computes gradients without autograd, so DDP cannot average them "
            f"across the {trainer.world_size} processes; use engine=autograd with several devices"
        )


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] = ()) -> dict:
    """Fit the configured net, test the best checkpoint, write results.json and figures.

    ``extra_callbacks`` join the configured ones (for benchmarks and tests). Returns the results
    (also written to ``<paths.output_dir>/results.json``).
    """
    check_config(cfg)
    # Batches are gathered from tensors in memory: no worker processes needed. The run folder
    # already holds Hydra's files when the logger and checkpoints arrive.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # small data
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.paths.output_dir)

    datamodule: LectureDataModule = build(cfg.data)
    module: LitNet = build(cfg.model)
    check_net_fits_data(module.net, datamodule)
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values() if c] + list(extra_callbacks)
    loggers = [build(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer: L.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    check_engine_fits_trainer(module, trainer)

    log.info("fitting %s on %s for %s epochs", module.name, type(datamodule).__name__, trainer.max_epochs)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_time_s = time.perf_counter() - started
    checkpoint = trainer.checkpoint_callback
    best = (checkpoint.best_model_path if checkpoint else "") or None
    last = last_checkpoint_path(trainer)  # read now: testing a checkpoint restores callback state
    tested = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    validated = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]

    results = {
        "model": module.name,
        "engine": module.engine,
        "loss": type(module.loss).__name__,
        "data": datamodule.description,
        "seed": cfg.seed,
        "test/acc": tested.get("test/acc"),
        "test/loss": tested["test/loss"],
        "val/acc": validated.get("val/acc"),
        "val/loss": validated["val/loss"],
        "fit_time_s": fit_time_s,
        "train_time_s": module.train_time_s,
        "train/samples_per_s": (
            module.trained_samples * trainer.world_size / module.train_time_s if module.train_time_s else None
        ),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "best_checkpoint": best,
        "last_checkpoint": last,
        "audit/max_rel_err": None,  # GradientAudit's report fills it in when the audit is on
    }
    results.update(datamodule.report(module))
    for callback in callbacks:  # callbacks that have findings report them (see callbacks.py)
        if hasattr(callback, "report"):
            results.update(callback.report(module))
    if trainer.is_global_zero:
        drawn = save_figures(module, datamodule, loggers, output_dir) if cfg.get("figures", True) else []
        results["figures"] = [str(path) for path in drawn]
        (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        summary = {key: results[key] for key in ("test/acc", "test/loss", "train/samples_per_s")}
        summary = {key: value for key, value in summary.items() if value is not None}
        log.info("  ".join(f"{key} {value:.4g}" for key, value in summary.items()))
        log.info("results: %s", output_dir / "results.json")
        log.info("figures: %s", ", ".join(results["figures"]) or "none")
    return results


@torch.no_grad()
def save_figures(module: LitNet, datamodule: LectureDataModule, loggers, output_dir: Path) -> list[Path]:
    """The learning curves from the CSV log, then the data's own pictures of the trained net."""
    figure_dir = output_dir / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    csv_logger = next((lg for lg in loggers if isinstance(lg, CSVLogger)), None)
    if csv_logger is not None and Path(csv_logger.experiment.metrics_file_path).is_file():
        metrics = figures.read_metrics_csv(Path(csv_logger.experiment.metrics_file_path))
        saved += figures.plot_learning_curves(metrics, figure_dir)
    net = module.net.eval()
    saved += datamodule.draw_figures(net, figure_dir)
    net.train()
    return saved
