"""The "Draw a digit" tab: a drawing from the page, brought to MNIST's form by ``manualbp.predict``'s
own preprocessing, classified by a ``python train.py model=mnist`` checkpoint, and one backward pass
through its MLP by the explicit engine (``manual.backprop_trace``) for the label the user picks:
δ of every layer, and δ of the 784 input pixels as a heat map."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from manualbp.manual import backprop_trace
from manualbp.nn import SoftmaxCrossEntropyLoss
from manualbp.playground.lab import ParameterError, _finite, sub
from manualbp.predict import DigitClassifier, PredictError, read_grey, to_mnist_form

MAX_IMAGE_BYTES = 2_000_000  # a 280×280 canvas as PNG is ~10-30 kB
MAX_IMAGE_SIDE = 2000
DATA_URL_PREFIX = "data:image/png;base64,"


def decode_drawing(data_url) -> np.ndarray:
    """A PNG data URL from the page's canvas -> grey levels (H, W) in [0, 1], as ``read_grey`` reads
    a file (transparent parts count as white paper)."""
    if not isinstance(data_url, str) or not data_url.startswith(DATA_URL_PREFIX):
        raise ParameterError("image: expected the canvas as a PNG data URL (data:image/png;base64,...)")
    if len(data_url) > MAX_IMAGE_BYTES * 4 // 3 + len(DATA_URL_PREFIX) + 4:
        raise ParameterError(f"image: larger than {MAX_IMAGE_BYTES} bytes; draw on the page's canvas")
    try:
        data = base64.b64decode(data_url[len(DATA_URL_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ParameterError("image: not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only: the size, before decoding
            if image.format != "PNG" or max(image.size) > MAX_IMAGE_SIDE:
                raise ParameterError(f"image: expected a PNG of at most {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} pixels")
    except Image.DecompressionBombError:  # Pillow refuses headers claiming over ~180 M pixels before decoding
        raise ParameterError(f"image: expected a PNG of at most {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} pixels, "
                             f"its header claims more than Pillow will decode") from None
    except (UnidentifiedImageError, OSError):
        raise ParameterError("image: not a PNG image Pillow can read") from None
    try:
        return read_grey(io.BytesIO(data))
    except PredictError as error:
        raise ParameterError(f"image: {error}") from None


class DigitLab:
    """A checkpoint's net, ready to classify drawings and to backpropagate a chosen label."""

    def __init__(self, checkpoint_path) -> None:
        self.path = str(checkpoint_path)
        self.classifier = DigitClassifier(checkpoint_path)
        self.net = self.classifier.net
        if not isinstance(self.net, torch.nn.Sequential):
            raise PredictError(f"{checkpoint_path}: the playground shows the δ's of an MLP checkpoint (model=mnist)")

    def describe(self) -> dict:
        layers = [type(layer).__name__ for layer in self.net]
        return {"checkpoint": self.path, "layers": layers, "classes": self.classifier.classes}

    @torch.no_grad()
    def analyse(self, data_url, label=None) -> dict:
        """Prediction, the 28×28 input, and the δ's of one backward pass of L = cross-entropy(label)
        (the predicted digit when ``label`` is None)."""
        if label is not None and (isinstance(label, bool) or not isinstance(label, int)
                                  or not 0 <= label < len(self.classifier.classes)):
            raise ParameterError(f"label: expected a digit from 0 to {len(self.classifier.classes) - 1}, got {label!r}")
        try:
            field = to_mnist_form(decode_drawing(data_url))  # (28, 28) in [0, 1], as MNIST
        except PredictError as error:
            raise ParameterError(f"drawing: {error}; draw a digit on the canvas first") from None
        probabilities = self.classifier.probabilities(field[None])[0]
        predicted = int(probabilities.argmax())
        target = predicted if label is None else label
        parameter = next(self.net.parameters())
        inputs = torch.as_tensor(field, dtype=parameter.dtype).flatten()[None]
        inputs = (inputs - self.classifier.mean) / self.classifier.std  # as predict standardises
        trace = backprop_trace(self.net, SoftmaxCrossEntropyLoss(), inputs, torch.tensor([target]))
        # δ of the pixel p in [0, 1]: the standardised input is X = (p − mean)/std, so δp = δX / std
        pixel_grad = trace.input_grad[0] / self.classifier.std
        return {
            "input": _finite(torch.as_tensor(field)),
            "probabilities": _finite(probabilities),
            "predicted": predicted,
            "label": target,
            "loss": float(trace.loss),
            "pixelDelta": _finite(pixel_grad.reshape(28, 28)),
            "layers": [
                {"name": f"Z{sub(index + 1)} ({type(layer).__name__}, {output.shape[1]} values)",
                 "deltaNorm": float(grad.norm()) if grad is not None else None}
                for index, (layer, output, grad) in enumerate(zip(self.net, trace.outputs, trace.output_grads,
                                                                  strict=True))
            ],
        }
