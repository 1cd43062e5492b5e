"""Figures a person would rather look at than read: learning curves, XOR's decision boundary,
MNIST's confusion matrix, misclassified digits and first-layer weights (matplotlib, Agg)."""

from __future__ import annotations

import csv
import math
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchmetrics.classification import MulticlassConfusionMatrix  # noqa: E402


def read_metrics_csv(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Lightning's metrics.csv as {metric: [(step, value), ...]}, empty cells skipped: the rows of
    the training, up to its last ``train/`` row. The evaluation after it (the test and the best
    checkpoint's validation, logged at the last step) is left out, so that a curve does not end on
    a repeat of an earlier epoch's point."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    training_rows = [index for index, row in enumerate(rows)
                     if any(key.startswith("train/") and value not in ("", None) for key, value in row.items())]
    if training_rows:
        rows = rows[: training_rows[-1] + 1]
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "epoch") and value not in ("", None):
                series[key].append((float(row["step"]), float(value)))
    return dict(series)


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_learning_curves(metrics: dict[str, list[tuple[float, float]]], out_dir: Path) -> list[Path]:
    """loss.png (train per step and per epoch, validation per epoch) and accuracy.png. The per-step
    training loss is drawn only where it has more points than the per-epoch one (a run of few steps
    logs it too seldom to add anything: lower ``trainer.log_every_n_steps`` to see it)."""
    saved = []
    if len(metrics.get("train/loss_step", [])) <= len(metrics.get("train/loss", [])):
        metrics = {key: points for key, points in metrics.items() if key != "train/loss_step"}
    for name, keys, ylabel in (
        ("loss.png", ["train/loss_step", "train/loss", "val/loss"], "loss"),
        ("accuracy.png", ["val/acc"], "accuracy"),
    ):
        present = [key for key in keys if metrics.get(key)]
        if not present:
            continue
        figure, axes = plt.subplots(figsize=(6, 4))
        for key in present:
            steps, values = zip(*metrics[key], strict=True)
            style = {"alpha": 0.4, "linewidth": 0.8} if key.endswith("_step") else {"marker": "o"}
            axes.plot(steps, values, label=key, **style)
        axes.set_xlabel("training step")
        axes.set_ylabel(ylabel)
        if ylabel == "loss" and all(v > 0 for key in present for _, v in metrics[key]):
            axes.set_yscale("log")
        axes.grid(alpha=0.3)
        axes.legend()
        saved.append(_save(figure, out_dir / name))
    return saved


@torch.no_grad()
def plot_decision_boundary(net: torch.nn.Module, inputs: Tensor, targets: Tensor, path: Path) -> Path:
    """The net's output over [−0.5, 1.5]², its 0.5 contour, and the four XOR points."""
    grid = torch.linspace(-0.5, 1.5, 201)
    x1, x2 = torch.meshgrid(grid, grid, indexing="xy")
    points = torch.stack([x1.flatten(), x2.flatten()], dim=1).to(next(net.parameters()))
    outputs = net(points).reshape(x1.shape).float().cpu().numpy()
    x1, x2 = x1.numpy(), x2.numpy()
    figure, axes = plt.subplots(figsize=(5, 4.5))
    image = axes.contourf(x1, x2, outputs, levels=20, cmap="coolwarm", vmin=0, vmax=1)
    axes.contour(x1, x2, outputs, levels=[0.5], colors="black", linewidths=1.5)
    figure.colorbar(image, ax=axes, label="net output")
    for point, target in zip(inputs.cpu().tolist(), targets.cpu().flatten().tolist(), strict=True):
        axes.scatter(*point, s=160, c="white" if target > 0.5 else "black", edgecolors="gray")
        axes.annotate(f"y={int(target)}", (point[0] + 0.06, point[1] + 0.06))
    axes.set_xlabel("x1")
    axes.set_ylabel("x2")
    axes.set_title("XOR: decision boundary (output = 0.5)")
    return _save(figure, path)


