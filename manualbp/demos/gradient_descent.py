"""Gradient descent on the lecture's 2-D example (GradientDescentDemo).

    f(x, y) = −(cos²x + cos²y)²
    ∇f(x, y) = [4(cos²x + cos²y) cos x sin x,  4(cos²x + cos²y) cos y sin y]
    xᵗ⁺¹ = xᵗ − α ∇f(xᵗ),  until ‖∇f‖ < tolerance

    python -m manualbp.demos.gradient_descent [--start 0.7 0.25] [--step 0.235] [--tolerance 1e-6]

Prints every iteration, checks the slide's gradient against autograd at the start, and saves a
contour plot of f with the zig-zag path (gradient_descent.png).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def f(point: Tensor) -> Tensor:
    """f(x, y) = −(cos²x + cos²y)²; point: (2,) or (..., 2)."""
    x, y = point[..., 0], point[..., 1]
    return -((torch.cos(x) ** 2 + torch.cos(y) ** 2) ** 2)


def grad_f(point: Tensor) -> Tensor:
    """The slide's analytic gradient ∇f = 4(cos²x + cos²y)·[cos x sin x, cos y sin y]."""
    x, y = point[..., 0], point[..., 1]
    total = torch.cos(x) ** 2 + torch.cos(y) ** 2
    return torch.stack([4 * total * torch.cos(x) * torch.sin(x), 4 * total * torch.cos(y) * torch.sin(y)], dim=-1)


def autograd_grad_f(point: Tensor) -> Tensor:
    """∇f by PyTorch's autograd, to check the slide's formula against."""
    point = point.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(f(point), point)
    return gradient


@dataclass
class Descent:
    path: Tensor  # (iterations + 1, 2): x⁰, x¹, ...
    converged: bool

    @property
    def end(self) -> Tensor:
        return self.path[-1]


def gradient_descent(start, step: float, tolerance: float = 1e-6, max_iterations: int = 1000) -> Descent:
    """xᵗ⁺¹ = xᵗ − α∇f(xᵗ) from ``start`` until ‖∇f(xᵗ)‖ < ``tolerance`` (float64)."""
    point = torch.as_tensor(start, dtype=torch.float64)
    path = [point]
    for _ in range(max_iterations):
        gradient = grad_f(point)
        if gradient.norm() < tolerance:
            return Descent(torch.stack(path), converged=True)
        point = point - step * gradient  # xᵗ⁺¹ = xᵗ − α ∇f(xᵗ)
        path.append(point)
    return Descent(torch.stack(path), converged=bool(grad_f(point).norm() < tolerance))


def plot(descent: Descent, step: float, path: Path) -> Path:
    """Contours of f around the path, and the path itself."""
    points = descent.path
    low = min(points.min().item(), -0.5) - 0.5
    high = max(points.max().item(), 0.5) + 0.5
    grid = torch.linspace(low, high, 300, dtype=torch.float64)
    x, y = torch.meshgrid(grid, grid, indexing="xy")
    values = f(torch.stack([x, y], dim=-1))
    figure, axes = plt.subplots(figsize=(6, 5))
    contours = axes.contourf(x.numpy(), y.numpy(), values.numpy(), levels=30, cmap="viridis")
    figure.colorbar(contours, ax=axes, label="f(x, y)")
    axes.plot(points[:, 0].numpy(), points[:, 1].numpy(), "o-", color="white", markersize=3, linewidth=1)
    axes.plot(*points[0].tolist(), "o", color="red", label="start")
    axes.plot(*points[-1].tolist(), "*", color="orange", markersize=12, label="end")
    axes.set_xlabel("x")
    axes.set_ylabel("y")
    axes.set_title(f"gradient descent on −(cos²x + cos²y)², α = {step}: {len(points) - 1} steps")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> Descent:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=float, nargs=2, default=[0.7, 0.25], metavar=("X", "Y"))
    parser.add_argument(
        "--step", type=float, default=0.235,
        help="the step length α (near 0.25, the largest stable one here, the path zig-zags)",
    )
    parser.add_argument("--tolerance", type=float, default=1e-6, help="stop when ‖∇f‖ is below it")
    parser.add_argument("--max-iterations", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("gradient_descent.png"), help="the plot")
    args = parser.parse_args(argv)
    if not args.step > 0 or not args.tolerance > 0:
        parser.error("--step and --tolerance must be positive")

    start = torch.tensor(args.start, dtype=torch.float64)
    analytic, automatic = grad_f(start), autograd_grad_f(start)
    print(f"∇f at the start {args.start}: slide's formula {analytic.tolist()}, autograd {automatic.tolist()}")
    if not torch.allclose(analytic, automatic, rtol=1e-12, atol=1e-12):
        raise SystemExit("the slide's gradient disagrees with autograd")

    descent = gradient_descent(args.start, args.step, args.tolerance, args.max_iterations)
    print(f"{'t':>4} {'x':>12} {'y':>12} {'f(x, y)':>12} {'‖∇f‖':>12}")
    for t, point in enumerate(descent.path):
        print(f"{t:4d} {point[0]:12.6f} {point[1]:12.6f} {f(point):12.6f} {grad_f(point).norm():12.2e}")
    verdict = "converged" if descent.converged else f"did not converge in {args.max_iterations} steps"
    print(f"{verdict}: ({descent.end[0]:.6f}, {descent.end[1]:.6f}), f = {f(descent.end):.6f}")
    print(f"plot: {plot(descent, args.step, args.out).resolve()}")
    return descent


if __name__ == "__main__":
    main()
