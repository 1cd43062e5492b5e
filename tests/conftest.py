"""Shared fixtures: composed Hydra configs with outputs in tmp_path, isolated data/cache folders,
and a small MNIST written by the tests themselves. (Shared helpers: helpers.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import compose_config, write_mnist_files

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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tests on tiny tensors: on a busy machine, waiting for the
    other threads costs more than the work (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
