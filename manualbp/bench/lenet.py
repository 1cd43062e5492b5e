"""Speed: one training step of ``python train.py model=lenet``'s conv net (manualbp.nn.LeNet,
softmax cross-entropy) against the same net of torch.nn built-ins (``to_torch``: Conv2d, ReLU,
MaxPool2d, Linear, CrossEntropyLoss), same weights and batches, interleaved in one process."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from manualbp.bench.speed import STEPS_PER_ROUND, random_batches, step_row
from manualbp.reference import to_torch
from manualbp.training.config import build, compose_config

LENET_BATCH_SIZES = (128, 512)


def default_lenet_model():
    """(net, loss, optimizer factory) exactly as ``python train.py model=lenet`` builds them."""
    with tempfile.TemporaryDirectory() as scratch:
        module = build(compose_config(["model=lenet"], Path(scratch)).model)
    return module.net, module.loss, module.optimizer_factory


def bench_lenet_steps(batch_sizes=LENET_BATCH_SIZES, rounds: int = 15, seed: int = 0) -> dict:
    """Training steps of the LeNet config's net, manualbp against torch.nn, interleaved in one
    process, same start weights and batches ((N, 784) rows, as the data module serves them).
    See :func:`manualbp.bench.speed.training_run` for what one round times."""
    load_before = os.getloadavg()
    torch.manual_seed(seed)
    net, manual_loss, make_optimizer = default_lenet_model()
    nets = {"manual": net, "native": to_torch(net)}
    losses = {"manual": manual_loss, "native": to_torch(manual_loss)}
    steps = {}
    for batch_size in batch_sizes:
        steps[str(batch_size)] = step_row(nets, losses, make_optimizer, random_batches(batch_size), rounds)
    return {
        "steps": steps,
        "rounds": rounds,
        "steps_per_round": STEPS_PER_ROUND,
        "threads": torch.get_num_threads(),
        "model": "conf/model/lenet.yaml: manualbp.nn.LeNet (conv 5x5 6 - ReLU - max pool 2 - conv 5x5 16 - ReLU - "
                 "max pool 2 - 400-120-84-10), softmax cross-entropy",
        "native": "manualbp.reference.to_torch of the same net: torch.nn Conv2d, ReLU, MaxPool2d, Linear; "
                  "torch.nn.CrossEntropyLoss",
        "optimizer": type(make_optimizer([torch.nn.Parameter(torch.zeros(1))])).__name__,
        "load_average": [load_before[0], os.getloadavg()[0]],  # 1-minute load, before and after
    }


def print_lenet_steps(report: dict) -> None:
    load = report["load_average"]
    print(f"One training step of {report['model']}, optimizer {report['optimizer']}, against {report['native']}")
    print(f"{report['threads']} threads, median of {report['rounds']} interleaved rounds of "
          f"{report['steps_per_round']} steps on fresh random batches from the same start, "
          f"load average {load[0]:.1f} before, {load[1]:.1f} after\n")
    print("| batch | manualbp µs | torch.nn µs | manualbp / torch.nn | saved bytes manualbp | saved bytes torch.nn |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch, row in report["steps"].items():
        print(f"| {batch} | {row['manual_us']:,.0f} | {row['native_us']:,.0f} | {row['ratio']:.3f} | "
              f"{row['manual_saved_bytes']:,} | {row['native_saved_bytes']:,} |")
