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
import os
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from manualbp.errors import ConfigError
from manualbp.training import figures
from manualbp.training.callbacks import last_checkpoint_path
from manualbp.training.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    ResumeAfterFinishedEpoch,
    read_checkpoint,
)
from manualbp.training.config import build, check_config
from manualbp.training.data.base import LectureDataModule
from manualbp.training.history import ResumableCSVLogger
from manualbp.training.interrupts import interrupted, stop_on_signals
from manualbp.training.loggers import log_figures
from manualbp.training.module import LitNet
from manualbp.training.run_folder import archive_earlier_run, archived_to, is_inside, run_folder_lock

log = logging.getLogger(__name__)


def check_net_fits_data(net: torch.nn.Module, datamodule: LectureDataModule) -> None:
    """The net's first Linear layer takes the data's features (unless a convolution comes first),
    its last gives the data's outputs."""
    linears = [module for module in net.modules() if isinstance(module, torch.nn.Linear)]
    if not linears:
        return
    first_weighted = next(module for module in net.modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)))
    takes_features = datamodule.input_size is not None  # text: token indices, no features
    if takes_features and first_weighted is linears[0] and linears[0].in_features != datamodule.input_size:
        raise ConfigError(
            f"the net's first layer takes {linears[0].in_features} inputs but the data has "
            f"{datamodule.input_size} features; set model.net.sizes[0]={datamodule.input_size}"
        )
    if linears[-1].out_features != datamodule.output_size:
        raise ConfigError(
            f"the net's last layer has {linears[-1].out_features} outputs but the data needs "
            f"{datamodule.output_size}; set the last of model.net.sizes to {datamodule.output_size}"
        )


def fill_net_settings(cfg: DictConfig, datamodule: LectureDataModule) -> None:
    """Put the settings the data fixes (a text's ``vocab_size``) into ``cfg.model.net`` where the
    config leaves them null; a value given that differs is refused (the net would not fit)."""
    for key, value in datamodule.net_settings().items():
        given = OmegaConf.select(cfg, f"model.net.{key}", default=None)
        if given is None:
            with open_dict(cfg):
                OmegaConf.update(cfg, f"model.net.{key}", value, merge=False)
        elif given != value:
            raise ConfigError(f"model.net.{key}={given} but the data needs {value}; leave model.net.{key} null "
                              f"(the data fills it in)")


def check_data_fits_net_settings(cfg: DictConfig, datamodule: LectureDataModule) -> None:
    """A text's windows fit the net's context: data.block_size <= model.net.block_size."""
    windows = getattr(datamodule, "block_size", None)
    context = OmegaConf.select(cfg, "model.net.block_size", default=None)
    if windows is not None and context is not None and windows > context:
        raise ConfigError(f"data.block_size={windows} is longer than the net's context model.net.block_size="
                          f"{context}; set data.block_size <= {context} (or leave it to follow the model's)")


def check_engine_fits_net(module: LitNet, cfg: DictConfig) -> None:
    """engine=manual runs a chain of layers (a Sequential) with no autograd, and no gradient clipping."""
    if module.engine != "manual":
        return
    if not isinstance(module.net, torch.nn.Sequential):
        raise ConfigError(f"engine=manual runs a net layer by layer, but model={module.name}'s "
                          f"{type(module.net).__name__} is not a chain of layers (a Sequential); use engine=autograd, "
                          f"which runs the same hand-written backward formulas")
    clip = OmegaConf.select(cfg, "trainer.gradient_clip_val", default=None)
    if clip:
        raise ConfigError(f"engine=manual steps the optimizer itself, so Lightning cannot clip its gradients "
                          f"(trainer.gradient_clip_val={clip}); set trainer.gradient_clip_val=null or use "
                          f"engine=autograd")


def check_engine_fits_trainer(module: LitNet, trainer: L.Trainer) -> None:
    if module.engine == "manual" and trainer.world_size > 1:
        raise ConfigError(
            f"engine=manual computes gradients without autograd, so DDP cannot average them "
            f"across the {trainer.world_size} processes; use engine=autograd with several devices"
        )


