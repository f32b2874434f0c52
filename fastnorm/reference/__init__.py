"""NumPy reference implementations: the specification of every fastnorm op (NumPy only, no tricks)."""

from . import add_norm, divergence, norms, optim, sync_batch_norm, transport
from .add_norm import *  # noqa: F403
from .divergence import *  # noqa: F403
from .norms import *  # noqa: F403
from .optim import *  # noqa: F403
from .sync_batch_norm import *  # noqa: F403
from .transport import *  # noqa: F403

__all__ = [
    "optim",
    *norms.__all__,
    *add_norm.__all__,
    *optim.__all__,
    *sync_batch_norm.__all__,
    *divergence.__all__,
    *transport.__all__,
]
