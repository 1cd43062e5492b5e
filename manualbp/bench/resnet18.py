"""Speed: one training step of ``manualbp.convert(torchvision.models.resnet18(num_classes=10))``
against the same torchvision ResNet-18 (same start weights and batches, interleaved in one
process), in float32 and float64; and each of its layer kinds, forward + backward, against the
torch op at ResNet-18's own shapes (issue 21.1)."""

from __future__ import annotations

import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F

import manualbp
import manualbp.functional as mbf
from manualbp.bench.speed import interleaved_runs, saved_activation_bytes, training_run

# (dtype, batch, image side): small enough to run in a couple of minutes on 2 cores
RESNET18_CONFIGS = ((torch.float32, 8, 64), (torch.float64, 4, 32))
# issue 21's shapes (--resnet18-full): float32 at batch 32 of 64x64 and batch 8 of 224x224 (ImageNet's side)
RESNET18_FULL_CONFIGS = ((torch.float32, 32, 64), (torch.float32, 8, 224), (torch.float64, 4, 32))
RESNET18_STEPS_PER_ROUND = 5


def _image_batches(dtype, batch_size: int, side: int, count: int):
    return [(torch.randn(batch_size, 3, side, side, dtype=dtype), torch.randint(0, 10, (batch_size,)))
            for _ in range(count)]


def bench_resnet18_steps(configs=RESNET18_CONFIGS, rounds: int = 5, steps: int = RESNET18_STEPS_PER_ROUND,
                         seed: int = 0) -> dict:
    """SGD training steps of ResNet-18 converted against the original, per (dtype, batch, side)."""
    import torchvision  # only this bench needs it

    load_before = os.getloadavg()
    results = {}
    for dtype, batch_size, side in configs:
        torch.manual_seed(seed)
        native = torchvision.models.resnet18(num_classes=10).to(dtype)
        manual = manualbp.convert(copy.deepcopy(native), strict=True)
        losses = {"manual": manualbp.nn.SoftmaxCrossEntropyLoss(), "native": torch.nn.CrossEntropyLoss()}
        batches = _image_batches(dtype, batch_size, side, steps + 1)

        def sgd(parameters):
            return torch.optim.SGD(parameters, lr=0.01, momentum=0.9)

        nets = {"manual": manual, "native": native}
        medians = interleaved_runs(
            {name: training_run(net, losses[name], sgd, batches) for name, net in nets.items()}, rounds
        )
        inputs, targets = batches[0]
        saved = {name: saved_activation_bytes(net, losses[name], inputs, targets) for name, net in nets.items()}
        results[f"{str(dtype).removeprefix('torch.')} {batch_size}x3x{side}x{side}"] = {
            "manual_us": medians["manual"] * 1e6,
            "native_us": medians["native"] * 1e6,
            "ratio": medians["manual"] / medians["native"],
            "manual_saved_bytes": saved["manual"],
            "native_saved_bytes": saved["native"],
        }
    return {"steps": results, "rounds": rounds, "steps_per_round": steps, "threads": torch.get_num_threads(),
            "optimizer": "SGD(lr=0.01, momentum=0.9)", "load_average": [load_before[0], os.getloadavg()[0]]}


# Each layer kind of ResNet-18 at a shape it has there (float32, batch 8, 64×64 input): name, manualbp
# function, torch function, input shape (the input needs a gradient, as inside the net).
def _conv(stride: int, padding: int):
    return (lambda x, w: mbf.conv2d(x, w, None, stride, padding)), (lambda x, w: F.conv2d(x, w, None, stride, padding))


