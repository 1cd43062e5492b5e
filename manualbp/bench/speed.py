"""Benchmarks: manualbp against PyTorch's built-in layers, measured side by side in one run.

    python -m manualbp.bench                 # one training step, manualbp vs torch.nn, 4 batch sizes
    python -m manualbp.bench --json          # the same as one JSON object
    python -m manualbp.bench --e2e           # one epoch of python train.py model=mnist vs the
                                             # typical Lightning + torchvision DataLoader pipeline
    python -m manualbp.bench --time-to-98    # training time to 98% test accuracy (full MNIST)
    python -m manualbp.bench --xor-seeds 100 # the default XOR config over seeds 0..99
    python -m manualbp.bench --approx        # universal approximation: error against hidden width
    python -m manualbp.bench --softmax-losses curves.png  # softmax + cross-entropy vs + L2 loss

This machine (and most) is shared and noisy: every figure here is a ratio or a median of
interleaved rounds (A B A B ...), never an absolute time compared across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf

from manualbp.reference import to_torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "conf"
BATCH_SIZES = (64, 128, 512, 1024)


# ----------------------------------------------------------------------------------------------
# One training step
# ----------------------------------------------------------------------------------------------


def default_mnist_model():
    """(net, loss, optimizer factory) exactly as conf/model/mnist.yaml builds them."""
    from manualbp.training import build, build_loss

    model = OmegaConf.load(CONFIG_DIR / "model" / "mnist.yaml").model
    return build(model.net), build_loss(model.loss), build(model.optimizer)


def step_function(net, loss, make_optimizer, inputs, targets):
    """One training step: zero the gradients, forward, loss, backward, optimizer step."""
    optimizer = make_optimizer(net.parameters())

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss(net(inputs), targets).backward()
        optimizer.step()

    return step


def saved_activation_bytes(net, loss, inputs, targets) -> int:
    """Bytes that autograd keeps for backward in one forward pass: every tensor handed to
    ``saved_tensors_hooks``, each storage counted once, parameters (kept anyway) excluded."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in net.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss(net(inputs), targets)
    return sum(storages.values())


def flops_per_step(net, batch_size: int) -> int:
    """Matmul FLOPs of one step: forward X Wᵀ, backward δW = δZᵀX for every layer and
    δX = δZ W for every layer but the first (the data needs no gradient)."""
    sizes = [m.in_features * m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)]
    return 2 * batch_size * (2 * sum(sizes) + sum(sizes[1:]))


def sgemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The best of a few float32 size x size matmuls, in GFLOP/s: this machine's practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_seconds(lambda: a @ b, 1) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _seconds(function, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        function()
    return (time.perf_counter() - started) / count


def interleaved_medians(functions: dict, rounds: int, round_seconds: float = 0.25) -> dict[str, float]:
    """Median seconds per call of each function over ``rounds`` interleaved rounds (A B A B ...),
    after a warm-up; each round runs a function for about ``round_seconds``."""
    for function in functions.values():  # warm-up, and a calibration of calls per round
        _seconds(function, 3)
    counts = {name: max(3, int(round_seconds / _seconds(f, 3))) for name, f in functions.items()}
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            times[name].append(_seconds(function, counts[name]))
    return {name: statistics.median(values) for name, values in times.items()}


