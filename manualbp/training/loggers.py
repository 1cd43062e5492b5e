"""What the loggers get beyond the scalars Lightning logs: the run's figures, as images, in
TensorBoard (``logger=tensorboard`` or ``logger=many``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from PIL import Image


def log_figures(loggers: Iterable[Logger], figure_paths: Iterable[Path], step: int) -> None:
    """Every saved figure (a PNG) as an image ``figures/<file stem>`` in each TensorBoard logger,
    at training step ``step``."""
    boards = [logger for logger in loggers if isinstance(logger, TensorBoardLogger)]
    if not boards:
        return
    for path in figure_paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
        for board in boards:
            board.experiment.add_image(f"figures/{Path(path).stem}", pixels, step, dataformats="HWC")
    for board in boards:
        board.experiment.flush()
