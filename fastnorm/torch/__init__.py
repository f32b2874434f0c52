"""PyTorch integration: autograd ops, drop-in ``nn`` modules and ``torch.optim`` optimizers on fastnorm.

Optional (``pip install 'fastnorm[torch]'``); ``import fastnorm`` never imports this package or torch.

- ``fastnorm.torch.functional``: ``layer_norm``, ``rms_norm``, ... with ``torch.nn.functional``'s signatures,
  differentiable (one ``torch.autograd.Function`` per op whose backward calls the fastnorm backward kernel),
  and registered as ``torch.library`` custom ops so ``torch.compile(fullgraph=True)`` traces them.
- ``fastnorm.torch.nn``: subclasses of the torch modules of the same name (same constructor arguments,
  parameters, buffers and state_dict keys) whose forward runs the fastnorm kernels.
- ``fastnorm.torch.losses``: ``cross_entropy``, ``kl_div``, ``js_div`` and their modules, the gradient fused
  into the forward pass; ``fastnorm.torch.transport``: differentiable ``wasserstein_1d`` and ``sinkhorn``;
  ``fastnorm.torch.distributed``: ``SyncBatchNorm`` on any ``torch.distributed`` backend (gloo included).
- ``fastnorm.torch.optim``: subclasses of the ``torch.optim`` optimizers of the same name whose ``step`` runs
  fastnorm's fused multi-tensor update; state dicts are interchangeable with torch's.

CPU tensors cross zero-copy through NumPy; CUDA tensors through ``__cuda_array_interface__``.
"""

from . import distributed, functional, losses, nn, optim, transport

__all__ = ["distributed", "functional", "losses", "nn", "optim", "transport"]
