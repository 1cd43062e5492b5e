"""What ``python train.py`` prints, once each: manualbp's own lines (a header, the data, progress,
a closing summary), warnings and errors. Everything else that logs (Lightning's device report,
restores, model summary, ...) goes to the run's train.log only, which keeps the full log.

conf/hydra/default.yaml wires these into Hydra: ``ConsoleFilter`` on the console handler and
``RunFolderCheck`` as a Hydra callback; ``train.py`` calls ``use_hydra_logging`` once Lightning is
imported.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from manualbp.training.run_folder import RunFolderInUseError, archive_earlier_run, hold_run_folder, is_inside


class ConsoleFilter(logging.Filter):
    """The console shows manualbp's INFO lines and everyone's warnings and errors, but not a line
    logged with ``extra={"console": False}`` (printed another way, e.g. through the progress bar)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "console", True):
            return False
        return record.levelno >= logging.WARNING or record.name.split(".")[0] == "manualbp"


def use_hydra_logging() -> None:
    """Lightning's loggers print through Hydra's handlers only (console filtered, train.log in
    full): without this, every Lightning message is printed twice, by its own stderr handler and
    by Hydra's. Python warnings are logged too, as one line each."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"{category.__name__}: {message}"
    logging.captureWarnings(True)
    logging.raiseExceptions = False  # a full disk must not turn each log line into a traceback


def check_writable_folder(folder: str, key: str) -> None:
    """Create ``folder`` and write a file in it, or end the program with one line."""
    path = Path(folder)
    probe = path / ".manualbp-write-test"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        where = f" ({error.filename})" if error.filename and str(error.filename) != folder else ""
        print(
            f"error: {key}={folder} cannot hold the run's files: {error.strerror}{where}; give a folder "
            f"you can write to ({key}=PATH), or run train.py from one (outputs go to ./outputs)",
            file=sys.stderr,
        )
        sys.exit(1)


def hold_folder_or_exit(folder: str, key: str) -> None:
    """Lock ``folder`` for this process's life (``run_folder.hold_run_folder``), or end the
    program with one line if another run holds it."""
    try:
        hold_run_folder(folder, key)
    except RunFolderInUseError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


class RunFolderCheck(Callback):
    """Hydra callback, before Hydra writes its files in the run (or sweep) folder: the folder can
    be created and written (a read-only or impossible folder is one line, not Hydra's traceback),
    no other run is using it (it is locked for this run's life), and an earlier run's files in it
    move to ``history/<n>`` (unless this run resumes from one of its checkpoints)."""

    def on_run_start(self, config, **kwargs) -> None:
        folder = str(config.hydra.run.dir)
        check_writable_folder(folder, "hydra.run.dir")
        hold_folder_or_exit(folder, "hydra.run.dir")
        if not is_inside(OmegaConf.select(config, "ckpt_path", default=None, throw_on_missing=False), folder):
            archive_earlier_run(folder)

    def on_multirun_start(self, config, **kwargs) -> None:
        check_writable_folder(str(config.hydra.sweep.dir), "hydra.sweep.dir")
        hold_folder_or_exit(str(config.hydra.sweep.dir), "hydra.sweep.dir")
