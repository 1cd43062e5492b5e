"""``train(cfg)``: build everything from a composed Hydra config, fit, test, and leave in the run
folder what a person wants to see: results.json, metrics.csv, checkpoints and figures.

``train.py`` is the command-line entry (``@hydra.main``); tests call ``train`` directly.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from manualbp import figures
from manualbp.callbacks import GradientAudit, last_checkpoint_path
from manualbp.data import FunctionDataModule, MNISTDataModule, XORDataModule
from manualbp.errors import ConfigError, ManualbpError
from manualbp.module import ENGINES, LitNet, class_indices
from manualbp.nn import LOSSES

log = logging.getLogger(__name__)


def build(config, **kwargs):
    """``hydra.utils.instantiate``, re-raising manualbp's own errors as they are (Hydra wraps
    exceptions raised by a ``_target_`` in InstantiationException)."""
    try:
        return hydra.utils.instantiate(config, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ManualbpError):
            raise error.__cause__ from None
        raise


def build_loss(config):
    """The loss from a name (``model.loss=softmax_euclidean``) or a ``_target_`` config."""
    if isinstance(config, str):
        if config not in LOSSES:
            raise ConfigError(f"model.loss={config} is not known; choose one of {', '.join(LOSSES)}")
        return LOSSES[config]()
    return build(config)


def check_config(cfg: DictConfig) -> None:
    """Fail fast, before loading anything, on values that cannot work."""
    lr = OmegaConf.select(cfg, "model.optimizer.lr")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"model.optimizer.lr must be a positive number, got {lr!r}")
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if max_epochs is not None and max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs must be at least 1, got {max_epochs}")
    engine = cfg.get("engine", "autograd")
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine} is not known; choose one of {', '.join(ENGINES)}")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path} is not a file; to resume, give a checkpoint such as "
            f"outputs/<model>/runs/<time>/checkpoints/last.ckpt"
        )


def check_net_fits_data(net: torch.nn.Module, datamodule: L.LightningDataModule) -> None:
    linears = [module for module in net.modules() if isinstance(module, torch.nn.Linear)]
    if not linears:
        return
    expected_out = datamodule.num_classes if datamodule.num_classes > 2 else None  # not XOR / regression
    if linears[0].in_features != datamodule.input_size:
        raise ConfigError(
            f"the net's first layer takes {linears[0].in_features} inputs but the data has "
            f"{datamodule.input_size} features; set model.net.sizes[0]={datamodule.input_size}"
        )
    if expected_out is not None and linears[-1].out_features != expected_out:
        raise ConfigError(
            f"the net's last layer has {linears[-1].out_features} outputs but the data has "
            f"{expected_out} classes; set the last of model.net.sizes to {expected_out}"
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

    datamodule = build(cfg.data)
    net, loss = build(cfg.model.net), build_loss(cfg.model.loss)
    check_net_fits_data(net, datamodule)
    module = LitNet(
        net,
        loss,
        optimizer=build(cfg.model.optimizer),
        scheduler=build(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
        task=cfg.model.task,
        num_classes=datamodule.num_classes,
        engine=cfg.get("engine", "autograd"),
        ridge=cfg.model.get("ridge", 0.0),
    )
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values() if c] + list(extra_callbacks)
    loggers = [build(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer: L.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if module.engine == "manual" and trainer.world_size > 1:
        raise ConfigError(
            f"engine=manual computes gradients without autograd, so DDP cannot average them "
            f"across the {trainer.world_size} processes; use engine=autograd with several devices"
        )

    log.info("fitting %s on %s for %s epochs", cfg.model.name, type(datamodule).__name__, trainer.max_epochs)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_time_s = time.perf_counter() - started
    checkpoint = trainer.checkpoint_callback
    best = (checkpoint.best_model_path if checkpoint else "") or None
    last = last_checkpoint_path(trainer)  # read now: testing a checkpoint restores callback state
    tested = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    validated = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]

    audit = next((c for c in callbacks if isinstance(c, GradientAudit)), None)
    results = {
        "model": cfg.model.name,
        "engine": module.engine,
        "loss": type(loss).__name__,
        "data": getattr(datamodule, "source", None) or type(datamodule).__name__,
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
        "audit/max_rel_err": max((err for _, err in audit.history), default=None) if audit else None,
    }
    for source in (datamodule, *callbacks):  # data and callbacks may add their own findings
        if hasattr(source, "report"):
            results.update(source.report(module))
    if trainer.is_global_zero:
        drawn = save_figures(module, datamodule, loggers, output_dir) if cfg.get("figures", True) else []
        results["figures"] = [str(path) for path in drawn]
        (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        summary = {key: results[key] for key in ("test/acc", "test/loss", "train/samples_per_s") if results[key] is not None}
        log.info("  ".join(f"{key} {value:.4g}" for key, value in summary.items()))
        log.info("results: %s", output_dir / "results.json")
        log.info("figures: %s", ", ".join(results["figures"]) or "none")
    return results


@torch.no_grad()
def save_figures(module: LitNet, datamodule, loggers, output_dir: Path) -> list[Path]:
    figure_dir = output_dir / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    csv_logger = next((lg for lg in loggers if isinstance(lg, CSVLogger)), None)
    if csv_logger is not None and Path(csv_logger.experiment.metrics_file_path).is_file():
        metrics = figures.read_metrics_csv(Path(csv_logger.experiment.metrics_file_path))
        saved += figures.plot_learning_curves(metrics, figure_dir)
    net = module.net.eval()
    if isinstance(datamodule, XORDataModule):
        path = figure_dir / "decision_boundary.png"
        saved.append(figures.plot_decision_boundary(net, datamodule.inputs, datamodule.targets, path))
    elif isinstance(datamodule, FunctionDataModule):
        inputs, targets = datamodule.eval_points
        fitted = net(inputs.to(next(net.parameters()))).cpu()
        saved.append(figures.plot_function_fit(inputs, targets, fitted, datamodule.train_points, figure_dir / "fit.png"))
    elif isinstance(datamodule, MNISTDataModule):
        inputs, targets = datamodule.splits["test"]
        targets = class_indices(targets)
        parameter = next(net.parameters())
        predictions = torch.cat([net(chunk.to(parameter)).argmax(1).cpu() for chunk in inputs.split(2000)])
        saved.append(figures.plot_confusion_matrix(predictions, targets, datamodule.num_classes, figure_dir / "confusion_matrix.png"))
        saved.append(figures.plot_misclassified(datamodule.images(inputs), predictions, targets, figure_dir / "misclassified.png"))
        first = next(m for m in net.modules() if isinstance(m, torch.nn.Linear))
        saved.append(figures.plot_first_layer_weights(first.weight, datamodule.image_shape, figure_dir / "first_layer_weights.png"))
    net.train()
    return saved
