"""What a checkpoint says about itself, so that it can be used without its run folder, Lightning
or Hydra (``python -m manualbp.predict CHECKPOINT image.png``)."""

from __future__ import annotations

import lightning as L
from omegaconf import DictConfig, OmegaConf


class DescribeNetInCheckpoint(L.Callback):
    """Adds ``checkpoint["manualbp"]`` to every checkpoint: plain Python values (readable with
    ``torch.load(..., weights_only=True)``)::

        {"model": "mnist",
         "net": {"_target_": "manualbp.nn.MLP", "sizes": [784, 512, 256, 10], ...},
         "data": {"name": "MNIST", "dataset": "MNIST", "task": "multiclass", "num_classes": 10,
                  "image_shape": [28, 28], "mean": 0.1307, "std": 0.3081}}

    ``net``: the model's ``net`` config (``conf/model/<name>.yaml``), resolved; ``data``: what the
    data module tells (``mean``/``std``: the standardisation of its training images; the image
    entries are None for data that are not images; ``vocabulary``: a text's characters in index
    order, for ``python -m manualbp.sample``).
    """

    def __init__(self, net: DictConfig | dict) -> None:
        self.net = OmegaConf.to_container(net, resolve=True) if isinstance(net, DictConfig) else dict(net)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        data = trainer.datamodule
        dataset_class = getattr(data, "dataset_class", None)
        image_shape = getattr(data, "image_shape", None)
        checkpoint["manualbp"] = {
            "model": getattr(pl_module, "name", None),
            "net": self.net,
            "data": {
                "name": type(data).__name__,
                "dataset": dataset_class.__name__ if dataset_class is not None else None,
                "task": getattr(data, "task", None),
                "num_classes": getattr(data, "num_classes", None),
                "image_shape": list(image_shape) if image_shape is not None else None,
                "mean": getattr(data, "mean", None),
                "std": getattr(data, "std", None),
                "vocabulary": getattr(data, "vocabulary", None),  # a text's characters, in index order
                "corpus": getattr(data, "corpus", None),  # which text (its file), for the vocabulary check
            },
        }
