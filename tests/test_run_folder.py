"""A run folder survives kills, resumes, full disks and damaged checkpoints: real processes,
real signals, real (small, tmpfs) filesystems where the machine allows them."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import torch
from helpers import (
    MNIST_RUN,
    PROJECT_ROOT,
    compose_config,
    error_lines,
    metrics_rows,
    overwrite_first_weight,
    rows_of_epoch,
    run_train_py,
    start_train_py,
    wait_until,
    write_mnist_files,
)

from manualbp.errors import ConfigError
from manualbp.training import train
from manualbp.training.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    DiskFullError,
    checksum_path,
    read_checkpoint,
)

# ----------------------------------------------------------------------------------------------
# One run at a time in a run folder
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_in_a_busy_run_folder_is_refused_in_one_line_before_writing(tmp_path):
    run = tmp_path / "run"
    first = start_train_py("model=xor", "trainer.max_epochs=100000", "figures=false", f"hydra.run.dir={run}",
                           cwd=tmp_path)
    try:
        wait_until(lambda: rows_of_epoch(run, 1), "the first run's epoch 1 in metrics.csv", process=first)
        written = {path: path.read_bytes() for path in (run / ".hydra").iterdir()}
        second = run_train_py("model=xor", "seed=1", f"hydra.run.dir={run}", cwd=tmp_path, timeout=300)
        assert second.returncode == 1 and error_lines(second.stderr) == [
            f"error: hydra.run.dir={run} is in use by another run (pid {first.pid}); wait for it to end, or give "
            f"this run its own folder (another hydra.run.dir=PATH, or leave hydra.run.dir out for a new one)"
        ], second.stderr[-3000:]
        assert first.poll() is None  # refused while the first run held the folder
        assert {path: path.read_bytes() for path in (run / ".hydra").iterdir()} == written  # nothing written
        assert not (run / "history").exists() and "seed=1" not in (run / "train.log").read_text()
    finally:
        first.kill()  # a crash: the kernel releases the lock with the process
        first.communicate()
    # Free again: the same flock, taken here in this process (one python train.py fewer to start)
    assert train(compose_config(["model=xor", "trainer.max_epochs=1", "figures=false"], run))["test/acc"] == 1.0


def test_train_holds_its_run_folder_while_it_runs(config, tmp_path):
    from manualbp.training.run_folder import LOCK_NAME, RunFolderInUseError

    run = tmp_path / "run"
    run.mkdir()
    with open(run / LOCK_NAME, "w") as lock:  # another open file: to flock, another run
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("12345\n")
        lock.flush()
        with pytest.raises(RunFolderInUseError, match=rf"hydra.run.dir={run} is in use by another run \(pid 12345\)"):
            train(config("model=xor", "trainer.max_epochs=1", "figures=false"))
    assert sorted(path.name for path in run.iterdir()) == [LOCK_NAME]  # nothing written
    train(config("model=xor", "trainer.max_epochs=1", "figures=false"))  # free again once its holder closed it


# ----------------------------------------------------------------------------------------------
# Resume keeps the run's history
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_run_resumed_in_its_folder_ends_like_an_uninterrupted_run_and_keeps_every_epoch(tmp_path, small_mnist):
    # One uninterrupted run and one killed and resumed (was two tests with a reference run each)
    common = [*MNIST_RUN, f"data.root={small_mnist}", "trainer.max_epochs=4"]
    full = run_train_py(*common, f"hydra.run.dir={tmp_path}/full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    run = tmp_path / "killed"
    process = start_train_py(*common, f"hydra.run.dir={run}", cwd=tmp_path)
    wait_until(lambda: rows_of_epoch(run, 2), "epoch 2's rows in metrics.csv", process=process, poll_s=0)
    process.kill()  # mid-run: epochs 0 and 1 checkpointed
    process.communicate()
    assert process.returncode == -signal.SIGKILL and not (run / "results.json").exists()
    last = run / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["epoch"] == 1

    # A resume from a damaged last.ckpt fails in one line and leaves the history alone.
    history = (run / "metrics.csv").read_bytes()
    good = last.read_bytes()
    last.write_bytes(good[:-1000])
    failed = run_train_py(*common, f"ckpt_path={last}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert failed.returncode == 1 and error_lines(failed.stderr) == [
        line for line in error_lines(failed.stderr) if line.startswith("error: checkpoint")
    ], failed.stderr[-3000:]
    assert "is damaged" in failed.stderr and str(last) in failed.stderr
    assert (run / "metrics.csv").read_bytes() == history
    last.write_bytes(good)

    # Resume in the run's own folder, so that the best-checkpoint bookkeeping carries on too.
    resumed = run_train_py(*common, f"ckpt_path={last}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, actual = metrics_rows(tmp_path / "full"), metrics_rows(run)
    assert {row["epoch"] for row in actual} == {"0", "1", "2", "3", "4"}
    assert actual == expected  # every row, every value: the resumed run's history is the whole run's

    # The same weights, step and results as the uninterrupted run
    expected = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    actual = torch.load(last, weights_only=False)
    assert actual["epoch"] == expected["epoch"] == 3
    assert actual["global_step"] == expected["global_step"]
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][name], tensor), name
    resumed_results = json.loads((run / "results.json").read_text())
    full_results = json.loads((tmp_path / "full" / "results.json").read_text())
    assert Path(resumed_results["best_checkpoint"]).name == Path(full_results["best_checkpoint"]).name
    for key in ("test/acc", "test/loss", "val/acc", "val/loss"):
        assert resumed_results[key] == full_results[key], key


def test_each_new_run_in_a_folder_moves_the_earlier_runs_files_to_a_numbered_history(config, tmp_path):
    run = tmp_path / "run"
    for seed in (0, 1, 2):
        train(config("model=xor", "trainer.max_epochs=1", "figures=false", f"seed={seed}"))
    assert sorted(path.name for path in (run / "history").iterdir()) == ["1", "2"]
    for folder, seed in ((run / "history" / "1", 0), (run / "history" / "2", 1), (run, 2)):
        assert json.loads((folder / "results.json").read_text())["seed"] == seed
        assert len(metrics_rows(folder)) > 0
        (best,) = (folder / "checkpoints").glob("best-*.ckpt")  # each run's best beside its own results
        assert json.loads((folder / "results.json").read_text())["best_checkpoint"].endswith(best.name)
        read_checkpoint(best)  # its .sha256 moved with it

    # Resuming an earlier run's checkpoint (in history/) continues that run here: a new run for this folder.
    earlier = run / "history" / "1" / "checkpoints" / "last.ckpt"
    train(config("model=xor", "trainer.max_epochs=2", "figures=false", f"ckpt_path={earlier}"))
    assert json.loads((run / "history" / "3" / "results.json").read_text())["seed"] == 2
    assert read_checkpoint(earlier)["epoch"] == 0 and read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 1


@pytest.mark.slow
def test_a_run_folder_used_three_times_keeps_each_runs_files_and_config(tmp_path):
    run = tmp_path / "run"
    outputs = []
    for seed in (0, 1, 2):
        result = run_train_py("model=xor", "trainer.max_epochs=1", "figures=false", f"seed={seed}",
                              f"hydra.run.dir={run}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout + result.stderr)
    for folder, seed in ((run / "history" / "1", 0), (run / "history" / "2", 1), (run, 2)):
        assert f"seed: {seed}\n" in (folder / ".hydra" / "config.yaml").read_text()
        assert json.loads((folder / "results.json").read_text())["seed"] == seed
        assert len(metrics_rows(folder)) > 0 and list((folder / "checkpoints").glob("best-*.ckpt"))
        assert (folder / "train.log").read_text().count("training xor (engine") == 1  # its own log only
    assert f"{run} held an earlier run: its files are now in {run / 'history' / '2'}" in outputs[2]
    assert not any("Checkpoint directory" in output for output in outputs), outputs[2]


# ----------------------------------------------------------------------------------------------
# Atomic checkpoints: other filesystems, kills during a save, a full disk
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm (a tmpfs)")
def test_a_kill_during_a_save_on_another_filesystem_leaves_a_whole_last_ckpt(tmp_path, small_mnist):
    # The run folder on tmpfs, the temp dir on the repository's filesystem: a rename between them
    # is a copy that truncates the target first.
    run = Path("/dev/shm") / f"manualbp-test-{uuid.uuid4().hex}"
    temp = tmp_path / "tmp"
    temp.mkdir()
    common = [*MNIST_RUN, f"data.root={small_mnist}", "trainer.max_epochs=6"]
    try:
        process = start_train_py(*common, f"hydra.run.dir={run}", cwd=tmp_path, env={"TMPDIR": str(temp)})
        folder, last = run / "checkpoints", run / "checkpoints" / "last.ckpt"
        first = []

        def second_save_begun() -> bool:  # a temporary file here or in $TMPDIR, or last.ckpt changing
            try:
                stat = last.stat()
            except FileNotFoundError:
                return False
            if not first:
                first.append((stat.st_size, stat.st_mtime_ns))
                return False
            return ((stat.st_size, stat.st_mtime_ns) != first[0] or any(folder.glob(".*.partial"))
                    or any(temp.iterdir()))

        wait_until(second_save_begun, "the second save of last.ckpt", process=process, poll_s=0)
        process.kill()  # during the second save of last.ckpt
        process.communicate()
        assert process.returncode == -signal.SIGKILL, "the run ended before the second save"
        assert read_checkpoint(last)["epoch"] in (0, 1)  # whole and verified, old or new
        for checkpoint in folder.glob("*.ckpt"):
            read_checkpoint(checkpoint)
        assert [path for path in temp.rglob("*") if path.is_file() and path.stat().st_size > 100_000] == []

        resumed = run_train_py(*common, f"ckpt_path={last}", f"hydra.run.dir={run}", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert not list(folder.glob(".*.partial"))  # the killed save's temporary file is gone
        assert read_checkpoint(last)["epoch"] == 5
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_checkpoints_are_written_with_their_checksum_and_verified(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, path)
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
    check = subprocess.run(["sha256sum", "-c", checksum_path(path).name], cwd=path.parent, capture_output=True)
    assert check.returncode == 0, check.stdout  # the standard tool reads the checksum file
    assert io.load_checkpoint(path)["epoch"] == 1
    io.remove_checkpoint(path)
    assert list(path.parent.iterdir()) == []


def test_a_save_that_fails_keeps_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    # Without a small filesystem at hand: fsync reports a full disk (as NFS and quotas do).
    io = AtomicCheckpointIO()
    folder = tmp_path / "checkpoints"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 4}, folder / "last.ckpt")

    def full_disk(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(DiskFullError, match=r"the disk is full: checkpoint best.ckpt could not be written .*"
                       r"the last good checkpoint is .*last.ckpt \(epoch 4\)"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 5}, folder / "best.ckpt")
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
    assert torch.equal(read_checkpoint(folder / "last.ckpt")["state_dict"]["w"], torch.ones(3))


@pytest.fixture
def small_filesystem(tmp_path):
    """A 16 MiB tmpfs mounted at tmp_path/small (needs root and mount; skipped otherwise)."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mountpoint)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


