"""SIGTERM and SIGINT stop a real ``python train.py`` with a non-zero status and one line that
says how to resume; the command it gives works."""

from __future__ import annotations

import shlex
import signal

import pytest
from helpers import (
    MNIST_RUN,
    PROJECT_ROOT,
    error_lines,
    rows_of_epoch,
    run_train_py,
    start_train_py,
    wait_for_line,
    wait_until,
)

from manualbp.training.checkpoints import read_checkpoint


@pytest.mark.slow
def test_sigterm_exits_non_zero_and_says_how_to_resume(tmp_path, small_mnist):
    run = tmp_path / "run"
    process = start_train_py(*MNIST_RUN, f"data.root={small_mnist}", "trainer.max_epochs=5", f"hydra.run.dir={run}",
                             cwd=tmp_path)
    wait_until(lambda: rows_of_epoch(run, 1), "epoch 1's rows in metrics.csv", process=process)
    process.send_signal(signal.SIGTERM)  # epoch 0 checkpointed, epoch 1 running
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: stopped by SIGTERM while training; resume it"), stderr
    last = run / "checkpoints" / "last.ckpt"
    assert f"ckpt_path={last} hydra.run.dir={run}" in lines[0]
    assert read_checkpoint(last)["epoch"] in (0, 1)  # epoch 0's, or epoch 1's if it ended before the signal came

    command = shlex.split(lines[0].split("resume it from its last checkpoint with: ", 1)[1])
    assert command[:2] == ["python", "train.py"] and f"data.root={small_mnist}" in command
    resumed = run_train_py(*command[2:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_checkpoint(last)["epoch"] == 4


@pytest.mark.slow
def test_sigint_just_after_the_last_epoch_is_never_ignored(tmp_path):
    # After the last epoch's line the run is testing and drawing its figures (well over the time
    # a signal takes to arrive): it stops, saying how to resume. (A signal after its last line
    # could come after the process has ended: no test can say anything then.)
    run = tmp_path / "run"
    process = start_train_py("model=xor", f"hydra.run.dir={run}", cwd=tmp_path)
    wait_for_line(process, "epoch 3/3 done")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: stopped by SIGINT while "), stderr
    assert f"ckpt_path={run}/checkpoints/last.ckpt hydra.run.dir={run}" in lines[0]
    assert str(PROJECT_ROOT) not in lines[0]  # the command as a user types it, from the project folder



GPT_RUN = ["model=gpt", "data.steps_per_epoch=1000", "trainer.max_steps=1000", "trainer.threads=1", "figures=false",
           "callbacks.progress_bar.every_s=0"]


@pytest.mark.slow
def test_sigint_inside_the_first_epoch_leaves_a_checkpoint_that_resumes(tmp_path):
    # The GPT's first epoch is 1,000 steps here, and no checkpoint is due every N steps: before,
    # Ctrl+C then said "no checkpoint was saved yet".
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    process = start_train_py(*GPT_RUN, "callbacks.step_checkpoint.every_n_steps=0", f"hydra.run.dir={run}",
                             cwd=tmp_path)
    wait_for_line(process, "epoch 1  step 4/1000")
    assert not last.exists()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: stopped by SIGINT while training; resume it"), stderr
    stopped_at = read_checkpoint(last)["global_step"]
    assert stopped_at >= 4

    command = shlex.split(lines[0].split("resume it from its last checkpoint with: ", 1)[1])
    assert f"ckpt_path={last}" in command
    resumed = run_train_py(*command[2:], f"trainer.max_steps={stopped_at + 2}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_checkpoint(last)["global_step"] == stopped_at + 2
