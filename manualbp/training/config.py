"""The configs in ``conf/`` and what turns them into objects: composing one as ``python train.py``
does (for tests and benchmarks), ``build`` (Hydra's ``instantiate``), and the checks that fail fast
before anything loads."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict

from manualbp.errors import ConfigError, ManualbpError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"  # train.py's config_path


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """The config ``python train.py <overrides>`` runs (``config_name="eval"``: ``eval.py``),
    writing into ``output_dir`` (and with Hydra's own config set, so that ``${hydra:...}``
    resolves as in a real run)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = str(output_dir)
    return cfg


def build(config, **kwargs):
    """``hydra.utils.instantiate``, re-raising manualbp's own errors as they are (Hydra wraps
    exceptions raised by a ``_target_`` in InstantiationException)."""
    try:
        return hydra.utils.instantiate(config, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ManualbpError):
            raise error.__cause__ from None
        raise


# Keys that must hold whole numbers (a command-line override such as seed=abc is a string).
INTEGER_KEYS = (
    "seed", "trainer.max_epochs", "trainer.min_epochs", "trainer.log_every_n_steps",
    "trainer.check_val_every_n_epoch", "trainer.num_sanity_val_steps", "data.batch_size",
    "data.eval_batch_size", "data.val_size", "data.split_seed", "data.steps_per_epoch",
)


def check_config(cfg: DictConfig) -> None:
    """Fail fast, before loading anything, on values that cannot work. (Values that a class
    checks itself -- the engine, the loss's name, the data's settings -- are checked there.)"""
    for key in INTEGER_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{key} must be a whole number, got {value!r}; e.g. {key}=3")
    lr = OmegaConf.select(cfg, "model.optimizer.lr")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"model.optimizer.lr must be a positive number, got {lr!r}")
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if max_epochs is not None and max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs must be at least 1, got {max_epochs}")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path} is not a file; to resume, give a checkpoint such as "
            f"outputs/<model>/runs/<time>/checkpoints/last.ckpt"
        )


def metric_value(results: dict, name: str | None) -> float | None:
    """The entry ``name`` (``optimized_metric``, e.g. ``val/acc``) of a run's results: what
    ``train.py`` returns, and a sweep optimises. None when ``name`` is None."""
    if name is None:
        return None
    if name not in results:
        known = ", ".join(key for key, value in results.items() if isinstance(value, (int, float)))
        raise ConfigError(f"optimized_metric={name} is not in the run's results; choose one of {known}")
    if results[name] is None:
        raise ConfigError(
            f"optimized_metric={name} has no value for model {results.get('model')} (no accuracy for "
            f"regression); choose another, e.g. optimized_metric=val/loss"
        )
    return results[name]
