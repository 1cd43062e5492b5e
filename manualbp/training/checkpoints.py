"""Checkpoints that a kill or a full disk cannot damage, and that say so when they are damaged.

``AtomicCheckpointIO`` is the Trainer's CheckpointIO plugin (``pipeline.train`` always uses it):

* A checkpoint is written to a temporary file in its own folder (``.last.ckpt.<pid>.partial``),
  flushed and fsynced, then renamed over the final name: a name always holds a whole checkpoint,
  old or new, whatever the filesystem (Lightning's own save goes through a temporary file in
  /tmp, which across filesystems is a copy that truncates the target first). An interrupted save
  removes its temporary file; one left by SIGKILL is removed by the next run in that folder.
* Beside each checkpoint, ``<name>.sha256`` holds its SHA-256 (``sha256sum -c`` reads it), and
  every load verifies it (``manualbp.checkpoint_file``, which every reader of a checkpoint uses;
  without the file, the zip members' CRC32): flipped or overwritten bytes are an error, not
  weights of 1e15.
* A full disk is one line (``DiskFullError``) naming the last good checkpoint.

``read_checkpoint`` is the one way manualbp reads a checkpoint: a missing, empty, truncated,
damaged or foreign file is a ``CheckpointError`` that names it and says what to do.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _load as lightning_load
from lightning.pytorch.plugins.io import TorchCheckpointIO

from manualbp.checkpoint_file import (
    CheckpointError,
    checksum_path,
    recorded_digests,
    verified_checkpoint_bytes,
    what_to_do,
)
from manualbp.errors import ManualbpError

PARTIAL_SUFFIX = ".partial"


class DiskFullError(ManualbpError, OSError):
    """The disk filled up while the run was writing; the last good checkpoint is named."""


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` in full or keeps what it held: write a temporary file in the same
    folder, flush and fsync it, then rename it over ``path``. The temporary file never outlives
    a failure (an exception, a KeyboardInterrupt)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def remove_stale_partials(folder: Path) -> None:
    """Remove temporary files of saves whose process is gone (SIGKILL during a save)."""
    for partial in folder.glob(f".*{PARTIAL_SUFFIX}"):
        pid = partial.name.removesuffix(PARTIAL_SUFFIX).rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_exists(int(pid)):
            partial.unlink(missing_ok=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_checkpoint(path: str | os.PathLike, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
    """The checkpoint at ``path``, verified (``verified_checkpoint_bytes``: its SHA-256, or the
    CRC32 of its parts without a .sha256 file).

    Raises CheckpointError, naming the file and what to do, for a file that is missing, empty,
    damaged (checksum), truncated or not a checkpoint."""
    path = Path(path)
    data = verified_checkpoint_bytes(path)
    try:
        checkpoint = lightning_load(io.BytesIO(data), map_location=map_location, weights_only=weights_only)
    except Exception as error:  # torch.load: truncated zip, random bytes, unpickling errors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch checkpoint ({len(data):,} bytes; {reason[:160]}); "
            f"{what_to_do(path)}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a Lightning checkpoint (no state_dict); give a checkpoint "
            f"written by python train.py (RUN/checkpoints/*.ckpt)"
        )
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's CheckpointIO with atomic, fsynced, checksummed saves and verified loads."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: dict[Path, int] = {}  # checkpoints this run wrote and kept -> their epoch
        self._cleaned: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.parent not in self._cleaned:
                remove_stale_partials(path.parent)
                self._cleaned.add(path.parent)
            # The checksum file first accepts the new digest and the one it replaces, so that a
            # kill between the two renames leaves a pair that verifies; then the new one alone.
            previous = recorded_digests(path)[:1] if path.exists() else []
            write_atomically(checksum_path(path), _checksum_lines(path, [digest, *previous]))
            write_atomically(path, data)
            write_atomically(checksum_path(path), _checksum_lines(path, [digest]))
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(self._disk_full_message(path)) from None
            raise
        self.saved.pop(path, None)
        self.saved[path] = checkpoint.get("epoch", -1)

    def _disk_full_message(self, path: Path) -> str:
        good = [p for p in self.saved if p != path and p.is_file()]
        if not good:
            last = "no checkpoint of this run was saved before"
        else:
            newest = good[-1]
            last = f"the last good checkpoint is {newest} (epoch {self.saved[newest]}): resume with ckpt_path={newest}"
        return (
            f"the disk is full: checkpoint {path.name} could not be written to {path.parent} (nothing was left "
            f"under its name); {last} once space is freed"
        )

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only: bool | None = None):
        return read_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path) -> None:
        path = Path(path)
        path.unlink(missing_ok=True)
        checksum_path(path).unlink(missing_ok=True)
        self.saved.pop(path, None)


class ResumeAfterFinishedEpoch(L.Callback):
    """Resume a run bounded by max_steps from a checkpoint written at an epoch's end (what a
    killed run leaves as last.ckpt) as the uninterrupted run went on: see
    ``mark_finished_epoch_completed``. (Runs bounded by max_epochs: Lightning does it itself.)"""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.max_steps != -1 and trainer.state.fn == "fit":
            mark_finished_epoch_completed(checkpoint)


def mark_finished_epoch_completed(checkpoint: dict[str, Any]) -> None:
    """Close the epoch that a checkpoint written at an epoch's end (``on_train_epoch_end``: every
    batch and the epoch's end hooks done, only Lightning's "completed" count not yet raised) ends,
    as Lightning's own resume does for a run bounded by max_epochs: the epoch counts as completed
    and the in-epoch counts start again from zero.

    Without this, a run bounded by max_steps (which Lightning always restores as "restarting")
    resumes inside the finished epoch, runs it again with no batches and so starts one epoch
    later (another seed for its sampler: other batches) and one logged step later than the run
    that was never stopped."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs = fit_loop.get("epoch_progress")
    batches = fit_loop.get("epoch_loop.batch_progress") or {}
    if not epochs or not batches.get("is_last_batch"):
        return
    total = epochs["total"]
    if not total["ready"] == total["started"] == total["processed"] == total["completed"] + 1:
        return  # saved anywhere but at an epoch's end: Lightning's restart handles it
    for counts in (epochs["total"], epochs["current"]):
        counts["completed"] = counts["processed"]
    batches["is_last_batch"] = False

    def zero_current(progress: dict) -> None:
        for key, value in progress.items():
            if key == "current":
                progress[key] = {name: 0 for name in value}
            elif isinstance(value, dict):
                zero_current(value)

    for key in ("epoch_loop.batch_progress", "epoch_loop.scheduler_progress",
                "epoch_loop.automatic_optimization.optim_progress",
                "epoch_loop.manual_optimization.optim_step_progress"):
        zero_current(fit_loop.get(key) or {})
    # Lightning's restart of a max_steps run counts one logged step for the restart itself.
    stepped = fit_loop.get("epoch_loop.state_dict") or {}
    if "_batches_that_stepped" in stepped:
        stepped["_batches_that_stepped"] -= 1


def _checksum_lines(path: Path, digests: list[str]) -> bytes:
    return "".join(f"{digest}  {path.name}\n" for digest in digests).encode()