def _layer_cases(dtype):
    def weight(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    gamma, beta = weight(64), weight(64)
    return [
        ("conv 7×7/2, 3→64", *_conv(2, 3), (8, 3, 64, 64), (weight(64, 3, 7, 7),)),
        ("conv 3×3, 64→64", *_conv(1, 1), (8, 64, 16, 16), (weight(64, 64, 3, 3),)),
        ("conv 3×3/2, 64→128", *_conv(2, 1), (8, 64, 16, 16), (weight(128, 64, 3, 3),)),
        ("conv 1×1/2, 64→128", *_conv(2, 0), (8, 64, 16, 16), (weight(128, 64, 1, 1),)),
        ("conv 3×3, 512→512", *_conv(1, 1), (8, 512, 2, 2), (weight(512, 512, 3, 3),)),
        ("batch_norm train", lambda x, g, b: mbf.batch_norm(x, None, None, g, b, True),
         lambda x, g, b: F.batch_norm(x, None, None, g, b, True), (8, 64, 16, 16), (gamma, beta)),
        ("batch_norm eval", lambda x, g, b: mbf.batch_norm(x, torch.zeros_like(g), torch.ones_like(g), g, b),
         lambda x, g, b: F.batch_norm(x, torch.zeros_like(g), torch.ones_like(g), g, b), (8, 64, 16, 16),
         (gamma, beta)),
        ("relu", mbf.relu, F.relu, (8, 64, 16, 16), ()),
        ("max_pool2d 3/2", lambda x: mbf.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1),
         (8, 64, 32, 32), ()),
        ("adaptive_avg_pool2d 1", lambda x: mbf.adaptive_avg_pool2d(x, 1), lambda x: F.adaptive_avg_pool2d(x, 1),
         (8, 512, 2, 2), ()),
    ]


def _timed(function, input, parameters, grad_output):
    """A function that runs ``function(input, *parameters)`` forward and backward, returning seconds."""
    def run() -> float:
        started = time.perf_counter()
        function(input, *parameters).backward(grad_output)
        return time.perf_counter() - started

    return run


def bench_resnet18_layers(dtype=torch.float32, rounds: int = 11) -> dict:
    """Forward + backward of each layer kind, manualbp against the torch op, interleaved medians."""
    rows = {}
    for name, ours, theirs, shape, parameters in _layer_cases(dtype):
        x = torch.randn(*shape, dtype=dtype, requires_grad=True)
        grad_output = torch.randn_like(theirs(x, *parameters))

        times = {"manual": [], "native": []}
        runs = {side: _timed(function, x, parameters, grad_output)
                for side, function in (("manual", ours), ("native", theirs))}
        for run in runs.values():
            run()  # warm up
        for _ in range(rounds):
            for side, run in runs.items():
                times[side].append(run())
        manual, native = statistics.median(times["manual"]), statistics.median(times["native"])
        rows[name] = {"shape": list(shape), "manual_us": manual * 1e6, "native_us": native * 1e6,
                      "ratio": manual / native}
    return {"dtype": str(dtype).removeprefix("torch."), "rounds": rounds, "layers": rows}


def print_resnet18(report: dict) -> None:
    steps = report["steps"]
    load = steps["load_average"]
    print(f"One training step of manualbp.convert(torchvision resnet18(num_classes=10)) against the original, "
          f"{steps['optimizer']}, {steps['threads']} threads, median of {steps['rounds']} interleaved rounds of "
          f"{steps['steps_per_round']} steps, load average {load[0]:.1f} before, {load[1]:.1f} after\n")
    print("| dtype, batch | manualbp µs | torch.nn µs | manualbp / torch.nn | saved bytes manualbp "
          "| saved bytes torch.nn |")
    print("|---|---:|---:|---:|---:|---:|")
    for config, row in steps["steps"].items():
        print(f"| {config} | {row['manual_us']:,.0f} | {row['native_us']:,.0f} | {row['ratio']:.3f} | "
              f"{row['manual_saved_bytes']:,} | {row['native_saved_bytes']:,} |")
    layers = report["layers"]
    print(f"\nForward + backward per layer kind at ResNet-18's shapes, {layers['dtype']}, median of "
          f"{layers['rounds']} interleaved rounds\n")
    print("| layer | input | manualbp µs | torch µs | manualbp / torch |")
    print("|---|---|---:|---:|---:|")
    for name, row in layers["layers"].items():
        shape = "×".join(str(size) for size in row["shape"])
        print(f"| {name} | {shape} | {row['manual_us']:,.0f} | {row['native_us']:,.0f} | {row['ratio']:.2f} |")
