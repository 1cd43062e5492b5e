"""A run's metrics.csv that a resume continues instead of deleting.

Lightning's CSVLogger deletes the metrics.csv it finds in a non-empty log folder, so resuming a
run in its own folder (the README's recipe) lost every epoch before the interruption.
``ResumableCSVLogger`` keeps it: on resume (``continue_from``), the rows up to the checkpoint are
kept and the rest (what the interrupted run logged after its last checkpoint, which the resumed
run logs again) is dropped. (A new run in a folder that has an earlier run's metrics.csv finds it
gone: ``pipeline.train`` moves the earlier run's files to ``history/<n>`` first, see
``run_folder``.)
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from manualbp.training.checkpoints import write_atomically

log = logging.getLogger(__name__)


def keep_rows_until(metrics_file: Path, epoch: int, step: int) -> int:
    """Rewrite ``metrics_file`` (atomically) with only the rows logged up to a checkpoint taken
    in ``epoch`` at global step ``step``: epoch <= ``epoch`` and step < ``step``. Returns how many
    rows were kept."""
    with open(metrics_file, newline="") as file:
        reader = csv.DictReader(file)
        header = reader.fieldnames or []
        rows = [row for row in reader if _number(row.get("epoch")) <= epoch and _number(row.get("step")) < step]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(metrics_file, text.getvalue().encode())
    return len(rows)


def _number(value: str | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")  # a row without epoch/step is not part of a checkpointed history


class ContinuedExperimentWriter(ExperimentWriter):
    """Lightning's writer, except that an existing metrics.csv is appended to (its columns
    kept), never deleted."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv survives a resume in the same folder (see the module's doc)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._continue_from: tuple[int, int] | None = None

    @property
    def metrics_file(self) -> Path:
        return Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE

    def continue_from(self, epoch: int, step: int) -> None:
        """The run resumes from a checkpoint of ``epoch`` at global step ``step``: keep the rows
        logged up to it. (Call before the first metric is logged.)"""
        self._continue_from = (epoch, step)

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuedExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        if self.metrics_file.is_file() and self._continue_from is not None:
            kept = keep_rows_until(self.metrics_file, *self._continue_from)
            log.info("continuing %s: %d rows up to epoch %d kept", self.metrics_file, kept, self._continue_from[0])
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = ContinuedExperimentWriter(log_dir=self.log_dir)
        return self._experiment
