"""Memory: the peak bytes of one forward + backward of every manualbp Function against the same
computation with PyTorch's own ops, measured side by side in one process.

``peak_bytes`` reads the CPU allocator through ``torch.profiler`` (``profile_memory=True`` records
every allocation and free, in order): the peak is the largest total held above the level at the
start, so inputs, weights and the upstream gradient made beforehand are not counted, and the
figure is deterministic (no RSS noise, no other process). Each case is one line of ``CASES``: a
name, the manualbp function, its PyTorch reference, and a maker of inputs at a given scale (the
benchmark's size, or a small one for the tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch._C._profiler import _EventType  # torch-private: see peak_bytes
from torch.profiler import ProfilerActivity, profile

import manualbp.functional as mbf
from manualbp.reference import TorchEuclideanLoss, TorchSoftmaxEuclideanLoss


def peak_bytes(run: Callable[[], object]) -> int:
    """Peak bytes held by the CPU allocator above its level when ``run()`` starts, while it runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        run()
    # torch-private: the profiler's public events fold allocations into their ops (net per op,
    # which hides a temporary freed inside it); its event tree keeps each allocation and free,
    # with the allocator's running total (counted from before this profile: taken relative here).
    allocations = sorted((node for node in _walk(profiler.profiler.kineto_results.experimental_event_tree())
                          if node.tag == _EventType.Allocation), key=lambda node: node.start_time_ns)
    if not allocations:
        return 0
    first = allocations[0].extra_fields
    start_level = first.total_allocated - first.alloc_size
    return max(0, *(node.extra_fields.total_allocated - start_level for node in allocations))


def _walk(nodes):
    for node in nodes:
        yield node
        yield from _walk(node.children)


def forward_backward(function: Callable, inputs: tuple, grad_output: torch.Tensor | None) -> Callable[[], None]:
    """One forward and one backward of ``function(*inputs)``, keeping nothing but the inputs'
    ``.grad`` (cleared beforehand, outside the measurement, so that no free of an earlier run's
    gradient is counted against this one)."""
    for tensor in inputs:
        tensor.grad = None

    def run() -> None:
        function(*inputs).backward(grad_output)

    return run


@dataclass(frozen=True)
class Case:
    """``make(scale)`` returns (inputs, grad_output or None for a scalar loss); ``needs_grad``
    says which inputs require grad (e.g. a first layer's input does not)."""

    name: str
    function: Callable
    reference: Callable
    make: Callable[[int], tuple[tuple, torch.Tensor | None]]
    needs_grad: tuple[bool, ...]

    def inputs(self, scale: int) -> tuple[tuple, torch.Tensor | None]:
        inputs, grad_output = self.make(scale)
        needs_grad = self.needs_grad + (False,) * (len(inputs) - len(self.needs_grad))
        return tuple(x.requires_grad_(needs) for x, needs in zip(inputs, needs_grad, strict=True)), grad_output

    def peaks(self, scale: int) -> tuple[int, int]:
        """(manualbp's peak bytes, PyTorch's) for one forward + backward at ``scale``, same inputs."""
        inputs, grad_output = self.inputs(scale)
        ours = peak_bytes(forward_backward(self.function, inputs, grad_output))
        theirs = peak_bytes(forward_backward(self.reference, inputs, grad_output))
        return ours, theirs


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def _linear(rows: int, leading: tuple[int, ...] = (), out_features: int = 512, in_features: int = 784):
    inputs = (_randn(*leading, rows, in_features), _randn(out_features, in_features), _randn(out_features))
    return inputs, _randn(*leading, rows, out_features)


def _elementwise(rows: int):
    return (_randn(rows, 512),), _randn(rows, 512)


def _logits(rows: int, targets: str, classes: int = 1000):
    target = (torch.softmax(_randn(rows, classes), dim=1) if targets == "probabilities"
              else torch.randint(0, classes, (rows,)))
    return (_randn(rows, classes), target), None


def _layer_norm(rows: int, features: int = 512):
    return (_randn(rows, features), _randn(features), _randn(features)), _randn(rows, features)


def _embedding(rows: int, vocabulary: int = 1000, features: int = 512):
    return (torch.randint(0, vocabulary, (rows,)), _randn(vocabulary, features)), _randn(rows, features)


