"""Private training (``dp=on``, ``model=mnist_dp``): Poisson batches, clipping + noise, the privacy
spent from Opacus' accountant in the console, metrics and results.json, the budget stop, and a resume
that reports and trains what an uninterrupted run does."""

from __future__ import annotations

import json

import pytest
import torch
from opacus.accountants import RDPAccountant

from manualbp.errors import ConfigError
from manualbp.training import train
from manualbp.training.privacy import PoissonBatchSampler


def _epsilon(noise_multiplier, sample_rate, steps, delta):
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return accountant.get_epsilon(delta)


def _small_private_run(config, small_mnist, *overrides):
    return config("model=mnist_dp", f"data.root={small_mnist}", "data.val_size=100", "data.batch_size=50",
                  "trainer.max_epochs=2", "figures=false", *overrides)


def test_poisson_batches_are_independent_draws_repeatable_per_epoch():
    sampler = PoissonBatchSampler(10_000, 0.01, seed=3)
    assert len(sampler) == 100
    epoch0 = list(sampler)
    sizes = torch.tensor([len(batch) for batch in epoch0], dtype=torch.float64)
    assert 90 < sizes.mean() < 110 and sizes.std() > 3  # Binomial(10000, 0.01): mean 100, std ~10
    assert all(torch.equal(a, b) for a, b in zip(epoch0, sampler, strict=True))  # same epoch: same batches
    sampler.set_epoch(1)
    assert not torch.equal(next(iter(sampler)), epoch0[0])


def test_mnist_dp_reports_the_accountants_epsilon(config, small_mnist, tmp_path):
    results = train(_small_private_run(config, small_mnist))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["dp/delta"] == 1e-5 and saved["dp/noise_multiplier"] == 1.1
    sample_rate = 50 / 500  # 600 training images - 100 for validation
    assert saved["dp/sample_rate"] == pytest.approx(sample_rate)
    assert results["steps"] == 2 * 10
    assert saved["dp/epsilon"] == pytest.approx(_epsilon(1.1, sample_rate, 20, 1e-5))
    assert 0 <= saved["test/acc"] <= 1
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert "dp/epsilon" in rows[0]


def test_a_resumed_private_run_trains_and_reports_as_an_uninterrupted_one(config, small_mnist, tmp_path):
    whole = train(_small_private_run(config, small_mnist))
    whole_weights = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    first = _small_private_run(config, small_mnist, "trainer.max_epochs=1")
    first.paths.output_dir = str(tmp_path / "first")
    train(first)
    resumed = _small_private_run(config, small_mnist, f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    results = train(resumed)
    assert results["dp/epsilon"] == pytest.approx(whole["dp/epsilon"], rel=1e-12)
    weights = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for name, tensor in whole_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0, msg=name)


def test_the_run_stops_when_its_budget_is_spent(config, small_mnist, caplog):
    target = _epsilon(1.1, 0.1, 12, 1e-5)  # spent after 12 of the 20 steps
    results = train(_small_private_run(config, small_mnist, f"dp.target_epsilon={target}"))
    assert results["dp/stopped_for_budget"] is True
    assert results["dp/epsilon"] <= target * 1.001
    assert results["steps"] == 12
    assert "privacy budget" in caplog.text


def test_a_target_epsilon_sets_the_noise(config, small_mnist):
    results = train(_small_private_run(config, small_mnist, "dp.noise_multiplier=null", "dp.target_epsilon=3.0"))
    assert results["dp/noise_multiplier"] > 0
    assert results["dp/epsilon"] == pytest.approx(3.0, rel=0.02)


@pytest.mark.parametrize("model", ["mnist", "lenet"])
def test_dp_on_trains_other_models(config, small_mnist, model):
    overrides = ["model.net.group_norm=true"] if model == "lenet" else []
    results = train(config(f"model={model}", "dp=on", f"data.root={small_mnist}", "data.val_size=100",
                           "data.batch_size=100", "trainer.max_epochs=1", "figures=false", *overrides))
    assert results["dp/epsilon"] > 0 and results["steps"] == 5


def test_dp_refuses_the_manual_engine(config, small_mnist):
    with pytest.raises(ConfigError, match="engine=manual"):
        train(_small_private_run(config, small_mnist, "engine=manual"))
