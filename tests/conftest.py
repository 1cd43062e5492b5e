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
    """In workers, the longest tests first: the trainings on full MNIST (the only tests given
    ``all_threads``), then the other ``slow`` ones, then the rest to fill in. ``--dist worksteal``
    starts each worker on a consecutive slice of this order (every worker collects the same order)
    and lets one that runs out take half of another's remaining queue, from its end. Measured
    without full MNIST on 2 cores: 7 min 52 s and 8 min 1 s in this order; 8 min 35 s with the slow
    tests dealt over both workers' slices instead (their module fixtures then set up on both: 1 min
    20 s more CPU); 8 min 40 s handing out one test at a time (``--dist load --maxschedchunk 1``)."""

    def start_rank(item) -> int:
        if "all_threads" in item.fixturenames:
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    if IN_A_WORKER:
        items.sort(key=start_rank)  # a stable sort: the file order within each rank


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