def check_checkpoint_fits_net(checkpoint: dict, net: torch.nn.Module, name: str, path: str) -> None:
    """The checkpoint's weights have the names and shapes of ``net``'s (same model, same sizes)."""
    saved = checkpoint["state_dict"].items()
    theirs = {key.removeprefix("net."): tuple(value.shape) for key, value in saved if key.startswith("net.")}
    ours = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    if theirs != ours:
        def shapes(weights: dict) -> str:
            return ", ".join("x".join(map(str, shape)) for key, shape in weights.items() if key.endswith("weight"))

        raise CheckpointError(
            f"ckpt_path={path} is a checkpoint of another model: its weights are {shapes(theirs) or 'none'}, "
            f"model={name}'s are {shapes(ours)}; give a checkpoint of a model={name} run with the same "
            f"model.net settings, or the model= it was trained with"
        )


def check_checkpoint_fits_data(checkpoint: dict, datamodule: LectureDataModule, path: str) -> None:
    """A text's checkpoint was trained on the same vocabulary (the same characters in the same
    index order) as the text given now: otherwise every token means another character."""
    stored = ((checkpoint.get("manualbp") or {}).get("data") or {})
    theirs, ours = stored.get("vocabulary"), getattr(datamodule, "vocabulary", None)
    if theirs is None or ours is None or theirs == ours:
        return
    trained_on = stored.get("corpus") or "another text"
    size = (f"{len(theirs)} distinct characters, this text has {len(ours)}" if len(theirs) != len(ours)
            else f"the same number of distinct characters ({len(ours)}) but other ones")
    raise CheckpointError(
        f"ckpt_path={path} was trained on {trained_on}, not on {datamodule.corpus}: its vocabulary has {size}; "
        f"give the text it was trained on (data.path=...) or a checkpoint trained on this text"
    )


def build_run(cfg: DictConfig, extra_callbacks: list[L.Callback] = (), resumed: dict | None = None):
    """Seed, then build the data, the LightningModule, the callbacks (the configured ones, then
    ``extra_callbacks``), the loggers and the trainer of ``cfg``; returns them in that order.

    ``resumed``: the checkpoint a training run resumes from (read by ``read_checkpoint``); its
    weights must fit the net, and the CSV log continues its history.
    """
    # Batches are gathered from tensors in memory: no worker processes needed.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # small data
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule: LectureDataModule = build(cfg.data)
    fill_net_settings(cfg, datamodule)
    check_data_fits_net_settings(cfg, datamodule)
    module: LitNet = build(cfg.model)
    check_engine_fits_net(module, cfg)
    check_net_fits_data(module.net, datamodule)
    trained = resumed if resumed is not None else _checkpoint_to_test(cfg)
    if trained is not None:  # the data first: another text's vocabulary size also changes the net
        check_checkpoint_fits_data(trained, datamodule, cfg.get("ckpt_path"))
    if resumed is not None:
        check_checkpoint_fits_net(resumed, module.net, module.name, cfg.get("ckpt_path"))
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values() if c] + list(extra_callbacks)
    private = {}
    if cfg.get("dp"):  # dp=on: DP-SGD (manualbp.training.privacy)
        privacy = build(cfg.dp)
        privacy.attach(module, datamodule)
        callbacks.append(privacy)
        private = {"gradient_clip_val": None}  # each example's gradient is clipped instead (max_grad_norm)
    if resumed is not None:
        callbacks.append(ResumeAfterFinishedEpoch())
    loggers = [build(c) for c in (cfg.get("logger") or {}).values() if c]
    for logger in loggers:
        if resumed is not None and isinstance(logger, ResumableCSVLogger):
            logger.continue_from(resumed["epoch"], resumed["global_step"])
    trainer_cfg = cfg.trainer
    if "threads" in trainer_cfg:  # manualbp's setting, not Lightning's
        torch.set_num_threads(torch_threads(trainer_cfg.threads))
        trainer_cfg = OmegaConf.create(OmegaConf.to_container(trainer_cfg, resolve=True))
        del trainer_cfg["threads"]
    trainer: L.Trainer = build(
        trainer_cfg, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()], **private
    )
    check_engine_fits_trainer(module, trainer)
    return datamodule, module, callbacks, loggers, trainer