def plot_confusion_matrix(predictions: Tensor, targets: Tensor, num_classes: int, path: Path) -> Path:
    """torchmetrics' confusion matrix (rows: true class, columns: predicted)."""
    # Drawn by one process: no gathering across DDP processes (they may have finished).
    matrix = MulticlassConfusionMatrix(num_classes=num_classes, sync_on_compute=False)
    matrix.update(predictions.cpu(), targets.cpu())
    figure, axes = plt.subplots(figsize=(7, 6))
    with warnings.catch_warnings():  # torchmetrics hands matplotlib a tensor: numpy 2 complains
        warnings.filterwarnings("ignore", message=".*__array__ implementation.*", category=DeprecationWarning)
        matrix.plot(ax=axes)
    axes.tick_params(axis="y", labelrotation=0)  # torchmetrics turns the class names on their side
    axes.set_title("test set: true (rows) vs predicted (columns)")
    return _save(figure, path)


def plot_misclassified(
    images: Tensor, predictions: Tensor, targets: Tensor, path: Path, limit: int = 36
) -> Path:
    """A grid of misclassified test images (N, H, W in [0, 1]) titled 'pred p / true t'."""
    wrong = (predictions != targets).nonzero().flatten()[:limit].cpu()
    columns = 6
    rows = max(1, math.ceil(len(wrong) / columns))
    figure, axes_grid = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for axes in axes_grid.flat:
        axes.axis("off")
    for axes, index in zip(axes_grid.flat, wrong.tolist(), strict=False):  # more axes than images
        axes.imshow(images[index].cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
        axes.set_title(f"pred {predictions[index].item()} / true {targets[index].item()}", fontsize=8)
    total = int((predictions != targets).sum())
    figure.suptitle(f"{len(wrong)} of {total} misclassified test images")
    return _save(figure, path)


def plot_first_layer_weights(weight: Tensor, image_shape: tuple[int, int], path: Path, limit: int = 64) -> Path:
    """The first layer's weight rows (out, H·W) as H×W images: what each hidden unit looks for."""
    rows_of_weights = weight[:limit].detach().float().cpu()
    columns = 8
    rows = math.ceil(len(rows_of_weights) / columns)
    figure, axes_grid = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.3 * rows), squeeze=False)
    for axes in axes_grid.flat:
        axes.axis("off")
    for axes, row in zip(axes_grid.flat, rows_of_weights, strict=False):  # more axes than rows
        scale = row.abs().max().item() or 1.0
        axes.imshow(row.reshape(image_shape).numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale)
    figure.suptitle(f"first layer: {len(rows_of_weights)} of {len(weight)} units' weights (red +, blue −)")
    return _save(figure, path)


def plot_function_fit(inputs: Tensor, targets: Tensor, fitted: Tensor, train_points, path: Path) -> Path:
    """The target function, the net's fit, and the training points, on one axis."""
    x, y, fit = (t.detach().float().flatten().cpu().numpy() for t in (inputs, targets, fitted))
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(x, y, color="black", linewidth=2, label="target f(x)")
    axes.plot(x, fit, color="tab:red", linewidth=1.5, label="net")
    train_x, train_y = (t.flatten().cpu().numpy() for t in train_points)
    axes.scatter(train_x, train_y, s=6, color="gray", alpha=0.5, label="training points")
    error = abs(fit - y).max()
    axes.set_title(f"one hidden layer of sigmoids: max |net − f| = {error:.3f}")
    axes.set_xlabel("x")
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_attention_map(weights: Tensor, text: str, path: Path) -> Path:
    """One head's attention weights (T, T) over a window of ``text`` (T characters): row i, query
    character i; column j, the key character j it attends to (0 above the diagonal: causal)."""
    shown = [repr(character)[1:-1] or " " for character in text]  # "\n" as \n, visible
    figure, axes = plt.subplots(figsize=(7, 6.3))
    image = axes.imshow(weights.numpy(), cmap="viridis", vmin=0)
    axes.set_xticks(range(len(shown)), shown, fontsize=6, family="monospace")
    axes.set_yticks(range(len(shown)), shown, fontsize=6, family="monospace")
    axes.set_xlabel("key (the character attended to)")
    axes.set_ylabel("query (the character predicting the next)")
    axes.set_title("attention weights, block 0, head 0, on a validation window")
    figure.colorbar(image, ax=axes, fraction=0.046)
    return _save(figure, path)
