"""Batches gathered from tensors in memory by indexing, one gather per batch.

The lecture's advice -- "if loading the whole training data, do it once outside the loop" --
taken literally: each split is one tensor in memory, and a batch is ``images[indices]``, with no
per-sample Python and no worker processes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from manualbp.errors import ConfigError


class IndexBatchSampler(Sampler[Tensor]):
    """Batches of indices (LongTensors, or slices when in order) into in-memory tensors; use with
    ``DataLoader(IndexedTensors(...), sampler=..., batch_size=None)`` (see ``index_loader``).

    Epoch e visits the samples in the order ``randperm(generator=seed + e)`` (or in order, if
    ``shuffle=False``), so a run resumed at epoch e sees exactly the batches it would have seen.
    Lightning calls ``set_epoch``. Under DDP each process takes every ``world_size``-th sample
    of the order. With ``equal_shares`` (training) the order is first padded with its own start
    to a multiple of ``world_size``, as torch's DistributedSampler pads: every process runs the
    same number of steps and every sample is trained on, a few of them twice an epoch. Without
    (evaluation) each sample is seen once, in shares that differ by at most one, so metrics are
    exact; only with fewer samples than processes is the order padded, so that no process is
    left without a batch (those few samples count twice). ``repeats`` visits the (shared)
    order that many times an epoch.
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
                padded_size = math.ceil(self.num_samples / world_size) * world_size
            else:
                padded_size = max(self.num_samples, world_size)
            if padded_size > self.num_samples > 0:  # repeat the order from its start, as often as needed
                order = order.repeat(math.ceil(padded_size / self.num_samples))[:padded_size]
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
