"""manualbp's layers, one family per file; each file opens with its formulas.

* ``linear.py``: Z = X Wᵀ + b, and the slides' MNIST layer Z = f(X Wᵀ + b) fused with f = ReLU.
* ``activations.py``: sigmoid, ReLU, ELU.
* ``losses.py``: softmax + cross-entropy, softmax + L2, the Euclidean loss.
* ``mlp.py``: the MNIST_NN_manualBP slide, an MLP and its softmax cross-entropy, as one node
  (it calls the formulas of the three files above).
* ``base.py``: what they share, written once (the Function's eager/compile copies and autocast,
  the Module registry that ``convert``, ``to_torch``, the manual engine and ``MLP`` read).

The public API is :mod:`manualbp.functional` (functions) and :mod:`manualbp.nn` (Modules).
"""

from manualbp.layers import activations, linear, losses, mlp

__all__ = ["activations", "linear", "losses", "mlp"]
