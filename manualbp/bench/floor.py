"""The floor of a Python autograd node: a layer's formulas in the fewest torch ops, in an
autograd.Function with nothing else (no argument checks, no dtype, layout or transform dispatch,
no double backward), timed side by side with manualbp's layer and torch's own op.

What manualbp's layer costs above its floor is its checks and generality; what the floor costs
above torch is the Python node itself and the formulas' separate passes over memory (torch's C++
kernel does them in one). A target below the floor cannot be met by any Python Function of those
formulas: ``python -m manualbp.bench --floors`` measures where it lies, on this machine, for the
two rows of issue 21 that stay above their targets (batch norm in evaluation, the MNIST MLP step).

The floor Functions are correct (tests/test_bench.py holds their gradients to torch's), so that
their time is the time of the work, not of skipping it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

import manualbp.functional as mbf
from manualbp.bench.resnet18 import _timed
from manualbp.bench.speed import interleaved_runs, mnist_nets, random_batches, training_run
from manualbp.layers.losses import SoftmaxCrossEntropyLoss
from manualbp.layers.normalization import _channel_sums, _per_channel

_threshold_backward = torch.ops.aten.threshold_backward


class BatchNormEvalFloor(torch.autograd.Function):
    """y = γ(x − μ)/σ + β with μ, σ² given, and δx, δγ, δβ: 5 ops forward, 8 backward (of which 5
    pass over x's size: x − μ, its product with δy, two channel sums, δx), the channel sums and
    per-channel views manualbp's own. input ``(N, C, *)`` contiguous; mean, variance, weight, bias: (C,)."""

    @staticmethod
    def forward(ctx, input: Tensor, mean: Tensor, variance: Tensor, weight: Tensor, bias: Tensor, eps: float):
        inverse_std = (variance + eps).rsqrt_()  # 1/σ
        scale = inverse_std * weight  # γ/σ
        shift = torch.addcmul(bias, mean, scale, value=-1)  # β − μγ/σ
        ctx.save_for_backward(input, mean, inverse_std, scale)
        return (input * _per_channel(scale, input)).add_(_per_channel(shift, input))  # y = γ(x − μ)/σ + β

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        input, mean, inverse_std, scale = ctx.saved_tensors
        products = (input - _per_channel(mean, input)).mul_(grad_output)  # δy·(x − μ)
        grad_weight = _channel_sums(products).mul_(inverse_std)  # δγ = Σ δy·x̂
        grad_bias = _channel_sums(grad_output)  # δβ = Σ δy
        grad_input = torch.mul(grad_output, _per_channel(scale, input), out=products)  # δx = (γ/σ)·δy
        return grad_input, None, None, grad_weight, grad_bias, None


class MLPSoftmaxCrossEntropyFloor(torch.autograd.Function):
    """The MNIST MLP (ReLU hidden layers) and its mean softmax cross-entropy in one node, as
    :class:`manualbp.layers.mlp.MLPSoftmaxCrossEntropyFunction` computes them, in the fewest ops.
    Arguments: input (N, in), class indices (N,), then W1, b1, ..., WL, bL (torch layout)."""

    @staticmethod
    def forward(ctx, input: Tensor, target: Tensor, *parameters: Tensor):
        weights, biases = parameters[0::2], parameters[1::2]
        activations = [input]
        for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
            activations.append(torch.addmm(bias, activations[-1], weight.t()).clamp_min_(0))  # Zk = f(Z(k−1)Wkᵀ + bk)
        logits = torch.addmm(biases[-1], activations[-1], weights[-1].t())  # ZL = Z(L−1) WLᵀ + bL
        log_probs = torch.log_softmax(logits, -1)
        ctx.save_for_backward(target, log_probs, *weights, *activations)
        return F.nll_loss(log_probs, target)  # L = −(1/N) Σ log yp_target

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        target, log_probs, *rest = ctx.saved_tensors
        layer_count = len(rest) // 2
        weights, activations = rest[:layer_count], rest[layer_count:]
        scale = grad_loss / log_probs.shape[0]  # s = g/N
        delta = log_probs.exp().mul_(scale)  # yp·s
        delta.scatter_add_(1, target.unsqueeze(1), (-scale).expand(target.shape[0], 1))  # δZL = (yp − y)·s
        grads: list[Tensor | None] = [None] * (2 * layer_count)
        for k in reversed(range(layer_count)):
            grads[2 * k] = delta.t().mm(activations[k])  # δWk = δZkᵀ Z(k−1)
            grads[2 * k + 1] = delta.sum(0)  # δbk = Σ δZk
            if k:
                delta = delta.mm(weights[k])  # δZ(k−1) = δZk Wk
                _threshold_backward.grad_input(delta, activations[k], 0, grad_input=delta)  # · f'(…)
        return None, None, *grads


class _FloorMLP(torch.nn.Module):
    """The MNIST net's layers with the floor Function as its training loss (``forward_and_loss``
    calls ``loss`` for a net whose ``fused_loss`` is the loss given, as it does for MLPClassifier)."""

    fused_loss = SoftmaxCrossEntropyLoss

    def __init__(self, layers: torch.nn.Module) -> None:
        super().__init__()
        self.layers = layers

    def loss(self, inputs: Tensor, targets: Tensor) -> Tensor:
        parameters = [tensor for layer in self.layers for tensor in (layer.weight, layer.bias)]
        return MLPSoftmaxCrossEntropyFloor.apply(inputs, targets, *parameters)


def _batch_norm_eval_row(rounds: int, shape=(8, 64, 16, 16)) -> dict:
    """Forward + backward of batch norm in evaluation, float32, one call timed at a time as the
    ResNet-18 per-layer table times it: manualbp's, the floor's and torch's, interleaved medians in µs."""
    input = torch.randn(*shape, requires_grad=True)
    weight, bias = torch.randn(shape[1], requires_grad=True), torch.randn(shape[1], requires_grad=True)
    mean, variance = torch.zeros(shape[1]), torch.ones(shape[1])
    sides = {
        "manual": lambda x, g, b: mbf.batch_norm(x, mean, variance, g, b),
        "floor": lambda x, g, b: BatchNormEvalFloor.apply(x, mean, variance, g, b, 1e-5),
        "native": lambda x, g, b: F.batch_norm(x, mean, variance, g, b),
    }
    runs = {side: _timed(function, input, (weight, bias), torch.randn(*shape)) for side, function in sides.items()}
    for run in runs.values():
        run()  # warm up
    medians = {side: seconds * 1e6 for side, seconds in interleaved_runs(runs, rounds).items()}
    return {"shape": list(shape), **{f"{side}_us": value for side, value in medians.items()},
            "manual_ratio": medians["manual"] / medians["native"], "floor_ratio": medians["floor"] / medians["native"]}


def _mlp_step_rows(batch_sizes, rounds: int) -> dict:
    """The MNIST step (``python -m manualbp.bench``'s table): MLPClassifier's node, the floor node and
    torch.nn, same weights and batches, interleaved; µs per step and ratios to torch.nn."""
    nets, manual_loss, native_loss, make_optimizer = mnist_nets()
    floor = _FloorMLP(copy.deepcopy(nets["node"]))  # the same layers and weights
    sides = {"manual": (nets["node"], manual_loss), "floor": (floor, manual_loss),
             "native": (nets["native"], native_loss)}
    rows = {}
    for batch_size in batch_sizes:
        batches = random_batches(batch_size)
        runs = {side: training_run(copy.deepcopy(net), loss, make_optimizer, batches)
                for side, (net, loss) in sides.items()}
        medians = interleaved_runs(runs, rounds)
        rows[str(batch_size)] = {**{f"{side}_us": value * 1e6 for side, value in medians.items()},
                                 "manual_ratio": medians["manual"] / medians["native"],
                                 "floor_ratio": medians["floor"] / medians["native"]}
    return rows


def bench_floors(batch_sizes=(64, 128), rounds: int = 15) -> dict:
    """Batch norm in evaluation (8×64×16×16, float32) and the MNIST MLP step at ``batch_sizes``:
    manualbp, the floor, torch, interleaved in one process."""
    return {"threads": torch.get_num_threads(), "rounds": rounds,
            "batch_norm_eval": _batch_norm_eval_row(rounds), "mlp_step": _mlp_step_rows(batch_sizes, rounds)}


def print_floors(report: dict) -> None:
    print(f"The floor of a Python autograd node (the formulas in the fewest ops, nothing else) between manualbp "
          f"and torch, {report['threads']} threads, interleaved medians\n")
    print("| what | manualbp µs | floor µs | torch µs | manualbp / torch | floor / torch |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = {f"batch_norm eval, {'×'.join(map(str, report['batch_norm_eval']['shape']))}": report["batch_norm_eval"],
            **{f"MNIST MLP step, batch {batch}": row for batch, row in report["mlp_step"].items()}}
    for name, row in rows.items():
        print(f"| {name} | {row['manual_us']:,.0f} | {row['floor_us']:,.0f} | {row['native_us']:,.0f} | "
              f"{row['manual_ratio']:.3f} | {row['floor_ratio']:.3f} |")
