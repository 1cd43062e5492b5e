"""What the speed benchmarks and the lecture's sweeps share: running ``python train.py`` configs
quietly in-process, and the full-MNIST data root when there is one."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import lightning as L
import torch

from manualbp.training import train
from manualbp.training.config import compose_config
from manualbp.training.data.mnist_files import DATA_ENV


def quiet_train(overrides: list[str], output_dir: Path, extra_callbacks: list[L.Callback] = ()) -> dict:
    """``python train.py <overrides>`` in this process, writing into ``output_dir``, with no
    figures, no progress output and no model summary, on the torch threads the benchmark set (not
    ``trainer.threads=auto``'s choice); returns its results."""
    cfg = compose_config(
        overrides + ["figures=false", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
                     "trainer.enable_model_summary=false", f"trainer.threads={torch.get_num_threads()}"],
        output_dir,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        return train(cfg, extra_callbacks=extra_callbacks)


def full_mnist_root() -> Path | None:
    """``$MANUALBP_DATA`` if it is set (a folder whose MNIST/raw should hold full MNIST)."""
    return Path(os.environ[DATA_ENV]).expanduser() if os.environ.get(DATA_ENV) else None
