"""Speed: one training step of ``python train.py model=gpt``'s GPT (manualbp.nn.GPT, cross-entropy
over its B·T next-character predictions, AdamW) against its torch.nn twin (``to_torch``: Embedding,
LayerNorm, MultiheadAttention, Linear, GELU; CrossEntropyLoss), same weights and batches,
interleaved in one process, at nanoGPT's CPU shape (batch 12 windows of 64 characters)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from manualbp.bench.speed import STEPS_PER_ROUND, step_row
from manualbp.reference import to_torch
from manualbp.training.config import build, compose_config

GPT_BATCH_SIZES = (12,)
VOCABULARY = 65  # tiny Shakespeare's characters


def default_gpt_model(vocab_size: int = VOCABULARY):
    """(net, loss, optimizer factory) exactly as ``python train.py model=gpt`` builds them for a
    text of ``vocab_size`` characters."""
    with tempfile.TemporaryDirectory() as scratch:
        cfg = compose_config(["model=gpt", f"model.net.vocab_size={vocab_size}"], Path(scratch))
        module = build(cfg.model)
    return module.net, module.loss, module.optimizer_factory


def random_windows(batch_size: int, block_size: int, count: int = STEPS_PER_ROUND + 1, vocab_size: int = VOCABULARY):
    """``count`` batches of random character windows (batch_size, block_size) and their next characters."""
    return [(torch.randint(0, vocab_size, (batch_size, block_size)),
             torch.randint(0, vocab_size, (batch_size, block_size))) for _ in range(count)]


def bench_gpt_steps(batch_sizes=GPT_BATCH_SIZES, rounds: int = 15, seed: int = 0) -> dict:
    """Training steps of the GPT config's net, manualbp against its torch.nn twin, interleaved in
    one process, same start weights and batches (see :func:`manualbp.bench.speed.training_run`)."""
    load_before = os.getloadavg()
    torch.manual_seed(seed)
    net, manual_loss, make_optimizer = default_gpt_model()
    nets = {"manual": net, "native": to_torch(net)}
    losses = {"manual": manual_loss, "native": to_torch(manual_loss)}
    steps = {}
    for batch_size in batch_sizes:
        batches = random_windows(batch_size, net.block_size)
        steps[str(batch_size)] = step_row(nets, losses, make_optimizer, batches, rounds)
    return {
        "steps": steps,
        "rounds": rounds,
        "steps_per_round": STEPS_PER_ROUND,
        "threads": torch.get_num_threads(),
        "model": f"conf/model/gpt.yaml: manualbp.nn.GPT (4 layers, 4 heads, width 128, context {net.block_size}, "
                 f"{VOCABULARY} characters), cross-entropy",
        "native": "manualbp.reference.to_torch of the same net: torch.nn Embedding, LayerNorm, MultiheadAttention "
                  "(PyTorch's fused CPU attention), Linear, GELU; torch.nn.CrossEntropyLoss",
        "optimizer": type(make_optimizer([torch.nn.Parameter(torch.zeros(1))])).__name__,
        "load_average": [load_before[0], os.getloadavg()[0]],
    }


def print_gpt_steps(report: dict) -> None:
    load = report["load_average"]
    print(f"One training step of {report['model']}, optimizer {report['optimizer']}, against {report['native']}")
    print(f"{report['threads']} threads, median of {report['rounds']} interleaved rounds of "
          f"{report['steps_per_round']} steps on fresh random windows from the same start, "
          f"load average {load[0]:.1f} before, {load[1]:.1f} after\n")
    print("| batch | manualbp µs | torch.nn µs | manualbp / torch.nn | saved bytes manualbp | saved bytes torch.nn |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch, row in report["steps"].items():
        print(f"| {batch} | {row['manual_us']:,.0f} | {row['native_us']:,.0f} | {row['ratio']:.3f} | "
              f"{row['manual_saved_bytes']:,} | {row['native_saved_bytes']:,} |")
