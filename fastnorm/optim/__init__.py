"""Optimizers: fused multi-tensor steps and ``torch.optim``-style classes, on NumPy or CUDA arrays.

Names, hyperparameters, defaults and update formulas are ``torch.optim``'s (``fastnorm.reference.optim``
holds them as plain NumPy), so switching gives the same numbers. Every step updates all tensors of a
parameter group in one kernel call: the kernel gets a table of the arrays' addresses and walks them as
one flat index space, one streaming pass per tensor (p, g and the state read once, written once).

Functional steps update lists of arrays in place::

    sgd_step(params, grads, momentum_buffers=None, *, lr, momentum, dampening, weight_decay, nesterov,
             maximize)
    adagrad_step(params, grads, state_sums, *, step, lr, lr_decay, weight_decay, eps, maximize)
    adadelta_step(params, grads, square_avgs, acc_deltas, *, lr, rho, eps, weight_decay, maximize)
    rmsprop_step(params, grads, square_avgs, grad_avgs=None, momentum_buffers=None, *, lr, alpha, eps,
                 weight_decay, momentum, centered, maximize)
    adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, step, lr, beta1, beta2, eps,
              weight_decay, amsgrad, maximize, decoupled_weight_decay)
    adamw_step(...)   # adam_step with decoupled weight decay, weight_decay=1e-2

The classes ``SGD``, ``Adagrad``, ``Adadelta``, ``RMSprop``, ``Adam``, ``AdamW`` keep the state::

    opt = Adam(params, lr=1e-3)          # params: a list of arrays, or a list of dicts (parameter groups)
    opt.step(grads)                      # grads: one array (or None: skipped) per parameter, in order
    opt.param_groups[0]["lr"] = 1e-4     # hyperparameters are read at every step (schedulers work)
    sd = opt.state_dict(); opt.load_state_dict(sd)

Arrays: parameters and state must be C-contiguous, writeable float32/float64 NumPy arrays, or
bfloat16 (``ml_dtypes.bfloat16``) / float16 parameters with float32 state (see below) (updated in
place; they cannot be copied), or all CUDA arrays (anything with ``__cuda_array_interface__``: Numba
device arrays, CuPy arrays, PyTorch CUDA tensors), which run the same steps on the GPU (state the
classes allocate is then Numba device arrays; ``state_dict()`` returns host NumPy copies). Mixing host
and device arrays in one call is a ``TypeError`` naming the argument. State has its parameter's shape
and dtype (float32 for a 16-bit parameter); gradients must match their parameter's shape and dtype (or
be float32 beside a 16-bit parameter; a gradient that is non-contiguous,
not aligned to its element size, or byte-swapped is copied in). Parameters and state, updated in place,
must be native-endian, aligned, C-contiguous and writeable: otherwise a ``ValueError`` names the argument
and the reason. Hyperparameters are numbers (Python or NumPy scalars, 0-d arrays), read by value and
checked at every step; each algorithm declares them once, with defaults and valid ranges, in ``ALGOS``.
Scalar constants (bias corrections, lr * weight_decay) are computed in double and rounded to the
parameter's dtype once. Everything is checked before anything is written: a bad argument raises
``TypeError`` (type, dtype) or ``ValueError`` (shape, layout, value) and leaves parameters and state
untouched.

16-bit parameters (bfloat16, float16)
-------------------------------------
A bfloat16 or float16 parameter keeps float32 state; its gradient may be 16-bit or float32. A step widens
the parameter (and a 16-bit gradient) to float32 exactly, runs the float32 update (the very operations
of the float32 path) and writes the result back:

- by default rounded to nearest even (NaN kept);
- ``master_weights=True`` (classes; functional steps: ``master_params``, a float32 array per 16-bit
  parameter, None beside float32/float64 ones): the float32 master copy is what the step reads and updates,
  and the parameter receives ``round_to_nearest_even(master)`` in the same pass (apex's / torch's
  mixed-precision recipe: the master trajectory is bitwise the float32 optimizer's). The classes create
  the master from the parameter at its first step and keep it in the state under ``"master_param"``
  (``MASTER``), which ``state_dict`` returns and ``load_state_dict`` checks like the other state (required
  for a 16-bit parameter of a group with ``master_weights``, refused otherwise). With float32/float64
  parameters the option is a no-op (no copy is kept);
- ``stochastic_rounding=True`` (pure 16-bit training): the write rounds the float32 result to one of its two
  16-bit neighbours, the upper with probability equal to the distance from the lower over their spacing
  (bfloat16: 16 random bits added below the kept mantissa, then truncated; float16: the same probability,
  compared with 24 random bits; inf, NaN and float16 values beyond 65504 round to nearest), so the
  rounding is unbiased. The random bits are a counter-based hash (splitmix64) of (seed, step, tensor index,
  element index), see ``rounding_keys``: reproducible for a seed, independent of the thread count and of
  the chunking. The classes use their group's ``seed`` (default 0), each parameter's step count (SGD
  counts steps too, and keeps ``step`` in its state dict when ``stochastic_rounding``) and the parameter's
  position across groups; the functional steps use ``seed``, the ``step`` argument (1 for the steps
  without one: pass a different ``seed`` at every call) and the position in the list. Combined with
  ``master_weights`` it is a ``ValueError`` (the master already carries the exact value); with
  float32/float64 parameters it is a no-op.

The gradient-descent family in these terms
------------------------------------------
- Full-batch gradient descent, stochastic gradient descent and mini-batch SGD are all ``SGD`` (with
  ``momentum=0``: ``p -= lr * g``); they differ only in the gradient the caller passes: of the loss on
  the whole training set, on one example, or averaged over a mini-batch.
- Momentum (heavy ball): textbooks often write ``m = mu * m + lr * g; p -= m``. torch (and fastnorm)
  keep ``b = mu * b + g; p -= lr * b``. With a constant learning rate the two are the same method,
  ``m = lr * b``; when lr changes, the torch form rescales the past too (``m`` keeps old steps at their
  old lr). ``dampening = mu`` turns ``b`` into an exponential average of the gradients.
- Nesterov momentum: the look-ahead form ``v = mu * v - lr * grad(p + mu * v); p += v`` evaluates the
  gradient at the look-ahead point. ``nesterov=True`` stores that point instead: with ``q = p + mu * v``
  and ``v = -lr * b`` it becomes ``b = mu * b + grad(q); q -= lr * (grad(q) + mu * b)``, so the parameter
  held is the look-ahead one and the gradient is taken where it is (constant lr; the two trajectories
  meet at the end because ``p = q - mu * v``).

Layout: ``_algos`` (the declarations), ``_plan`` (address tables and kernel launches), ``functional``
(the steps), ``_doc`` (the steps' shared docstring entries), ``optimizer`` (the classes). The classes and
the functional steps check the hyperparameters with the same declaration and run the same plan runner.
"""

from __future__ import annotations

from ._algos import ALGOS, MASTER, Algo, Hp
from ._algos import PRECISION as _PRECISION
from ._algos import check_options as _check_options
from ._algos import check_precision as _precision
from ._plan import rounding_keys
from .functional import adadelta_step, adagrad_step, adam_step, adamw_step, rmsprop_step, sgd_step
from .optimizer import CLASSES, SGD, Adadelta, Adagrad, Adam, AdamW, Optimizer, RMSprop

__all__ = [
    "sgd_step",
    "adagrad_step",
    "adadelta_step",
    "rmsprop_step",
    "adam_step",
    "adamw_step",
    "Optimizer",
    "SGD",
    "Adagrad",
    "Adadelta",
    "RMSprop",
    "Adam",
    "AdamW",
    "MASTER",
    "rounding_keys",
]
# the declarations, read by fastnorm.torch.optim and the tests
_ = (ALGOS, CLASSES, Algo, Hp, _PRECISION, _precision, _check_options)
