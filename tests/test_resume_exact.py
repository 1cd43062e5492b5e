"""A run resumed from the checkpoint a killed run leaves (last.ckpt, written at an epoch's end)
trains on the batches, and ends with the weights and the metrics.csv rows, of the run that was
never stopped: for every model config."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import compose_config, metrics_rows

from manualbp.training import train

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))
SMALL_GPT = ["model.net.n_layer=1", "model.net.n_head=2", "model.net.n_embd=16", "model.net.block_size=16",
             "data.steps_per_epoch=5", "data.val_batches=1", "data.batch_size=4", "figures=false",
             "~callbacks.gradient_audit"]


def weights(run) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def losses(run) -> list[tuple]:
    return [(row["epoch"], row["step"], row.get("train/loss_step") or row.get("train/loss"), row.get("val/loss"))
            for row in metrics_rows(run)]


class StopAfterEpoch(L.Callback):
    """Ends the fit after ``epoch`` (what a kill then leaves: that epoch's last.ckpt)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def assert_resumes_exactly(overrides: list[str], tmp_path, stop_after_epoch: int = 1) -> None:
    whole = tmp_path / "whole"
    train(compose_config(overrides, whole))
    part = tmp_path / "part"
    train(compose_config(overrides, part), extra_callbacks=[StopAfterEpoch(stop_after_epoch)])
    assert len(losses(part)) < len(losses(whole))
    train(compose_config([*overrides, f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}"], part))
    assert losses(part) == losses(whole)
    ours, theirs = weights(part), weights(whole)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_a_gpt_run_with_max_steps_resumes_bit_exactly(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    assert_resumes_exactly(["model=gpt", f"data.path={corpus}", *SMALL_GPT, "trainer.max_steps=15"], tmp_path)


def test_a_gpt_run_with_max_epochs_resumes_bit_exactly(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    assert_resumes_exactly(["model=gpt", f"data.path={corpus}", *SMALL_GPT, "trainer.max_steps=-1",
                            "trainer.max_epochs=3", "model.scheduler.total_steps=15"], tmp_path)


@pytest.mark.parametrize("model", ["xor", "approx"])
def test_a_small_run_resumes_bit_exactly(model, tmp_path):
    assert_resumes_exactly([f"model={model}", "figures=false"], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mnist", "lenet", "mnist_linreg"])
def test_an_mnist_run_resumes_bit_exactly(model, small_mnist, tmp_path):
    assert_resumes_exactly([f"model={model}", f"data.root={small_mnist}", "data.val_size=100",
                            "data.batch_size=100", "trainer.max_epochs=3", "figures=false"], tmp_path)