def torch_threads(setting, cores: int | None = None, load: float | None = None) -> int:
    """torch's CPU thread count for ``trainer.threads``: a whole number as it is; ``auto``: the
    cores that the 1-minute load average leaves free (at least 1, at most torch's default, which
    follows OMP_NUM_THREADS). Measured on a 2-core machine at a load of 10: a GPT step took 0.41 s
    at one thread and 7.3 s at two, a parallel region waiting for a thread the scheduler has put
    aside; on free cores the threads work in parallel."""
    if setting == "auto":
        cores = cores or os.cpu_count() or 1
        load = os.getloadavg()[0] if load is None and hasattr(os, "getloadavg") else (load or 0.0)
        return max(1, min(torch.get_num_threads(), cores - int(load + 0.5)))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(f"trainer.threads must be auto or a whole number of threads >= 1, got {setting!r}; "
                          "e.g. trainer.threads=1 on a busy machine, or trainer.threads=auto")
    return setting

def _checkpoint_to_test(cfg: DictConfig) -> dict | None:
    """The checkpoint eval.py tests (``cfg.ckpt_path``), read; None without one."""
    path = cfg.get("ckpt_path") if not OmegaConf.is_missing(cfg, "ckpt_path") else None
    if not path or not Path(path).is_file():
        return None
    return read_checkpoint(path, weights_only=False)


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] = ()) -> dict:
    """Fit the configured net, test the best checkpoint, write results.json and figures.

    ``extra_callbacks`` join the configured ones (for benchmarks and tests). Returns the results
    (also written to ``<paths.output_dir>/results.json``).
    """
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    with run_folder_lock(output_dir):  # one run at a time in a folder (train.py locked it already)
        return train_in_held_folder(cfg, output_dir, extra_callbacks)


def train_in_held_folder(cfg: DictConfig, output_dir: Path, extra_callbacks: list[L.Callback]) -> dict:
    """``train``, once this process holds ``output_dir``."""
    ckpt_path = cfg.get("ckpt_path")
    # Read and verified (checksum, then the model in build_run) before anything is written in the run folder.
    resumed = read_checkpoint(ckpt_path, weights_only=False) if ckpt_path else None
    if not is_inside(ckpt_path, output_dir):  # a new run: an earlier run's files go to history/<n>
        # Under Hydra, .hydra/ and the log are this run's (Hydra wrote them before train was called).
        hydra_files = (".hydra", f"{HydraConfig.get().job.name}.log") if HydraConfig.initialized() else ()
        archive_earlier_run(output_dir, keep=hydra_files)
        if archived_to(output_dir) is not None:
            log.warning("%s held an earlier run: its files are now in %s", output_dir, archived_to(output_dir))
    record_data_path_resolved(cfg, output_dir)
    datamodule, module, callbacks, loggers, trainer = build_run(cfg, extra_callbacks, resumed)

    if resumed is not None:  # the folder is the run's own: its checkpoints are expected there
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    if trainer.is_global_zero:
        resuming = f", resuming epoch {resumed['epoch'] + 2} from {ckpt_path}" if resumed is not None else ""
        length = f"{trainer.max_steps} steps" if trainer.max_steps > 0 else f"{trainer.max_epochs} epochs"
        log.info(
            "training %s (engine %s) for %s%s on %d torch thread%s; outputs in %s",
            module.name, module.engine, length, resuming, torch.get_num_threads(),
            "" if torch.get_num_threads() == 1 else "s", output_dir,
        )
    with stop_on_signals() as signals:
        stage, last = "training", ckpt_path
        try:
            started = time.perf_counter()
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            fit_time_s = time.perf_counter() - started
            last = last_checkpoint_path(trainer)  # read now: testing a checkpoint restores callback state
            train_loss = _float_or_none(trainer.callback_metrics.get("train/loss"))  # the last epoch's mean
            if signals.signum is None:
                stage = "testing"
                checkpoint = trainer.checkpoint_callback
                best = (checkpoint.best_model_path if checkpoint else "") or None
                metrics = checkpoint_metrics(trainer, module, datamodule, best) | {"train/loss": train_loss}
                stage = "reporting"
                results = report(
                    cfg, module, datamodule, trainer, callbacks, loggers,
                    metrics=metrics, best=best, last=last, fit_time_s=fit_time_s,
                )
        except (KeyboardInterrupt, SystemExit):
            if signals.signum is None:
                raise
        if signals.signum is not None:
            last = last_checkpoint_path(trainer) or last
            raise interrupted(signals.signum, stage, last, output_dir) from None
    return results


