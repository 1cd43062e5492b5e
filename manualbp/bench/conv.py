"""Speed: grouped, depthwise and pointwise convolutions, forward + backward (δX, δW, δb), manualbp's
against torch's own at the shapes that EfficientNet, MobileNetV3, ConvNeXt and RegNet use on 128×128
images (``python -m manualbp.bench --conv``). Each row times the two in turns (A B A B ...) and gives
the median of each and their ratio."""

from __future__ import annotations

import time

import torch

from manualbp.bench.speed import interleaved_runs
from manualbp.layers.conv import conv2d

# (name, channels in, channels out, groups, kernel, stride, image side): the models' layers at a 128×128 input
CONV_SHAPES = (
    ("depthwise 3x3/1 (MobileNet)", 32, 32, 32, 3, 1, 64),
    ("depthwise 3x3/2 (EfficientNet)", 96, 96, 96, 3, 2, 64),
    ("depthwise 3x3/1 (EfficientNet)", 144, 144, 144, 3, 1, 32),
    ("depthwise 5x5/1 (EfficientNet)", 240, 240, 240, 5, 1, 16),
    ("depthwise 5x5/2 (MobileNetV3)", 144, 144, 144, 5, 2, 32),
    ("depthwise 7x7/1 (ConvNeXt)", 40, 40, 40, 7, 1, 32),
    ("depthwise 7x7/1 (ConvNeXt)", 320, 320, 320, 7, 1, 4),
    ("grouped 3x3/1, width 8 (RegNet)", 64, 64, 8, 3, 1, 32),
    ("grouped 3x3/2, width 16 (RegNet)", 128, 128, 8, 3, 2, 16),
    ("pointwise 1x1/1", 96, 24, 1, 1, 1, 32),
)
CONV_BATCH = 8
CALLS_PER_ROUND = 3


def _forward_backward_run(convolve, input, weight, bias, stride, padding, groups, grad_output):
    """Seconds per forward + backward (δX, δW, δb) of ``convolve``, averaged over a few calls."""

    def run() -> float:
        start = time.perf_counter()
        for _ in range(CALLS_PER_ROUND):
            output = convolve(input, weight, bias, stride, padding, 1, groups)
            torch.autograd.grad(output, (input, weight, bias), grad_output)
        return (time.perf_counter() - start) / CALLS_PER_ROUND

    return run


def bench_conv(dtypes=(torch.float32, torch.float64), rounds: int = 5, batch_size: int | None = None,
               shapes=None, seed: int = 0) -> dict:
    """manualbp's conv2d against torch.conv2d, forward + backward, per dtype and shape of ``shapes``
    (default :data:`CONV_SHAPES`, batch :data:`CONV_BATCH`)."""
    batch_size = CONV_BATCH if batch_size is None else batch_size
    shapes = CONV_SHAPES if shapes is None else shapes
    generator = torch.Generator().manual_seed(seed)
    rows = {}
    for dtype in dtypes:
        for name, in_channels, out_channels, groups, kernel, stride, side in shapes:
            input = torch.randn(batch_size, in_channels, side, side, generator=generator, dtype=dtype)
            weight = torch.randn(out_channels, in_channels // groups, kernel, kernel, generator=generator, dtype=dtype)
            bias = torch.randn(out_channels, generator=generator, dtype=dtype)
            input, weight, bias = (tensor.requires_grad_() for tensor in (input, weight, bias))
            padding = kernel // 2
            grad_output = torch.randn_like(torch.conv2d(input, weight, bias, stride, padding, 1, groups))
            settings = (input, weight, bias, stride, padding, groups, grad_output)
            medians = interleaved_runs({"manual": _forward_backward_run(conv2d, *settings),
                                        "torch": _forward_backward_run(torch.conv2d, *settings)}, rounds)
            key = (f"{str(dtype).removeprefix('torch.')} {name} "
                   f"{batch_size}x{in_channels}x{side}x{side} -> {out_channels}")
            rows[key] = {"manual_us": medians["manual"] * 1e6, "torch_us": medians["torch"] * 1e6,
                         "ratio": medians["manual"] / medians["torch"]}
    return {"threads": torch.get_num_threads(), "rounds": rounds, "rows": rows}


def print_conv(report: dict) -> None:
    print(f"conv2d forward + backward, manualbp vs torch (median of {report['rounds']} interleaved rounds, "
          f"{report['threads']} threads)")
    width = max(len(key) for key in report["rows"])
    print(f"{'shape':<{width}}  {'manualbp us':>12}  {'torch us':>10}  {'ratio':>6}")
    for key, row in report["rows"].items():
        print(f"{key:<{width}}  {row['manual_us']:>12.0f}  {row['torch_us']:>10.0f}  {row['ratio']:>6.2f}")
