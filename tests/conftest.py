"""Shared fixtures: composed Hydra configs with outputs in tmp_path, isolated data/cache folders,
and a small MNIST written by the tests themselves. (Shared helpers: helpers.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import compose_config, drawn_digits, write_mnist_files

from manualbp.training.data.mnist_files import DATA_ENV


@pytest.fixture(autouse=True)
def isolated_data_and_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's ~/.cache or $MANUALBP_DATA unless it asks to."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv(DATA_ENV, raising=False)
    return cache


@pytest.fixture
def config(tmp_path):
    """``config(*overrides)``: the config ``python train.py <overrides>`` runs, writing into
    tmp_path/run."""

    def make(*overrides: str):
        return compose_config(list(overrides), tmp_path / "run")

    return make


@pytest.fixture
def small_mnist(tmp_path) -> Path:
    """A data root holding a small MNIST (600 train / 200 test images) as unpacked IDX files."""
    root = tmp_path / "data"
    write_mnist_files(root)
    return root


# `python -m pytest -n auto` (pytest-xdist): one worker process per core, each on one thread
IN_A_WORKER = "PYTEST_XDIST_WORKER" in os.environ


def pytest_configure(config):
    """In a worker, the subprocesses it starts (train.py, notebook kernels, torchrun) use one thread
    too: the other cores run the other workers."""
    if IN_A_WORKER:
        os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    """In workers, the long tests dealt over the workers' first slices and run first. ``--dist
    worksteal`` starts worker k on the k-th of equal consecutive slices of this order (each worker
    collects the same order), then lets a worker that runs out take half of another's remaining
    queue, from its end. Left in file order, every slow test would start in one slice and the last
    ones could run alone while the other cores idle. Long: the trainings on full MNIST (the only
    tests given ``all_threads``), then the other ``slow`` ones."""
    if not IN_A_WORKER:
        return
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    ranked = sorted(items, key=lambda item: 0 if "all_threads" in item.fixturenames else 1)  # stable
    long_ones = [item for item in ranked if item.get_closest_marker("slow")]
    others = iter([item for item in ranked if not item.get_closest_marker("slow")])
    order, left = [], len(items)
    for worker in range(workers):
        size = left // (workers - worker)  # the slice worksteal hands this worker first
        left -= size
        share = long_ones[worker::workers]
        if len(share) > size:  # (almost) only long tests selected: nothing to balance
            return
        order += share + [next(others) for _ in range(size - len(share))]
    items[:] = order


@pytest.fixture(scope="session", autouse=True)
def one_thread_by_default():
    """One torch thread for every test unless it asks for all (``all_threads``): the tests' tensors
    are small, and on a busy machine a parallel region waits for a thread the scheduler has put
    aside (measured: a LeNet float64 backward on 128 images took 0.07 to 4 s with 2 threads on 2
    shared cores). Subprocesses (train.py, notebook kernels) keep torch's default."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield threads
    torch.set_num_threads(threads)


@pytest.fixture
def all_threads(one_thread_by_default):
    """Torch's default thread count for this test: long training on full MNIST (one thread in a
    worker of ``-n auto``, where the other cores run the other workers)."""
    torch.set_num_threads(1 if IN_A_WORKER else one_thread_by_default)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digit_checkpoint(tmp_path_factory) -> Path:
    """The last checkpoint of a small net trained (train()) on 1,000 digits drawn with Pillow's font
    (real digit shapes, no data set) in MNIST's IDX format: for predict and the playground's Draw
    a digit. Trained once per session."""
    from manualbp.training import train
    from manualbp.training.data.idx import idx_bytes

    root = tmp_path_factory.mktemp("drawn")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count, seed in (("train", 1000, 0), ("t10k", 200, 1)):
        images, labels = drawn_digits(count, seed)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    results = train(compose_config([
        "model=mnist", f"data.root={root}", "data.val_size=100", "data.batch_size=50", "trainer.max_epochs=8",
        "model.net.sizes=[784,64,10]", "model.optimizer.lr=0.01", "figures=false",
    ], root / "run"))
    assert results["test/acc"] > 0.95, results["test/acc"]
    return Path(results["last_checkpoint"])
