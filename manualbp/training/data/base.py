"""What every DataModule of the lecture's examples tells the rest of the trainer.

``train()`` reads these and nothing else: no ``isinstance`` on DataModules, no sentinel values.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

TASKS = ("multiclass", "binary", "regression", "next_token")


class LectureDataModule(L.LightningDataModule):
    """A LightningDataModule that also says what the net must look like and what to show.

    Subclasses set, in ``__init__``:

    * ``input_size``: features per example; the net's first layer must take this many.
    * ``output_size``: the net's outputs per example: C logits (multiclass), 1 probability
      (binary), the target's width (regression).
    * ``task``: one of TASKS; the LightningModule measures accuracy for the two classification
      tasks (``binary``: outputs (N, 1) in [0, 1], targets (N, 1) in {0, 1}; ``multiclass``:
      logits (N, C), targets (N,) class indices or (N, C) one-hot rows).
    * ``num_classes``: C for classification, None for regression.
    * ``description``: where the data came from, for results.json (``"data"``).

    ``next_token`` (text): inputs (B, T) token indices, targets (B, T) the next tokens; the net
    gives logits (B, T, C) and the loss takes them as B·T rows; no accuracy, the loss is the
    measure. ``input_size`` may be None where the net's first layer is not a Linear over features.

    and may override ``report`` (results.json entries about the trained net on this data) and
    ``draw_figures`` (the task's own pictures of the trained net).
    """

    input_size: int
    output_size: int
    task: str
    num_classes: int | None

    @property
    def description(self) -> str:
        return type(self).__name__

    def net_settings(self) -> dict:
        """Settings of the net that the data fixes (a text's ``vocab_size``): ``train()`` fills
        them into ``model.net`` where the config leaves them null (none by default)."""
        return {}

    def report(self, module: L.LightningModule) -> dict:
        """Entries for results.json about the trained ``module`` on this data (none by default)."""
        return {}

    def draw_figures(self, net: torch.nn.Module, figure_dir: Path) -> list[Path]:
        """The task's pictures of the trained ``net`` (in eval mode, under no_grad), saved in
        ``figure_dir``; returns their paths (none by default)."""
        return []