def bench_steps(batch_sizes=BATCH_SIZES, rounds: int = 7, seed: int = 0) -> dict:
    """manualbp's default MNIST model against the same net of torch.nn built-ins, same weights."""
    torch.manual_seed(seed)
    manual_net, manual_loss, make_optimizer = default_mnist_model()
    native_net, native_loss = to_torch(manual_net), to_torch(manual_loss)
    peak = sgemm_gflops()
    steps = {}
    for batch_size in batch_sizes:
        inputs = torch.randn(batch_size, 784)
        targets = torch.randint(0, 10, (batch_size,))
        # Each side trains its own copy: equal weights at the start, comparable steps after.
        manual = copy.deepcopy(manual_net)
        native = copy.deepcopy(native_net)
        medians = interleaved_medians(
            {
                "manual": step_function(manual, manual_loss, make_optimizer, inputs, targets),
                "native": step_function(native, native_loss, make_optimizer, inputs, targets),
            },
            rounds,
        )
        flops = flops_per_step(manual_net, batch_size)
        steps[str(batch_size)] = {
            "manual_us": medians["manual"] * 1e6,
            "native_us": medians["native"] * 1e6,
            "ratio": medians["manual"] / medians["native"],
            "manual_saved_bytes": saved_activation_bytes(manual, manual_loss, inputs, targets),
            "native_saved_bytes": saved_activation_bytes(native, native_loss, inputs, targets),
            "manual_gflops": flops / medians["manual"] / 1e9,
            "native_gflops": flops / medians["native"] / 1e9,
        }
    return {
        "steps": steps,
        "sgemm_gflops": peak,
        "rounds": rounds,
        "model": "conf/model/mnist.yaml: MLP 784-512-256-10 (ReLU), softmax cross-entropy",
        "optimizer": type(make_optimizer([torch.nn.Parameter(torch.zeros(1))])).__name__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def print_steps(report: dict) -> None:
    print(f"One training step of {report['model']}, optimizer {report['optimizer']}")
    print(f"torch {report['torch']}, {report['threads']} threads, median of {report['rounds']} interleaved rounds")
    print(f"sgemm peak on this machine: {report['sgemm_gflops']:.0f} GFLOP/s\n")
    print("| batch | manualbp µs | torch.nn µs | manualbp / torch.nn | saved bytes manualbp | saved bytes torch.nn | manualbp GFLOP/s (% of sgemm) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch, row in report["steps"].items():
        share = 100 * row["manual_gflops"] / report["sgemm_gflops"]
        print(
            f"| {batch} | {row['manual_us']:,.0f} | {row['native_us']:,.0f} | {row['ratio']:.3f} | "
            f"{row['manual_saved_bytes']:,} | {row['native_saved_bytes']:,} | "
            f"{row['manual_gflops']:.0f} ({share:.0f}%) |"
        )


# ----------------------------------------------------------------------------------------------
# End to end: python train.py model=mnist against the typical pipeline
# ----------------------------------------------------------------------------------------------


def compose(overrides: list[str], output_dir: Path):
    """The config ``python train.py <overrides>`` runs, writing into ``output_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = str(output_dir)
    return cfg


def _quiet_train(overrides: list[str], output_dir: Path) -> dict:
    from manualbp.training import train

    cfg = compose(
        overrides + ["figures=false", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
                     "trainer.enable_model_summary=false"],
        output_dir,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        return train(cfg)


def mnist_root(scratch: Path) -> tuple[Path, str]:
    """(root, description): full MNIST from $MANUALBP_DATA, else random images of MNIST's sizes."""
    from manualbp.data import MNISTDataModule, find_unpacked_root

    if os.environ.get("MANUALBP_DATA"):
        root = Path(os.environ["MANUALBP_DATA"]).expanduser()
        data = MNISTDataModule(root=str(root), download=False)
        data.prepare_data()
        files_root = find_unpacked_root(data.dataset_class, root, data.cache_dir)
        if files_root is not None:
            return files_root, f"full MNIST from {root}"
    raw = scratch / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for prefix, count in (("train", 60000), ("t10k", 10000)):
        images = generator.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = generator.integers(0, 10, size=count, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + np.array([count, 28, 28], ">u4").tobytes() + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + np.array([count], ">u4").tobytes() + labels.tobytes())
    return scratch, "random images of MNIST's sizes ($MANUALBP_DATA has no MNIST: speed only, no accuracy)"


def typical_pipeline_samples_per_s(root: Path, batch_size: int, num_workers: int) -> float:
    """One epoch of the usual way: torch.nn MLP, F.cross_entropy, torchvision MNIST with
    ToTensor + Normalize, a shuffling DataLoader with worker processes, Lightning's Trainer."""
    import lightning as L
    import torchvision
    from torch.utils.data import DataLoader

    _, _, make_optimizer = default_mnist_model()

    class TypicalMNISTModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(),
                torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10),
            )

        def training_step(self, batch, batch_idx):
            images, labels = batch
            loss = torch.nn.functional.cross_entropy(self.net(images), labels)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return make_optimizer(self.parameters())

    transform = torchvision.transforms.Compose(
        [torchvision.transforms.ToTensor(), torchvision.transforms.Normalize((0.1307,), (0.3081,))]
    )
    dataset = torchvision.datasets.MNIST(str(root), train=True, transform=transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0)
    class TrainingLoopClock(L.Callback):  # the same window as manualbp's train/samples_per_s
        def on_train_start(self, trainer, pl_module):
            self.started = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.seconds = time.perf_counter() - self.started

    clock = TrainingLoopClock()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, callbacks=[clock],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TypicalMNISTModule(), loader)
    return len(dataset) / clock.seconds


