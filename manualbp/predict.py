"""Which digit is in your picture? ``python -m manualbp.predict CHECKPOINT image.png [more images]``

    $ python -m manualbp.predict outputs/mnist/runs/<time>/checkpoints/last.ckpt docs/pages/figures/seven.png
    docs/pages/figures/seven.png  7 99.9 %  2 0.1 %  3 0.0 %

CHECKPOINT is one written by ``python train.py model=mnist`` (any run on MNIST). Each image --
any size, colour or grey, dark on light or light on dark -- is brought to MNIST's form, as MNIST
itself was made: one grey channel, light digit on a dark background, the digit fitted into 20×20
pixels keeping its aspect ratio and placed in a 28×28 field so that its centre of mass is at its
centre (pixel (14, 14), as in MNIST); then standardised as the run standardised its training images.

Only torch and Pillow are imported: the checkpoint (verified as every reader verifies it:
``manualbp.checkpoint_file``) carries what is needed (the net's config, the
input's standardisation, the classes; written by ``manualbp.training.checkpoint.DescribeNetInCheckpoint``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from manualbp.checkpoint_file import CheckpointError, load_verified_checkpoint
from manualbp.errors import ManualbpError

DIGITS = "MNIST"  # the dataset whose classes are the digits 0-9
MNIST_SIZE, MNIST_BOX = 28, 20  # the field, and the box the digit is fitted into
MNIST_CENTRE = 14  # where MNIST's centres of mass are: 14.0 ± 0.3 pixels (rows and columns, from 0)


class PredictError(ManualbpError):
    """An image or checkpoint that cannot be used for predicting a digit."""


# ----------------------------------------------------------------------------------------------
# An image in MNIST's form
# ----------------------------------------------------------------------------------------------


def read_grey(path: str | Path) -> np.ndarray:
    """The image at ``path`` as grey levels (H, W) in [0, 1]; transparent parts count as white
    paper (a drawing on a transparent background)."""
    try:
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise PredictError(f"{path}: not an image Pillow can read ({error}); give a PNG or JPEG") from None
    if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float64) / 255.0


def to_mnist_form(grey: np.ndarray) -> np.ndarray:
    """A picture of one digit (H, W) in [0, 1] -> (28, 28) float32 in [0, 1] as in MNIST.

    The background is the border's median grey level: a light one is inverted (MNIST's digits are
    light on dark). The grey levels are stretched so that the background is 0 and the brightest
    stroke 1, the digit's bounding box is scaled (anti-aliased) so its longer side is 20 pixels,
    and the result is placed in 28×28 with its centre of mass at pixel (14, 14)."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    ink = grey - background if background < 0.5 else background - grey  # digit > 0, background 0
    ink = np.clip(ink, 0.0, None)
    if ink.max() < 0.1:
        raise PredictError("no digit found: the image is (almost) one flat grey level")
    ink = ink / ink.max()
    rows, columns = np.nonzero(ink > 0.1)  # the digit's bounding box, faint noise left out
    ink = ink[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    height, width = ink.shape
    scale = MNIST_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    box = Image.fromarray(np.round(ink * 255).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    box = np.asarray(box, dtype=np.float64) / 255.0
    total = box.sum()
    centre_row = (box.sum(axis=1) * np.arange(box.shape[0])).sum() / total
    centre_column = (box.sum(axis=0) * np.arange(box.shape[1])).sum() / total
    top = round(MNIST_CENTRE - centre_row)  # the centre of mass lands on pixel (14, 14), ± 0.5
    left = round(MNIST_CENTRE - centre_column)
    field = np.zeros((MNIST_SIZE, MNIST_SIZE))
    # A box of 20 fits wherever its centre of mass is, unless the mass sits near an edge: clip.
    row_slice = slice(max(0, top), min(MNIST_SIZE, top + box.shape[0]))
    column_slice = slice(max(0, left), min(MNIST_SIZE, left + box.shape[1]))
    field[row_slice, column_slice] = box[
        row_slice.start - top : row_slice.stop - top, column_slice.start - left : column_slice.stop - left
    ]
    return field.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The net of a checkpoint
# ----------------------------------------------------------------------------------------------


class DigitClassifier:
    """The net of a ``python train.py`` checkpoint of an MNIST run, with its input standardisation.

    ``probabilities(images)``: (N, 28, 28) in [0, 1] -> (N, 10) softmax of the net's outputs."""

    def __init__(self, checkpoint_path: str | Path) -> None:
        path = Path(checkpoint_path)
        if not path.is_file():
            raise PredictError(
                f"{path}: no such checkpoint; give one such as outputs/mnist/runs/<time>/checkpoints/last.ckpt"
            )
        # verified as train.py's resume and eval.py verify it: SHA-256 (.sha256 file), else CRC32
        try:
            checkpoint = load_verified_checkpoint(path, otherwise="train one with: python train.py model=mnist")
        except CheckpointError as error:
            raise PredictError(str(error)) from None
        description = checkpoint.get("manualbp")
        if description is None:
            raise PredictError(
                f"{path}: not a manualbp training checkpoint (it has no 'manualbp' entry describing its "
                f"net); train one with: python train.py model=mnist"
            )
        data = description.get("data") or {}
        if data.get("dataset") != DIGITS or data.get("image_shape") != [MNIST_SIZE, MNIST_SIZE]:
            trained_on = data.get("dataset") or data.get("name") or "no images"
            raise PredictError(
                f"{path}: not a digit classifier: model {description.get('model')} was trained on "
                f"{trained_on}; give a checkpoint of python train.py model=mnist"
            )
        self.mean, self.std = data["mean"], data["std"]
        self.classes = [str(index) for index in range(data["num_classes"])]
        self.net = build_net(description["net"])
        state = checkpoint["state_dict"]  # the LightningModule's: the net's entries are "net.<name>"
        weights = {key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")}
        self.net.load_state_dict(weights)
        self.net.eval()

    @torch.no_grad()
    def probabilities(self, images: np.ndarray) -> torch.Tensor:
        inputs = torch.as_tensor(images, dtype=torch.float32).flatten(1)  # (N, 784)
        inputs = (inputs - self.mean) / self.std  # as the run standardised its training images
        return torch.softmax(self.net(inputs), dim=1)


def build_net(config: dict) -> torch.nn.Module:
    """``config["_target_"](**the other keys)``: the net as ``conf/model/*.yaml`` built it."""
    module_name, _, class_name = config["_target_"].rpartition(".")
    net_class = getattr(importlib.import_module(module_name), class_name)
    return net_class(**{key: value for key, value in config.items() if not key.startswith("_")})


def predict(classifier: DigitClassifier, image_path: str | Path, top: int = 3) -> list[tuple[str, float]]:
    """The ``top`` most likely classes of the digit in ``image_path`` with their probabilities."""
    probabilities = classifier.probabilities(to_mnist_form(read_grey(image_path))[None])[0]
    values, indices = probabilities.topk(top)
    return [(classifier.classes[index], value) for index, value in zip(indices.tolist(), values.tolist(), strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m manualbp.predict",
        description="Print the three most likely digits of each image, by a net trained with "
        "python train.py model=mnist.",
    )
    parser.add_argument(
        "checkpoint", help="a checkpoint of an MNIST run, e.g. outputs/mnist/runs/<time>/checkpoints/last.ckpt"
    )
    parser.add_argument("images", nargs="+", help="pictures of one digit each (PNG, JPEG, ...)")
    arguments = parser.parse_args(argv)
    try:
        classifier = DigitClassifier(arguments.checkpoint)
    except PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    status = 0
    for image_path in arguments.images:
        try:
            ranked = predict(classifier, image_path)
        except PredictError as error:
            message = str(error) if str(error).startswith(str(image_path)) else f"{image_path}: {error}"
            print(f"error: {message}", file=sys.stderr)
            status = 1
            continue
        print(image_path + "  " + "  ".join(f"{digit} {100 * probability:.1f} %" for digit, probability in ranked))
    return status


if __name__ == "__main__":
    sys.exit(main())
