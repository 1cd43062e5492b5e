"""Hyperparameter search: python train.py -m hparams_search=... with Hydra's Optuna sweeper, and
the metric train.py returns to it (optimized_metric)."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import run_train_py
from omegaconf import OmegaConf

from manualbp.errors import ConfigError
from manualbp.training.config import metric_value

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def test_metric_value_is_the_named_result_or_a_clear_error():
    results = {"model": "approx", "val/acc": None, "val/loss": 0.25, "test/acc": None}
    assert metric_value(results, "val/loss") == 0.25
    assert metric_value(results, None) is None
    with pytest.raises(ConfigError, match="optimized_metric=val/acc has no value for model approx"):
        metric_value(results, "val/acc")
    with pytest.raises(ConfigError, match="val/acc_typo is not in the run.s results; choose one of val/loss"):
        metric_value(results, "val/acc_typo")


@pytest.mark.parametrize("search, model", [("mnist_optuna", "mnist"), ("xor_optuna", "xor")])
def test_every_swept_parameter_is_a_key_of_the_run_config(config, search, model):
    cfg = config(f"hparams_search={search}")
    assert cfg.model.name == model
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    for key in cfg.hydra.sweeper.params:  # a typo would make Optuna sweep a key nothing reads
        assert OmegaConf.select(cfg, key, throw_on_missing=True) is not None, key
    assert cfg.optimized_metric in ("val/acc", "val/loss")


@pytest.mark.slow
def test_a_two_trial_optuna_sweep_on_xor_writes_the_best_parameters(tmp_path):
    completed = run_train_py(
        "hparams_search=xor_optuna", "hydra.sweeper.n_trials=2", "trainer.max_epochs=1", "figures=false",
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs" / "xor" / "multiruns").iterdir()
    trials = sorted(path for path in sweep_dir.iterdir() if path.is_dir())
    assert [path.name for path in trials] == ["0", "1"]
    val_losses = [json.loads((trial / "results.json").read_text())["val/loss"] for trial in trials]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"model.optimizer.lr", "model.net.sizes.1"}
    assert best["best_value"] == pytest.approx(min(val_losses))  # xor_optuna minimises val/loss
    best_trial = trials[val_losses.index(min(val_losses))]
    overrides = yaml.safe_load((best_trial / ".hydra" / "overrides.yaml").read_text())
    assert f"model.net.sizes.1={best['best_params']['model.net.sizes.1']}" in overrides