def record_data_path_resolved(cfg: DictConfig, output_dir: Path) -> None:
    """A relative ``data.path`` becomes absolute, in ``cfg`` and in the run's .hydra/config.yaml,
    so that ``python eval.py`` finds the text from any folder."""
    given = OmegaConf.select(cfg, "data.path", default=None)
    if not isinstance(given, str) or Path(given).expanduser().is_absolute():
        return
    resolved = str(Path(given).expanduser().resolve())
    with open_dict(cfg):
        cfg.data.path = resolved
    recorded = output_dir / ".hydra" / "config.yaml"
    if recorded.is_file():
        config = OmegaConf.load(recorded)
        if OmegaConf.select(config, "data.path", default=None) == given:
            config.data.path = resolved
            OmegaConf.save(config, recorded)


def checkpoint_metrics(trainer: L.Trainer, module: LitNet, datamodule: LectureDataModule, ckpt_path) -> dict:
    """Test and validation loss and accuracy of the checkpoint at ``ckpt_path`` (None: of
    ``module`` as it is), as results.json entries."""
    tested = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0]
    validated = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0]
    return {
        "test/acc": tested.get("test/acc"),
        "test/loss": tested["test/loss"],
        "val/acc": validated.get("val/acc"),
        "val/loss": validated["val/loss"],
    }


def report(
    cfg: DictConfig, module: LitNet, datamodule: LectureDataModule, trainer: L.Trainer, callbacks, loggers,
    *, metrics: dict, best: str | None, last: str | None, fit_time_s: float,
) -> dict:
    """results.json, the figures and the closing summary of a finished run."""
    results = {
        "model": module.name,
        "engine": module.engine,
        "loss": type(module.loss).__name__,
        "data": datamodule.description,
        "seed": cfg.seed,
        **metrics,
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
        save_results(results, cfg, module, datamodule, loggers, trainer.global_step)
    return results


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def save_results(results: dict, cfg: DictConfig, module: LitNet, datamodule: LectureDataModule, loggers,
                 step: int) -> None:
    """Draw the figures (unless ``cfg.figures`` is false; TensorBoard loggers get them as images
    too), write ``results`` to ``<paths.output_dir>/results.json`` and log the closing summary.
    Call it on the main process only."""
    output_dir = Path(cfg.paths.output_dir)
    drawn = save_figures(module, datamodule, loggers, output_dir) if cfg.get("figures", True) else []
    log_figures(loggers, drawn, step)
    results["figures"] = [str(path) for path in drawn]
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    summary = {key: results.get(key) for key in ("test/acc", "test/loss", "train/samples_per_s")}
    summary = "  ".join(f"{key} {value:.4g}" for key, value in summary.items() if value is not None)
    if results.get("fit_time_s") is not None:
        log.info("done in %.1f s: %s", results["fit_time_s"], summary)
    else:
        log.info("tested: %s", summary)
    figure_names = ", ".join(Path(path).name for path in drawn)
    log.info("results: %s", output_dir / "results.json")
    log.info("figures: %s", f"{output_dir / 'figures'} ({figure_names})" if drawn else "none")


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
