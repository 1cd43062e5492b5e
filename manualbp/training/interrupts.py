"""SIGINT (Ctrl+C) and SIGTERM (``kill``, schedulers) stop a run with a non-zero exit status and
one line that says how to resume it.

``stop_on_signals`` installs one handler for both signals for the whole of ``train()``: it
records the signal and raises KeyboardInterrupt where the program is, so that Lightning's own
shutdown runs during fit (it catches KeyboardInterrupt; its SIGTERM handler only sets a flag
that the loop reads at the next batch, and ends the process with status 0). ``train()`` checks the
record after each stage, so a signal is never lost, even if a library swallowed the
KeyboardInterrupt, and turns it into ``RunInterrupted``. Checkpoints are written atomically
(``checkpoints.py``), so last.ckpt is whole whenever the signal comes.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from manualbp.errors import ManualbpError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(ManualbpError):
    """The run was stopped by a signal; ``exit_code`` is 128 + the signal's number, as a shell
    reports a process killed by it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class SignalRecord:
    """Which signal arrived first, if any, while ``stop_on_signals`` was active."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handler(self, signum, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if first or signum == signal.SIGINT:  # Ctrl+C again: stop at once
            raise KeyboardInterrupt


@contextmanager
def stop_on_signals():
    """Within the block, SIGINT and SIGTERM are recorded and raise KeyboardInterrupt (see the
    module's doc). Outside the main thread, where handlers cannot be installed, it does nothing."""
    record = SignalRecord()
    if threading.current_thread() is not threading.main_thread():
        yield record
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, record.handler)
    try:
        yield record
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def resume_command(checkpoint: str, output_dir: Path) -> str:
    """The command that resumes this run from ``checkpoint`` in its own folder: the run's own
    command-line overrides (when run by Hydra) with ckpt_path and hydra.run.dir set."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # not run by Hydra (train() from a script): no overrides to repeat
        overrides = []
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "hydra.run.dir")]
    return " ".join(["python train.py", *kept, f"ckpt_path={checkpoint}", f"hydra.run.dir={output_dir}"])


def interrupted(signum: int, stage: str, last_checkpoint: str | None, output_dir: Path) -> RunInterrupted:
    """The one-line error for a run stopped by ``signum`` during ``stage``."""
    name = signal.Signals(signum).name
    if last_checkpoint:
        advice = f"resume it from its last checkpoint with: {resume_command(last_checkpoint, output_dir)}"
    else:
        advice = "no checkpoint was saved yet: start it again"
    return RunInterrupted(f"stopped by {name} while {stage}; {advice}", signum)
