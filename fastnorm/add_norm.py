"""Fused residual add + LayerNorm / RMSNorm (``fastnorm.norms.add_norm``; this import path is kept)."""

from ._spec import ops
from .norms.add_norm import *  # noqa: F403
from .norms.add_norm import AddLayerNormBackward as AddLayerNormBackward
from .norms.add_norm import AddLayerNormForward as AddLayerNormForward
from .norms.add_norm import AddRMSNormBackward as AddRMSNormBackward
from .norms.add_norm import AddRMSNormForward as AddRMSNormForward

__all__ = [s.name for s in ops("add_norm")]