@pytest.mark.slow
def test_a_full_disk_ends_the_run_in_one_line_naming_the_last_good_checkpoint(tmp_path, small_mnist, small_filesystem):
    # An MNIST checkpoint is 6.4 MB: epoch 0's best and last fit in 16 MiB, epoch 1's do not.
    run = small_filesystem / "run"
    result = run_train_py(
        *MNIST_RUN, f"data.root={small_mnist}", "trainer.max_epochs=4", "figures=false",
        f"hydra.run.dir={run}", cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: the disk is full: checkpoint "), result.stderr[-3000:]
    named = re.search(r"the last good checkpoint is (\S+) \(epoch (\d+)\): resume with ckpt_path=\1", lines[0])
    assert named, lines[0]
    assert read_checkpoint(named.group(1))["epoch"] == int(named.group(2))
    for checkpoint in (run / "checkpoints").glob("*.ckpt"):  # nothing truncated under a final name
        read_checkpoint(checkpoint)
    assert not list((run / "checkpoints").glob(".*.partial"))


# ----------------------------------------------------------------------------------------------
# Bad checkpoints: one line each, naming the file
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def xor_checkpoint(config, tmp_path) -> Path:
    train(config("model=xor", "trainer.max_epochs=1", "figures=false"))
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    "damage, message",
    [
        ("overwrite", "is damaged: its SHA-256 is not the one recorded when it was saved"),
        ("overwrite-unverified", r"is damaged: its part archive/data/\d+ does not match the CRC32 stored in the file"),
        ("truncate", "is damaged: its SHA-256"),
        ("truncate-unverified", "is not a readable PyTorch checkpoint"),
        ("empty", r"is empty \(0 bytes\)"),
        ("random", "is not a readable PyTorch checkpoint"),
    ],
)
def test_a_damaged_checkpoint_is_named_and_not_loaded(config, tmp_path, xor_checkpoint, damage, message):
    if damage.startswith("overwrite"):
        overwrite_first_weight(xor_checkpoint)
    elif damage.startswith("truncate"):
        xor_checkpoint.write_bytes(xor_checkpoint.read_bytes()[:3000])
    elif damage == "empty":
        xor_checkpoint.write_bytes(b"")
    else:
        xor_checkpoint.write_bytes(os.urandom(8000))
    if damage not in ("overwrite", "truncate"):
        checksum_path(xor_checkpoint).unlink()  # a checkpoint from elsewhere, without a checksum
    with pytest.raises(CheckpointError, match=f"checkpoint {xor_checkpoint} {message}.*best-epoch000"):
        train(config("model=xor", "trainer.max_epochs=2", f"ckpt_path={xor_checkpoint}"))


