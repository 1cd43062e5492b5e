"""The lecture's sweeps over the training configs: XOR over many seeds, the approximation error
against the hidden width, and softmax with cross-entropy against softmax with the L2 loss."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from manualbp.bench.common import quiet_train
from manualbp.training.figures import read_metrics_csv  # also sets matplotlib's Agg backend

# ----------------------------------------------------------------------------------------------
# Softmax with cross-entropy or with the L2 loss
# ----------------------------------------------------------------------------------------------


def bench_softmax_losses(out: Path, overrides: list[str] = ()) -> dict:
    """The default MNIST config trained twice from the same seed, once with softmax
    cross-entropy and once with softmax + L2 (Euclidean) loss; learning curves to ``out``."""
    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for loss in ("softmax_cross_entropy", "softmax_euclidean"):
            run_dir = Path(scratch) / loss
            results = quiet_train(["model=mnist", f"model.loss={loss}", *overrides], run_dir)
            metrics = read_metrics_csv(run_dir / "metrics.csv")
            runs[loss] = {"results": results, "val/acc": metrics["val/acc"], "train/loss": metrics["train/loss_step"]}
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for loss, run in runs.items():
        steps, values = zip(*run["train/loss"], strict=True)
        loss_axes.plot(steps, values, label=loss, linewidth=1)
        steps, values = zip(*run["val/acc"], strict=True)
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
                    quiet_train(["model=approx", f"data.function={function}", f"model.width={width}", f"seed={seed}"],
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
            results = quiet_train(["model=xor", f"seed={seed}"], Path(scratch) / str(seed))
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

