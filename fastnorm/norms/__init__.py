"""Public normalization ops: validate -> canonicalize shape -> allocate -> dispatch to a kernel.

Every op takes NumPy arrays (CPU kernels) or CUDA arrays (``__cuda_array_interface__``: Numba, CuPy,
PyTorch CUDA tensors; CUDA kernels), returns a named tuple of outputs, and accepts ``out=``: a tuple with
one entry per output, each None (allocate) or a C-contiguous, writeable buffer of the exact shape and dtype.
Non-contiguous, unaligned or byte-swapped inputs are copied to contiguous native arrays first; read-only
inputs are read in place. Gradients of absent parameters are None.

Empty inputs (a zero-sized dim anywhere) never reach a kernel; every output is defined, as in torch 2.13:
statistics of an empty reduction are ``mean = 0`` and ``rstd = NaN`` (torch's ``var = 0/0``), statistics
that do not reduce (evaluation mode) come from the running statistics, running statistics are not updated
by an empty batch, and parameter gradients are sums over no elements, i.e. 0.

One module per family (``layer_norm``, ``lrn``, ``weight_norm``, ``channel_norm``, ``add_norm``) holds the
op declarations (``fastnorm._spec.REGISTRY``) and the public functions; ``__all__`` is read from the
registry. The fused add + norm ops are exported by ``fastnorm.add_norm``.
"""

from __future__ import annotations

from .._spec import NORM, ops
from .._spec import AffineGrads as AffineGrads
from .._spec import NormStats as NormStats
from .._spec import ScaleGrads as ScaleGrads
from .._spec import ScaleStats as ScaleStats
from . import add_norm as add_norm
from . import channel_norm as channel_norm
from . import layer_norm as layer_norm
from . import lrn as lrn
from . import weight_norm as weight_norm
from .channel_norm import *  # noqa: F403
from .channel_norm import BatchNormBackward as BatchNormBackward
from .channel_norm import BatchNormForward as BatchNormForward
from .channel_norm import GroupNormBackward as GroupNormBackward
from .channel_norm import GroupNormForward as GroupNormForward
from .channel_norm import InstanceNormBackward as InstanceNormBackward
from .channel_norm import InstanceNormForward as InstanceNormForward
from .layer_norm import *  # noqa: F403
from .layer_norm import LayerNormBackward as LayerNormBackward
from .layer_norm import LayerNormForward as LayerNormForward
from .layer_norm import RMSNormBackward as RMSNormBackward
from .layer_norm import RMSNormForward as RMSNormForward
from .lrn import *  # noqa: F403
from .lrn import LocalResponseNormForward as LocalResponseNormForward
from .weight_norm import *  # noqa: F403
from .weight_norm import _WN_COLS as _WN_COLS
from .weight_norm import _WN_FLAT as _WN_FLAT
from .weight_norm import _WN_ROWS as _WN_ROWS
from .weight_norm import CosineLinearBackward as CosineLinearBackward
from .weight_norm import CosineLinearForward as CosineLinearForward
from .weight_norm import WeightNormBackward as WeightNormBackward
from .weight_norm import WeightNormForward as WeightNormForward
from .weight_norm import _weight_norm_plan as _weight_norm_plan
from .weight_norm import _weight_norm_view as _weight_norm_view

# The exported ops, read from the registry (the fused add + norm ops are exported by fastnorm.add_norm).
__all__ = [s.name for s in ops(group=NORM) if s.family != "add_norm"]