def test_a_checkpoint_of_another_model_is_refused(config, xor_checkpoint, small_mnist):
    message = (f"ckpt_path={xor_checkpoint} is a checkpoint of another model: its weights are 8x2, 1x8, "
               "model=mnist's are 512x784, 256x512, 10x256")
    with pytest.raises(CheckpointError, match=message):
        train(config("model=mnist", f"data.root={small_mnist}", f"ckpt_path={xor_checkpoint}"))


# ----------------------------------------------------------------------------------------------
# Extending a finished run
# ----------------------------------------------------------------------------------------------


def test_a_finished_run_without_a_schedule_can_be_extended(config, xor_checkpoint):
    results = train(config("model=xor", "trainer.max_epochs=2", "figures=false", f"ckpt_path={xor_checkpoint}"))
    assert results["steps"] == 200 and results["epochs"] == 2 and results["test/acc"] == 1.0


def test_extending_a_one_cycle_run_is_refused_in_one_line(config, small_mnist, tmp_path):
    common = ["model=mnist", f"data.root={small_mnist}", "data.val_size=100", "data.batch_size=100", "figures=false"]
    train(config(*common, "trainer.max_epochs=1", "callbacks.gradient_audit=null"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    message = (r"the checkpoint \(epoch 0, step 5\) follows a OneCycleLR schedule of 5 steps, and "
               r"trainer.max_epochs=2 needs one of 10: .* Resume the run with trainer.max_epochs=1, or train a new run")
    with pytest.raises(ConfigError, match=message):
        train(config(*common, "trainer.max_epochs=2", f"ckpt_path={last}"))


# ----------------------------------------------------------------------------------------------
# Bad checkpoints and folders on the command line: one line each, no traceback
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def shared_folder():
    """A folder that an unprivileged user can enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="manualbp-test-"))
    folder.chmod(0o777)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir():
            path.chmod(0o777)
    shutil.rmtree(folder, ignore_errors=True)


def run_train_py_unprivileged(*overrides: str, cwd: Path):
    """``python train.py`` as a user to whom permissions apply: root reads and writes through
    them, so as root the run is started as nobody (setpriv)."""
    env = {"HOME": str(cwd), "XDG_CACHE_HOME": str(cwd / "cache"), "MPLCONFIGDIR": str(cwd / "mpl")}
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run(
        [*prefix, sys.executable, str(PROJECT_ROOT / "train.py"), *overrides], cwd=cwd,
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_an_impossible_run_folder_is_one_line(tmp_path):
    result = run_train_py("model=xor", "hydra.run.dir=/dev/null/run", cwd=tmp_path)
    assert result.returncode == 1 and error_lines(result.stderr) == [
        "error: hydra.run.dir=/dev/null/run cannot hold the run's files: Not a directory; give a folder you can "
        "write to (hydra.run.dir=PATH), or run train.py from one (outputs go to ./outputs)"
    ], result.stderr[-3000:]


@pytest.mark.slow
def test_a_read_only_run_folder_is_one_line(shared_folder):
    read_only = shared_folder / "read-only"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    result = run_train_py_unprivileged("model=xor", f"hydra.run.dir={read_only}/run", cwd=shared_folder)
    assert result.returncode == 1 and error_lines(result.stderr) == [
        f"error: hydra.run.dir={read_only}/run cannot hold the run's files: Permission denied; give a folder "
        "you can write to (hydra.run.dir=PATH), or run train.py from one (outputs go to ./outputs)"
    ], result.stderr[-3000:]


@pytest.mark.slow
def test_an_unreadable_data_folder_is_one_line_naming_it(shared_folder):
    raw = write_mnist_files(shared_folder / "data")
    raw.chmod(0o000)
    result = run_train_py_unprivileged(
        "model=mnist", f"data.root={shared_folder}/data", f"hydra.run.dir={shared_folder}/run", cwd=shared_folder,
    )
    lines = error_lines(result.stderr)
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ") and str(raw) in lines[0] and "Permission denied" in lines[0], lines


@pytest.mark.slow
def test_a_damaged_checkpoint_on_the_command_line_is_one_line(tmp_path, xor_checkpoint):
    xor_checkpoint.write_bytes(b"")
    checksum_path(xor_checkpoint).unlink()
    result = run_train_py("model=xor", f"ckpt_path={xor_checkpoint}", f"hydra.run.dir={tmp_path}/again", cwd=tmp_path)
    assert result.returncode == 1 and error_lines(result.stderr) == [
        f"error: checkpoint {xor_checkpoint} is empty (0 bytes): the save that wrote it was cut off; use another "
        f"checkpoint of the run ({next(xor_checkpoint.parent.glob('best-*.ckpt')).name} in {xor_checkpoint.parent}) "
        "or start again without ckpt_path"
    ], result.stderr[-3000:]


def test_a_new_run_moves_only_the_earlier_runs_files_and_leaves_the_users_own(tmp_path):
    from manualbp.training.run_folder import archive_earlier_run, release_run_folder

    folder = tmp_path / "run"
    for name in ("results.json", "metrics.csv", "train.log", "notes.txt", "MNIST/raw/train-images-idx3-ubyte"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    for name in ("checkpoints", "figures", ".hydra"):
        (folder / name).mkdir()
    try:
        target = archive_earlier_run(folder)
    finally:
        release_run_folder(folder)
    assert sorted(path.name for path in target.iterdir()) == sorted(
        [".hydra", "checkpoints", "figures", "metrics.csv", "results.json", "train.log"])
    assert (folder / "notes.txt").read_text() == "notes.txt"
    assert (folder / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