def bench_e2e(num_workers: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        root, data = mnist_root(scratch / "data")
        manual = _quiet_train(["model=mnist", "trainer.max_epochs=1", f"data.root={root}"], scratch / "run")
        batch_size = OmegaConf.load(CONFIG_DIR / "data" / "mnist.yaml").batch_size
        typical = typical_pipeline_samples_per_s(root, batch_size, num_workers)
    return {
        "data": data,
        "batch_size": batch_size,
        "manualbp_samples_per_s": manual["train/samples_per_s"],
        "typical_samples_per_s": typical,
        "ratio": manual["train/samples_per_s"] / typical,
        "typical_pipeline": f"torch.nn MLP + torchvision MNIST(ToTensor, Normalize) + DataLoader(shuffle, num_workers={num_workers}) + Lightning",
    }


# ----------------------------------------------------------------------------------------------
# Time to 98% test accuracy
# ----------------------------------------------------------------------------------------------


class TestAccuracyClock(L.Callback):
    """After every training epoch, the test accuracy of the current weights and the training
    time so far (wall time since the training loop started, minus the time spent here)."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self._started, self._excluded = time.perf_counter(), 0.0

    @torch.no_grad()
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        measuring = time.perf_counter()
        inputs, targets = trainer.datamodule.splits["test"]
        predictions = torch.cat([pl_module.net(chunk).argmax(1) for chunk in inputs.split(5000)])
        accuracy = (predictions == targets).float().mean().item()
        self.epochs.append({"epoch": trainer.current_epoch + 1, "test/acc": accuracy,
                            "train_time_s": measuring - self._started - self._excluded})
        self._excluded += time.perf_counter() - measuring


def bench_time_to_98() -> dict:
    """Train the default MNIST config (full MNIST from $MANUALBP_DATA) and report when the test
    accuracy first reaches 98%."""
    if not os.environ.get("MANUALBP_DATA"):
        raise SystemExit("--time-to-98 needs full MNIST: set MANUALBP_DATA to a folder whose MNIST/raw has it")
    clock = TestAccuracyClock()
    with tempfile.TemporaryDirectory() as scratch:
        from manualbp import training

        cfg = compose(["model=mnist", "figures=false", "callbacks.progress_bar=null",
                       "+trainer.enable_progress_bar=false"], Path(scratch))
        with contextlib.redirect_stdout(io.StringIO()):
            results = training.train(cfg, extra_callbacks=[clock])
    reached = next((epoch for epoch in clock.epochs if epoch["test/acc"] >= 0.98), None)
    return {"data": results["data"], "epochs": clock.epochs, "reached_98": reached,
            "final_test_acc": results["test/acc"], "train/samples_per_s": results["train/samples_per_s"]}


# ----------------------------------------------------------------------------------------------
# Softmax with cross-entropy or with the L2 loss
# ----------------------------------------------------------------------------------------------


def bench_softmax_losses(out: Path, overrides: list[str] = ()) -> dict:
    """The default MNIST config trained twice from the same seed, once with softmax
    cross-entropy and once with softmax + L2 (Euclidean) loss; learning curves to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from manualbp.figures import read_metrics_csv

    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for loss in ("softmax_cross_entropy", "softmax_euclidean"):
            run_dir = Path(scratch) / loss
            results = _quiet_train(["model=mnist", f"model.loss={loss}", *overrides], run_dir)
            metrics = read_metrics_csv(run_dir / "metrics.csv")
            runs[loss] = {"results": results, "val/acc": metrics["val/acc"], "train/loss": metrics["train/loss_step"]}
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for loss, run in runs.items():
        steps, values = zip(*run["train/loss"])
        loss_axes.plot(steps, values, label=loss, linewidth=1)
        steps, values = zip(*run["val/acc"])
        accuracy_axes.plot(steps, values, marker="o", label=f"{loss} (test {run['results']['test/acc']:.4f})")
    loss_axes.set_yscale("log")
    loss_axes.set_title("training loss (each its own scale)")
    accuracy_axes.set_title("validation accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.set_xlabel("training step")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return {
        "figure": str(out),
        "data": runs["softmax_cross_entropy"]["results"]["data"],
        **{loss: {"test/acc": run["results"]["test/acc"],
                  "val/acc_per_epoch": [round(v, 4) for _, v in run["val/acc"]]} for loss, run in runs.items()},
    }


# ----------------------------------------------------------------------------------------------
# Universal approximation: error against hidden width
# ----------------------------------------------------------------------------------------------


def bench_approx(functions=("sin", "abs", "step"), widths=(1, 2, 4, 8, 16, 32), seeds=(0, 1)) -> dict:
    """The default approx config (python train.py model=approx) per function, width and seed:
    RMSE and max |net − f| on the evaluation grid."""
    table = {}
    with tempfile.TemporaryDirectory() as scratch:
        for function in functions:
            for width in widths:
                runs = [
                    _quiet_train(["model=approx", f"data.function={function}", f"model.width={width}", f"seed={seed}"],
                                 Path(scratch) / f"{function}-{width}-{seed}")
                    for seed in seeds
                ]
                table[f"{function}/{width}"] = {
                    "rmse_median": statistics.median(run["approx/rmse"] for run in runs),
                    "rmse_best": min(run["approx/rmse"] for run in runs),
                    "max_abs_err_median": statistics.median(run["approx/max_abs_err"] for run in runs),
                }
    return {"seeds": list(seeds), "table": table}


def print_approx(report: dict) -> None:
    functions = list(dict.fromkeys(key.split("/")[0] for key in report["table"]))
    widths = list(dict.fromkeys(int(key.split("/")[1]) for key in report["table"]))
    print(f"RMSE of the fit on [-6, 6] (median over seeds {report['seeds']}; best in brackets)\n")
    print("| hidden width | " + " | ".join(functions) + " |")
    print("|---:|" + "---:|" * len(functions))
    for width in widths:
        cells = [report["table"][f"{function}/{width}"] for function in functions]
        print(f"| {width} | " + " | ".join(f"{c['rmse_median']:.4f} ({c['rmse_best']:.4f})" for c in cells) + " |")


# ----------------------------------------------------------------------------------------------
# XOR over seeds
# ----------------------------------------------------------------------------------------------


def bench_xor_seeds(count: int) -> dict:
    """The default XOR config for seeds 0..count-1: how many get all four points right."""
    per_seed = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(count):
            results = _quiet_train(["model=xor", f"seed={seed}"], Path(scratch) / str(seed))
            # test/loss = ½ Σ (yp − y)² over the 4 points, so every |yp − y| ≤ sqrt(2·loss).
            per_seed.append({"seed": seed, "test/acc": results["test/acc"], "test/loss": results["test/loss"],
                             "fit_time_s": results["fit_time_s"]})
    solved = sum(run["test/acc"] == 1.0 for run in per_seed)
    worst = max(per_seed, key=lambda run: run["test/loss"])
    return {
        "seeds": count,
        "all_four_right": solved,
        "worst_seed": worst["seed"],
        "worst_max_abs_error": float(np.sqrt(2 * worst["test/loss"])),
        "median_fit_time_s": statistics.median(run["fit_time_s"] for run in per_seed),
        "runs": per_seed,
    }


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m manualbp.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per batch size (>= 5)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--e2e", action="store_true", help="one epoch end to end vs the typical pipeline")
    parser.add_argument("--xor-seeds", type=int, metavar="N", help="the default XOR config over seeds 0..N-1")
    parser.add_argument("--approx", action="store_true", help="universal approximation: error against width")
    parser.add_argument("--time-to-98", action="store_true", help="training time to 98%% test accuracy (full MNIST)")
    parser.add_argument("--softmax-losses", type=Path, metavar="PNG",
                        help="train MNIST with softmax cross-entropy and with softmax + L2, plot both")
    parser.add_argument("overrides", nargs="*", help="config overrides for --softmax-losses runs, "
                        "e.g. model.optimizer._target_=torch.optim.SGD")
    args = parser.parse_args(argv)
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("manualbp").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")

    if args.xor_seeds:
        report = bench_xor_seeds(args.xor_seeds)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"default XOR config, seeds 0..{report['seeds'] - 1}: all four points right for "
                  f"{report['all_four_right']} of {report['seeds']}; worst seed {report['worst_seed']} "
                  f"has max |Yp - Y| <= {report['worst_max_abs_error']:.3f}; median fit "
                  f"{report['median_fit_time_s']:.2f} s")
        return
    if args.approx:
        report = bench_approx()
        print(json.dumps(report, indent=2)) if args.json else print_approx(report)
        return
    if args.softmax_losses:
        report = bench_softmax_losses(args.softmax_losses, args.overrides)
        print(json.dumps(report, indent=2))
        return
    if args.time_to_98:
        report = bench_time_to_98()
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            for epoch in report["epochs"]:
                print(f"epoch {epoch['epoch']:2d}  {epoch['train_time_s']:6.1f} s  test/acc {epoch['test/acc']:.4f}")
            reached = report["reached_98"]
            print("98% test accuracy " + (f"after epoch {reached['epoch']}, {reached['train_time_s']:.1f} s of training" if reached else "not reached"))
        return
    if args.e2e:
        report = bench_e2e()
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"one epoch of MNIST training, batch {report['batch_size']}, data: {report['data']}")
            print(f"  python train.py model=mnist : {report['manualbp_samples_per_s']:,.0f} samples/s")
            print(f"  typical pipeline            : {report['typical_samples_per_s']:,.0f} samples/s ({report['typical_pipeline']})")
            print(f"  ratio                       : {report['ratio']:.2f}x")
        return
    report = bench_steps(args.batch_sizes, args.rounds)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_steps(report)


if __name__ == "__main__":
    sys.exit(main())
