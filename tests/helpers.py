"""Helpers the tests share (``from helpers import ...``; fixtures live in conftest.py): composing
configs, small MNIST-format data written by the tests themselves, and running train.py as a user
would."""

from __future__ import annotations

import csv
import gzip
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image, ImageDraw, ImageFont

from manualbp.predict import to_mnist_form
from manualbp.training.config import CONFIG_DIR, PROJECT_ROOT, compose_config
from manualbp.training.data.idx import idx_bytes
from manualbp.training.data.mnist_files import DATA_ENV

__all__ = [
    "CONFIG_DIR", "PROJECT_ROOT", "FULL_MNIST_ROOT", "compose_config", "synthetic_digits",
    "write_mnist_files", "run_train_py", "start_train_py", "wait_until", "wait_for_line", "MNIST_RUN", "metrics_rows",
    "rows_of_epoch", "error_lines", "overwrite_first_weight", "LearningRateBlowUp",
]

# Read at import, before conftest's autouse fixture hides it: where full MNIST is, if anywhere.
FULL_MNIST_ROOT = os.environ.get(DATA_ENV)


# ----------------------------------------------------------------------------------------------
# Small MNIST-format data
# ----------------------------------------------------------------------------------------------

IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


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
        for name, array in zip(IDX_FILES[train], (images, labels), strict=True):
            data = idx_bytes(array)
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
    return raw


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


# A small MNIST run (with conftest's small_mnist as data.root) that logs every step
MNIST_RUN = ["model=mnist", "data.val_size=100", "data.batch_size=50", "seed=3", "trainer.log_every_n_steps=1"]


def start_train_py(*overrides: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """``python train.py`` as a child process, with SIGINT delivered as in a terminal (a shell
    that starts a job in the background makes its children ignore SIGINT)."""
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *overrides], cwd=cwd, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 300,
               process: subprocess.Popen | None = None, poll_s: float = 0.01) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds (killing
    ``process``, whose output then ends the message), or as soon as ``process`` has ended
    without it holding."""
    deadline = time.monotonic() + timeout
    while not condition():
        ended = process is not None and process.poll() is not None
        if ended or time.monotonic() > deadline:
            output = ""
            if process is not None:
                if not ended:
                    process.kill()
                _, stderr = process.communicate()
                output = f"; its stderr ends: {(stderr or '')[-2000:]}"
            reason = f"the process ended (status {process.returncode})" if ended else f"{timeout:.0f} s passed"
            raise AssertionError(f"waited for {what}, but {reason}{output}")
        time.sleep(poll_s)


def wait_for_line(process: subprocess.Popen, prefix: str, timeout: float = 300) -> None:
    """Read ``process``'s stdout until a line starting with ``prefix``; fail the test (killing the
    process) after ``timeout`` seconds, or if the output ends first. What follows is left unread."""
    deadline, pending, descriptor = time.monotonic() + timeout, b"", process.stdout.fileno()
    while True:
        remaining = deadline - time.monotonic()
        ready = select.select([descriptor], [], [], max(remaining, 0))[0] if remaining > 0 else []
        chunk = os.read(descriptor, 65536) if ready else None
        if not chunk:
            if process.poll() is None:
                process.kill()  # timed out, or closed its stdout without ending
            _, stderr = process.communicate()
            reason = "the output ended" if chunk == b"" else f"{timeout:.0f} s passed"
            raise AssertionError(f"waited for a line {prefix!r}, but {reason}; stderr ends: {(stderr or '')[-2000:]}")
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        if any(line.decode(errors="replace").startswith(prefix) for line in lines):
            return


def metrics_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def rows_of_epoch(run: Path, epoch: int) -> bool:
    """metrics.csv in ``run`` has rows of ``epoch`` (False while it does not exist)."""
    try:
        return any(row["epoch"] == str(epoch) for row in metrics_rows(run))
    except (FileNotFoundError, StopIteration, KeyError):
        return False


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def overwrite_first_weight(path: Path) -> None:
    """Overwrite 24 bytes of the checkpoint's first weight matrix inside the file, as a bad disk
    sector or a stray write would: the file still loads, with weights above 1e30."""
    data = bytearray(path.read_bytes())
    state = torch.load(path, weights_only=False)["state_dict"]
    name = next(key for key in state if key.endswith("weight"))
    start = bytes(data).index(state[name].numpy().tobytes()[:24])
    data[start:start + 24] = b"\x7f" * 24
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=False)["state_dict"][name].abs().max() > 1e30


class LearningRateBlowUp(Callback):
    """Sets every learning rate to 1e38 at the start of ``epoch``: float32 weights overflow, the
    loss turns NaN (for tests of the NaN stop, used as a config ``_target_``)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = 1e38


# ----------------------------------------------------------------------------------------------
# Digits drawn with Pillow's built-in font: real digit shapes, made without any data set
# (tests/test_predict.py, tests/test_playground.py)
# ----------------------------------------------------------------------------------------------


def draw_digit(digit: int, canvas=(120, 120), size: int = 80, stroke: int = 3, angle: float = 0.0,
               centre=(0.5, 0.5), ink="black", paper="white", mode: str = "RGB") -> Image.Image:
    """``digit`` drawn with ``ink`` on ``paper`` in an image of ``canvas`` (width, height), its
    glyph ``size`` pixels high, thickened by ``stroke``, turned by ``angle`` degrees, centred at
    ``centre`` (fractions of the canvas)."""
    font = ImageFont.load_default(size=size)
    glyph = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(glyph).text((size, size), str(digit), fill=255, font=font, anchor="mm", stroke_width=stroke,
                               stroke_fill=255)
    glyph = glyph.rotate(angle, resample=Image.Resampling.BILINEAR)
    glyph = glyph.crop(glyph.getbbox())
    image = Image.new(mode, canvas, paper)
    position = (round(centre[0] * canvas[0] - glyph.width / 2), round(centre[1] * canvas[1] - glyph.height / 2))
    image.paste(Image.new(mode, glyph.size, ink), position, mask=glyph)
    return image


def grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64) / 255


def drawn_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` digits drawn in varied sizes, strokes, angles and places, in MNIST's form (uint8)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    images = np.stack([
        to_mnist_form(grey(draw_digit(
            int(label), size=int(rng.integers(40, 90)), stroke=int(rng.integers(1, 6)),
            angle=float(rng.uniform(-12, 12)), centre=tuple(rng.uniform(0.35, 0.65, size=2)),
        )))
        for label in labels
    ])
    return np.round(images * 255).astype(np.uint8), labels.astype(np.uint8)
