"""``evaluate(cfg)``: test a trained checkpoint without training (``python eval.py
ckpt_path=RUN/checkpoints/last.ckpt``), writing results.json and the figures into a new run folder.

The model and data are the trained run's own: ``register_trained_run`` reads ``RUN/.hydra/config.yaml``
(Hydra saves it in every run folder) and offers its ``model`` and ``data`` to Hydra as the config
options ``model=trained_run`` and ``data=trained_run``, which ``conf/eval.yaml`` picks by default.
So a key given on the command line changes the run's own value (``data.root=/data``), and a
group replaces it (``model=mnist data=mnist``, for a checkpoint without its run folder).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from manualbp.errors import ConfigError
from manualbp.training.pipeline import build_run, checkpoint_metrics, save_results

TRAINED_RUN = "trained_run"  # the config option name of the run's model and data


def run_config_path(ckpt_path: str | Path) -> Path | None:
    """The Hydra config of the run that wrote ``ckpt_path``: ``RUN/.hydra/config.yaml`` for a
    checkpoint in ``RUN/checkpoints/`` (or in ``RUN/``); None if there is none."""
    checkpoint = Path(ckpt_path).resolve()
    for run_dir in (checkpoint.parent.parent, checkpoint.parent):
        if (run_dir / ".hydra" / "config.yaml").is_file():
            return run_dir / ".hydra" / "config.yaml"
    return None


def ckpt_path_argument(arguments: list[str]) -> str | None:
    """The value of ``ckpt_path=...`` among command-line overrides, as Hydra will parse it."""
    given = [argument for argument in arguments if argument.lstrip("+~").startswith("ckpt_path=")]
    if not given:
        return None
    value = OverridesParser.create().parse_overrides(given[-1:])[0].value()
    return None if value is None else str(value)


def register_trained_run(ckpt_path: str | None) -> None:
    """Offer the model and data of the run that wrote ``ckpt_path`` as Hydra config options
    ``model/trained_run`` and ``data/trained_run`` (resolved: ``${engine}``, ``${seed}`` take
    the run's values); with no checkpoint or no run config, withdraw earlier ones."""
    store = ConfigStore.instance()
    for group in ("model", "data"):
        store.repo.get(group, {}).pop(f"{TRAINED_RUN}.yaml", None)
    config_path = run_config_path(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else None
    if config_path is None:
        return
    run_config = OmegaConf.load(config_path)
    for group in ("model", "data"):
        if group in run_config:
            node = OmegaConf.to_container(run_config[group], resolve=True)
            store.store(group=group, name=TRAINED_RUN, node=node, provider="the trained run")


def evaluate(cfg: DictConfig) -> dict:
    """Test and validate the checkpoint ``cfg.ckpt_path`` with ``cfg.model`` and ``cfg.data``;
    write results.json (test and validation loss and accuracy, the data's report) and the
    figures into ``cfg.paths.output_dir``. Returns the results."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ConfigError("give the checkpoint to test: python eval.py ckpt_path=RUN/checkpoints/last.ckpt")
    checkpoint = Path(cfg.ckpt_path)
    if not checkpoint.is_file():
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is not a file; give a checkpoint such as "
            f"outputs/<model>/runs/<time>/checkpoints/last.ckpt"
        )
    missing = [group for group in ("model", "data") if cfg.get(group) is None]
    if missing:
        raise ConfigError(
            f"{checkpoint} has no run config (no .hydra/config.yaml in the folder above it) to take "
            f"its {' and '.join(missing)} from; name them: python eval.py ckpt_path={checkpoint} "
            + " ".join(f"{group}=<name>" for group in missing) + " (e.g. model=mnist data=mnist)"
        )
    datamodule, module, _, loggers, trainer = build_run(cfg)
    # The checkpoint holds the state of the training run's checkpoint callbacks; testing needs none.
    warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")
    try:
        tested = checkpoint_metrics(trainer, module, datamodule, str(checkpoint))
    except RuntimeError as error:
        if "state_dict" not in str(error):
            raise
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ConfigError(
            f"{checkpoint} does not fit model {module.name}: {' '.join(lines[1:]) or lines[0]} "
            f"Evaluate it with the model it was trained with"
        ) from None
    config_path = run_config_path(checkpoint)
    results = {
        "model": module.name,
        "engine": module.engine,
        "loss": type(module.loss).__name__,
        "data": datamodule.description,
        "checkpoint": str(checkpoint.resolve()),
        "trained_run": str(config_path.parent.parent) if config_path else None,
        **tested,
    }
    results.update(datamodule.report(module))
    if trainer.is_global_zero:
        save_results(results, cfg, module, datamodule, loggers, trainer.global_step)
    return results
