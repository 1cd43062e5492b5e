"""logger=csv (default), logger=tensorboard, logger=many: what lands in the run folder, read back
as TensorBoard reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from manualbp.training import train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _tensorboard_tags(run_dir: Path) -> dict[str, list[str]]:
    """The scalar and image tags of the event files in run_dir/tensorboard, as TensorBoard sees them."""
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    return events.Tags()


def test_logger_many_writes_csv_and_tensorboard_with_scalars_figures_and_the_audit(config, tmp_path):
    results = train(config("model=xor", "logger=many", "trainer.max_epochs=2"))
    run_dir = tmp_path / "run"
    assert (run_dir / "metrics.csv").is_file()
    tags = _tensorboard_tags(run_dir)
    assert {"train/loss", "train/loss_step", "val/loss", "val/acc", "test/loss", "test/acc",
            "audit/max_rel_err"} <= set(tags["scalars"])
    # the learning curves (drawn from the CSV log) and the data's own figure, as images
    assert {"figures/loss", "figures/accuracy", "figures/decision_boundary"} <= set(tags["images"])
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert events.Scalars("test/acc")[-1].value == pytest.approx(results["test/acc"])
    assert max(event.value for event in events.Scalars("audit/max_rel_err")) < 1e-6


def test_logger_tensorboard_alone_writes_no_csv(config, tmp_path):
    train(config("model=xor", "logger=tensorboard", "trainer.max_epochs=1"))
    run_dir = tmp_path / "run"
    assert not (run_dir / "metrics.csv").exists()
    tags = _tensorboard_tags(run_dir)
    assert {"train/loss", "val/loss", "audit/max_rel_err"} <= set(tags["scalars"])
    assert tags["images"] == ["figures/decision_boundary"]  # no CSV log: no learning curves drawn


def test_the_default_logger_is_csv_only(config, tmp_path):
    cfg = config("model=xor")
    assert list(cfg.logger) == ["csv"]
    assert list(config("model=xor", "logger=many").logger) == ["csv", "tensorboard"]
