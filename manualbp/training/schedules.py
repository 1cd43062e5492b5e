"""Learning-rate schedules the configs name that torch.optim has only as parts."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from manualbp.errors import ConfigError


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_lr: float) -> SequentialLR:
    """nanoGPT's schedule from torch's own schedulers: the learning rate rises linearly from ~0 to
    the optimizer's for ``warmup_steps`` steps (LinearLR), then falls along a cosine to ``min_lr``
    at ``total_steps`` (CosineAnnealingLR); step it every batch. A run shorter than its warm-up
    (a quick try: trainer.max_steps=50) warms up for a tenth of its steps instead."""
    if warmup_steps < 0 or total_steps < 1:
        raise ConfigError(f"warmup_cosine: expected warmup_steps ≥ 0 and total_steps ≥ 1, got {warmup_steps} and "
                          f"{total_steps}")
    if warmup_steps >= total_steps:
        warmup_steps = total_steps // 10
    warmup = LinearLR(optimizer, start_factor=1 / (warmup_steps + 1), end_factor=1.0, total_iters=warmup_steps)
    decay = CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=min_lr)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])
