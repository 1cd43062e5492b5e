"""SIGTERM and SIGINT stop a real ``python train.py`` with a non-zero status and one line that
says how to resume; the command it gives works."""

from __future__ import annotations

import shlex
import signal
import time

import pytest
from helpers import MNIST_RUN, PROJECT_ROOT, error_lines, rows_of_epoch, run_train_py, start_train_py

from manualbp.training.checkpoints import read_checkpoint


@pytest.mark.slow
def test_sigterm_exits_non_zero_and_says_how_to_resume(tmp_path, small_mnist):
    run = tmp_path / "run"
    process = start_train_py(*MNIST_RUN, f"data.root={small_mnist}", "trainer.max_epochs=5", f"hydra.run.dir={run}",
                             cwd=tmp_path)
    while process.poll() is None and not rows_of_epoch(run, 1):  # epoch 0 checkpointed, epoch 1 running
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: stopped by SIGTERM while training; resume it"), stderr
    last = run / "checkpoints" / "last.ckpt"
    assert f"ckpt_path={last} hydra.run.dir={run}" in lines[0]
    assert read_checkpoint(last)["epoch"] >= 0

    command = shlex.split(lines[0].split("resume it from its last checkpoint with: ", 1)[1])
    assert command[:2] == ["python", "train.py"] and f"data.root={small_mnist}" in command
    resumed = run_train_py(*command[2:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_checkpoint(last)["epoch"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("delay_s", [0.0, 0.3, 0.8])
def test_sigint_just_after_the_last_epoch_is_never_ignored(tmp_path, delay_s):
    run = tmp_path / "run"
    process = start_train_py("model=xor", f"hydra.run.dir={run}", cwd=tmp_path)
    for line in process.stdout:
        if line.startswith("epoch 3/3 done"):
            break
    time.sleep(delay_s)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0, stderr[-3000:]  # never ignored
    if (run / "results.json").is_file() and process.returncode in (-signal.SIGINT, 128 + signal.SIGINT):
        return  # the run had done all its work (XOR's test and report take well under 0.8 s) when it came
    assert process.returncode == 128 + signal.SIGINT, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: stopped by SIGINT while "), stderr
    assert f"ckpt_path={run}/checkpoints/last.ckpt hydra.run.dir={run}" in lines[0]
    assert str(PROJECT_ROOT) not in lines[0]  # the command as a user types it, from the project folder
