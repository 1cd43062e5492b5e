"""manualbp: the lecture's backpropagation formulas as drop-in PyTorch layers.

``manualbp.functional`` holds the formulas and the autograd Functions built on them,
``manualbp.nn`` the Modules; ``convert`` swaps them into an existing torch model.
"""

from manualbp import functional
from manualbp.nn import (
    ELU,
    MLP,
    EuclideanLoss,
    Linear,
    LinearReLU,
    ReLU,
    Sigmoid,
    SoftmaxCrossEntropyLoss,
    SoftmaxEuclideanLoss,
    convert,
)

__all__ = [
    "functional",
    "convert",
    "Linear",
    "LinearReLU",
    "Sigmoid",
    "ReLU",
    "ELU",
    "SoftmaxCrossEntropyLoss",
    "SoftmaxEuclideanLoss",
    "EuclideanLoss",
    "MLP",
]
