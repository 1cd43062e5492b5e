"""Shared fixtures: composed Hydra configs with outputs in tmp_path, isolated data/cache folders,
and small MNIST-format IDX files written by the tests themselves."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.callbacks import Callback
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "conf"
# Read before the autouse fixture below hides it: where full MNIST is, if anywhere.
FULL_MNIST_ROOT = os.environ.get("MANUALBP_DATA")


@pytest.fixture(autouse=True)
def isolated_data_and_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's ~/.cache or $MANUALBP_DATA unless it asks to."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("MANUALBP_DATA", raising=False)
    return cache


def compose_config(overrides: list[str], output_dir: Path):
    """The config ``python train.py <overrides>`` would run, writing into ``output_dir``."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
            HydraConfig().set_config(cfg)
            with open_dict(cfg):
                cfg.paths.output_dir = str(output_dir)
                cfg.paths.log_dir = str(output_dir)
    finally:
        GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def config(tmp_path):
    def make(*overrides: str):
        return compose_config(list(overrides), tmp_path / "run")

    return make


# ----------------------------------------------------------------------------------------------
# Small MNIST-format data
# ----------------------------------------------------------------------------------------------

IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file (unsigned bytes) holding ``array``: magic 0x0000 08 <ndim>, then big-endian
    dimensions, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images of 10 learnable classes: each class a fixed random stroke pattern, plus
    noise and a random shift. Not MNIST, but written and read exactly as MNIST is."""
    prototypes = np.random.default_rng(1234).random((10, 28, 28)) > 0.8
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = np.zeros((count, 28, 28))
    for index, label in enumerate(labels):
        shifted = np.roll(prototypes[label], tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
        images[index] = 200 * shifted + rng.integers(0, 60, size=(28, 28))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_mnist_files(root: Path, dataset: str = "MNIST", train_count: int = 600,
                      test_count: int = 200, gz: bool = False) -> Path:
    """Write the four IDX files of a small MNIST-format dataset into root/<dataset>/raw."""
    raw = root / dataset / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for train, count in ((True, train_count), (False, test_count)):
        images, labels = synthetic_digits(count, seed=int(train))
        for name, array in zip(IDX_FILES[train], (images, labels)):
            data = idx_bytes(array)
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
    return raw


@pytest.fixture
def small_mnist(tmp_path) -> Path:
    """A data root holding a small MNIST (600 train / 200 test images) as unpacked IDX files."""
    root = tmp_path / "data"
    write_mnist_files(root)
    return root


# ----------------------------------------------------------------------------------------------
# Running train.py as a user would
# ----------------------------------------------------------------------------------------------


def run_train_py(*overrides: str, cwd: Path, env: dict | None = None, timeout: float = 600):
    """``python train.py <overrides>`` in a subprocess; returns the CompletedProcess."""
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *overrides],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout,
    )


class LearningRateBlowUp(Callback):
    """Sets every learning rate to 1e38 at the start of ``epoch``: float32 weights overflow, the
    loss turns NaN (for tests of the NaN stop, used as a config ``_target_``)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = 1e38
