"""The functional API: every layer's public function (``linear``, ``relu``, ...), its formula pair
(``<layer>_forward`` / ``<layer>_backward``, plain tensor functions like CS231n's
``affine_forward`` / ``affine_backward``) and its ``torch.autograd.Function``.

They are defined, one layer in one place, in :mod:`manualbp.layers` (``linear.py``,
``activations.py``, ``losses.py``); this module gathers them. Import it under a name of its own,
e.g. ``import manualbp.functional as mbf`` (``F`` is ``torch.nn.functional``).
"""

from manualbp import layers
from manualbp.layers.activations import *  # noqa: F403
from manualbp.layers.attention import *  # noqa: F403
from manualbp.layers.conv import *  # noqa: F403
from manualbp.layers.dropout import *  # noqa: F403
from manualbp.layers.elementwise import *  # noqa: F403
from manualbp.layers.embedding import *  # noqa: F403
from manualbp.layers.linear import *  # noqa: F403
from manualbp.layers.losses import *  # noqa: F403
from manualbp.layers.matmul import *  # noqa: F403
from manualbp.layers.mlp import *  # noqa: F403
from manualbp.layers.multihead_attention import *  # noqa: F403
from manualbp.layers.normalization import *  # noqa: F403
from manualbp.layers.pooling import *  # noqa: F403
from manualbp.layers.products import *  # noqa: F403
from manualbp.layers.reductions import *  # noqa: F403
from manualbp.layers.resampling import *  # noqa: F403
from manualbp.layers.shape import *  # noqa: F403
from manualbp.layers.softmax import *  # noqa: F403

__all__ = [name for family in layers.__all__ for name in getattr(layers, family).__all__]