def _attention(rows: int, heads: int = 4, length: int = 64, features: int = 32):
    """GPT-shaped (batch, heads, length, features), batch = rows/length: rows tokens in all."""
    batch = max(rows // length, 1)
    q, k, v = (_randn(batch, heads, length, features) for _ in range(3))
    return (q, k, v), _randn(batch, heads, length, features)


def _conv2d(rows: int, dtype: torch.dtype = torch.float32):
    """(rows/250 images of 8 × 32 × 32, 16 filters 3 × 3, padding 1); the output twice as large."""
    images = max(rows // 250, 2)
    inputs = tuple(t.to(dtype) for t in (_randn(images, 8, 32, 32), _randn(16, 8, 3, 3), _randn(16)))
    return inputs, _randn(images, 16, 32, 32).to(dtype)


def _conv1d(rows: int):
    """(rows/50 signals of 8 × 256, 16 filters of 5): the output (rows/50, 16, 252)."""
    signals = max(rows // 50, 2)
    return (_randn(signals, 8, 256), _randn(16, 8, 5), _randn(16)), _randn(signals, 16, 252)


def _group_norm(rows: int):
    """(rows/10, 16, 8, 8) in 4 groups (see _group_norm_4), γ and β per channel."""
    return (_randn(max(rows // 10, 2), 16, 8, 8), _randn(16), _randn(16)), _randn(max(rows // 10, 2), 16, 8, 8)


def _group_norm_4(input, weight, bias):
    return mbf.group_norm(input, 4, weight, bias)


def _torch_group_norm_4(input, weight, bias):
    return F.group_norm(input, 4, weight, bias)


def _conv2d_padded(input, weight, bias):
    return mbf.conv2d(input, weight, bias, padding=1)


def _torch_conv2d_padded(input, weight, bias):
    return F.conv2d(input, weight, bias, padding=1)


def _linear_relu_reference(input, weight, bias):
    return F.relu(F.linear(input, weight, bias))


ALL, NO_INPUT_GRAD = (True, True, True), (False, True, True)

CASES = [
    Case("linear", mbf.linear, F.linear, _linear, ALL),
    Case("linear, input needs no grad", mbf.linear, F.linear, _linear, NO_INPUT_GRAD),
    Case("linear, 3-D input", mbf.linear, F.linear, lambda rows: _linear(rows // 50, (50,)), ALL),
    Case("linear, 3-D input needs no grad", mbf.linear, F.linear, lambda rows: _linear(rows // 50, (50,)),
         NO_INPUT_GRAD),
    Case("linear_relu", mbf.linear_relu, _linear_relu_reference, _linear, ALL),
    Case("linear_relu, input needs no grad", mbf.linear_relu, _linear_relu_reference, _linear, NO_INPUT_GRAD),
    Case("linear_relu, 3-D input", mbf.linear_relu, _linear_relu_reference,
         lambda rows: _linear(rows // 50, (50,)), ALL),
    Case("relu", mbf.relu, F.relu, _elementwise, (True,)),
    Case("sigmoid", mbf.sigmoid, torch.sigmoid, _elementwise, (True,)),
    Case("elu", mbf.elu, F.elu, _elementwise, (True,)),
    Case("tanh", mbf.tanh, torch.tanh, _elementwise, (True,)),
    Case("softmax_cross_entropy, class indices", mbf.softmax_cross_entropy, F.cross_entropy,
         lambda rows: _logits(rows, "indices"), (True,)),
    Case("softmax_cross_entropy, probabilities", mbf.softmax_cross_entropy, F.cross_entropy,
         lambda rows: _logits(rows, "probabilities"), (True,)),
    Case("softmax_euclidean_loss", mbf.softmax_euclidean_loss, TorchSoftmaxEuclideanLoss(),
         lambda rows: _logits(rows, "indices"), (True,)),
    Case("gelu", mbf.gelu, F.gelu, _elementwise, (True,)),
    Case("gelu tanh", lambda x: mbf.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"),
         _elementwise, (True,)),
    Case("silu", mbf.silu, F.silu, _elementwise, (True,)),
    Case("relu6", mbf.relu6, F.relu6, _elementwise, (True,)),
    Case("softmax", lambda x: mbf.softmax(x, -1), lambda x: F.softmax(x, -1), _elementwise, (True,)),
    Case("log_softmax", lambda x: mbf.log_softmax(x, -1), lambda x: F.log_softmax(x, -1), _elementwise, (True,)),
    Case("layer_norm", lambda x, w, b: mbf.layer_norm(x, (512,), w, b), lambda x, w, b: F.layer_norm(x, (512,), w, b),
         _layer_norm, ALL),
    Case("embedding", mbf.embedding, F.embedding, _embedding, (False, True)),
    Case("attention, causal", lambda q, k, v: mbf.scaled_dot_product_attention(q, k, v, is_causal=True),
         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), _attention, ALL),
    Case("euclidean_loss", mbf.euclidean_loss, TorchEuclideanLoss(),
         lambda rows: ((_randn(rows, 512), _randn(rows, 512)), None), (True,)),
    Case("conv2d", _conv2d_padded, _torch_conv2d_padded, _conv2d, ALL),
    Case("conv2d, input needs no grad", _conv2d_padded, _torch_conv2d_padded, _conv2d, NO_INPUT_GRAD),
    Case("conv2d, float64", _conv2d_padded, _torch_conv2d_padded, lambda rows: _conv2d(rows, torch.float64), ALL),
    Case("conv1d", mbf.conv1d, F.conv1d, _conv1d, ALL),
    Case("group_norm", _group_norm_4, _torch_group_norm_4, _group_norm, ALL),
]

BENCH_ROWS = 50_000  # e.g. a 50k x 784 batch: about 160 MB of float32 input per case


def bench_memory(rows: int = BENCH_ROWS, seed: int = 0) -> dict:
    """Peak bytes of forward + backward, manualbp and PyTorch, for every case at ``rows`` rows."""
    torch.manual_seed(seed)
    results = {}
    for case in CASES:
        ours, theirs = case.peaks(rows)
        results[case.name] = {"manual_peak_bytes": ours, "native_peak_bytes": theirs, "ratio": ours / theirs}
    return {"rows": rows, "cases": results, "torch": torch.__version__,
            "measure": "CPU allocator peak above the start level, torch.profiler(profile_memory=True)"}


def print_memory(report: dict) -> None:
    print(f"Peak memory of one forward + backward, {report['rows']:,} rows ({report['measure']})\n")
    print("| Function | manualbp MB | torch MB | manualbp / torch |")
    print("|---|---:|---:|---:|")
    for name, row in report["cases"].items():
        print(f"| {name} | {row['manual_peak_bytes'] / 1e6:,.1f} | {row['native_peak_bytes'] / 1e6:,.1f} "
              f"| {row['ratio']:.2f} |")
