"""manualbp's layers, one family per file; each file opens with its formulas.

* ``linear.py``: Z = X Wᵀ + b, and the slides' MNIST layer Z = f(X Wᵀ + b) fused with f = ReLU.
* ``activations.py``: sigmoid, ReLU, ELU, tanh, leaky ReLU, GELU, SiLU, hardtanh / ReLU6.
* ``matmul.py``: the matrix product C = A B, the linear layer for two inputs that learn.
* ``attention.py``: scaled dot-product attention, softmax(Q Kᵀ·s + M) V.
* ``multihead_attention.py``: multi-head attention, from the linear and attention layers.
* ``elementwise.py``: tensor arithmetic A·B, A/B, A + αB, −A, powers, roots, exp, log, |A|, clamp,
  broadcasting (δ summed over the broadcast dimensions).
* ``products.py``: β·C + α·A B (addmm, baddbmm), einsum.
* ``resampling.py``: nearest and bilinear resizing (interpolate, Upsample), Z = R_h X R_wᵀ.
* ``reductions.py``: sum, mean, variance, standard deviation, max / min over dimensions, normalize.
* ``softmax.py``: softmax and log-softmax over any dimension.
* ``embedding.py``: the table lookup Z = W[i], the linear layer of a one-hot input.
* ``conv.py``: 2-D convolution, the linear layer at every patch; 1-D as a 1 × L image.
* ``pooling.py``: max, average and adaptive average 2-D pooling.
* ``normalization.py``: batch norm (N, C) and (N, C, H, W); layer norm over the last dimensions;
  group norm (layer norm per group of channels).
* ``dropout.py``: dropout (its mask an input of the Function).
* ``shape.py``: Flatten, Unflatten.
* ``losses.py``: softmax + cross-entropy, softmax + L2, the Euclidean loss.
* ``mlp.py``: the MNIST_NN_manualBP slide, an MLP and its softmax cross-entropy, as one node
  (it calls the formulas of the three files above).
* ``base.py``: what they share, written once (the Function's eager/compile copies and autocast,
  the Module registry that ``convert``, ``to_torch``, the manual engine and ``MLP`` read).

The public API is :mod:`manualbp.functional` (functions) and :mod:`manualbp.nn` (Modules).
"""

from manualbp.layers import (
    activations,
    attention,
    conv,
    dropout,
    elementwise,
    embedding,
    linear,
    losses,
    matmul,
    mlp,
    multihead_attention,
    normalization,
    pooling,
    products,
    reductions,
    resampling,
    shape,
    softmax,
)

__all__ = [
    "activations", "attention", "conv", "dropout", "elementwise", "embedding", "linear", "losses", "matmul", "mlp",
    "multihead_attention", "normalization", "pooling", "products", "reductions", "resampling", "shape",
    "softmax",
]
