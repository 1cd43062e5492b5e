"""manualbp: the lecture's backpropagation formulas as drop-in PyTorch layers.

Each layer is defined in one place, in ``manualbp.layers`` (its formulas first). ``manualbp.functional``
gathers the public functions, formula pairs and autograd Functions, ``manualbp.nn`` the Modules;
``convert`` swaps them into an existing torch model.
"""

from manualbp import functional
from manualbp.coverage import CoverageReport, backward_coverage
from manualbp.mode import hand_written
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
from manualbp.per_example_gradients import clipped_gradients, per_example, per_example_norms

__all__ = [
    "functional",
    "convert",
    "hand_written",
    "per_example",
    "per_example_norms",
    "clipped_gradients",
    "backward_coverage",
    "CoverageReport",
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
