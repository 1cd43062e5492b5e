"""A run folder belongs to one run at a time, and a new run in it keeps the earlier runs' files.

* ``hold_run_folder(folder)``: an exclusive lock (``fcntl.flock`` on ``folder/.manualbp.lock``)
  held until the process ends. The kernel releases a flock when its process exits, however it
  exits (SIGKILL included), so a crashed run never leaves the folder locked. A second run in the
  folder is refused with ``RunFolderInUseError`` naming the process that holds it.
  ``conf/hydra/default.yaml``'s callback takes it before Hydra writes anything there;
  ``pipeline.train`` takes it too (``run_folder_lock``), for runs started without Hydra.
* ``archive_earlier_run(folder)``: a new run (not a resume of this folder's run) first moves
  the files an earlier run left there into ``folder/history/<n>/`` (n = 1, 2, ...): its
  metrics.csv, results.json, checkpoints, figures, train.log and ``.hydra/`` config (``RUN_FILES``;
  anything else in the folder, such as the user's data or notes, stays where it is), so that each
  ``history/<n>`` is itself a run folder (``python eval.py ckpt_path=RUN/history/1/checkpoints/last.ckpt``).

Both are the job's: under DDP only the first process (global rank 0) takes the lock and moves
files; the others share its folder.

Only the standard library: the Hydra callback runs before torch and Lightning are imported.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from manualbp.errors import ManualbpError

log = logging.getLogger(__name__)

LOCK_NAME = ".manualbp.lock"
HISTORY_NAME = "history"

_held: dict[Path, int] = {}  # folders this process holds -> the lock file's descriptor
_archived: dict[Path, Path] = {}  # folders whose earlier run this process moved -> where to


class RunFolderInUseError(ManualbpError):
    """Another process is running in this run folder."""


# Where launchers put a process's global rank (Lightning's rank_zero_only reads the first four)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK")


def is_first_process() -> bool:
    """This process is the job's global rank 0 (or the only process)."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def _key(folder: str | os.PathLike) -> Path:
    return Path(folder).resolve()


def hold_run_folder(folder: str | os.PathLike, setting: str = "hydra.run.dir") -> bool:
    """Lock ``folder`` (created if needed) for this process until it ends, or raise
    RunFolderInUseError if another process holds it (its message names ``setting``, the option
    that chose the folder). Returns False if this process already held it,
    or is not the job's first process (the first one holds the folder for all)."""
    key = _key(folder)
    if key in _held or not is_first_process():
        return False
    key.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "another process"
        os.close(descriptor)
        raise RunFolderInUseError(
            f"{setting}={folder} is in use by another run (pid {holder}); wait for it to end, or give this run "
            f"its own folder (another {setting}=PATH, or leave {setting} out for a new one)"
        ) from None
    except BaseException:
        os.close(descriptor)
        raise
    os.ftruncate(descriptor, 0)  # the holder's pid, for the message of a run that is refused
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    _held[key] = descriptor
    return True


def release_run_folder(folder: str | os.PathLike) -> None:
    """Release a lock taken by ``hold_run_folder`` in this process (a no-op if none)."""
    _archived.pop(_key(folder), None)
    descriptor = _held.pop(_key(folder), None)
    if descriptor is not None:
        os.close(descriptor)  # closing the only descriptor of the open file releases its flock


@contextlib.contextmanager
def run_folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``folder`` for the ``with`` block; a lock this process held before is left held."""
    taken = hold_run_folder(folder)
    try:
        yield
    finally:
        if taken:
            release_run_folder(folder)


# What a run writes in its folder (results, metrics, checkpoints, figures, logs, Hydra's config);
# anything else there is the user's and stays where it is.
RUN_FILES = ("results.json", "metrics.csv", "hparams.yaml", "checkpoints", "figures", "tensorboard", ".hydra",
             "multirun.yaml")


def is_run_file(name: str) -> bool:
    """``name`` (in a run folder) is one of the files or folders a run writes."""
    return name in RUN_FILES or name.endswith(".log")


def archive_earlier_run(folder: str | os.PathLike, keep: Iterable[str] = ()) -> Path | None:
    """Move the run files (``is_run_file``) in ``folder`` but the names in ``keep`` into a new
    ``folder/history/<n>``; returns that folder, or None when there was nothing to move (or this
    process, holding ``folder``, already archived it: what is there now is this run's)."""
    key = _key(folder)
    if key in _archived or not key.is_dir() or not is_first_process():
        return None
    earlier = sorted(path for path in key.iterdir() if is_run_file(path.name) and path.name not in keep)
    if not earlier:
        return None
    history = key / HISTORY_NAME
    history.mkdir(exist_ok=True)
    numbers = [int(path.name) for path in history.iterdir() if path.name.isdigit()]
    target = history / str(max(numbers, default=0) + 1)
    target.mkdir()
    for path in earlier:
        os.replace(path, target / path.name)
    _archived[key] = target
    return target


def archived_to(folder: str | os.PathLike) -> Path | None:
    """Where this process moved ``folder``'s earlier run (None: nowhere)."""
    return _archived.get(_key(folder))


def is_inside(path: str | os.PathLike | None, folder: str | os.PathLike) -> bool:
    """``path`` lies in ``folder``, not in its history: a checkpoint of the run whose files are
    there (a resume continues that run; a checkpoint of an earlier run starts a new one)."""
    if path is None:
        return False
    parents = _key(path).parents
    return _key(folder) in parents and _key(folder) / HISTORY_NAME not in parents
