"""Public batch_norm / instance_norm / group_norm forward and backward on device arrays vs the same calls
on NumPy arrays (the CPU kernels, themselves tested against the references and torch): training with
running statistics updated in place, evaluation, channels-last BatchNorm, affine on and off."""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm

from ._half_util import channel_data
from .conftest import host

pytestmark = pytest.mark.usefixtures("small_channel_blocks")


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


def _same(got, want, dtype, what):
    """Device results (a NamedTuple) equal to the CPU ones, field by field (None where the CPU has None)."""
    assert type(got) is type(want)
    for field, g, w in zip(want._fields, got, want, strict=True):
        if w is None:
            assert g is None, f"{what}.{field}"
            continue
        assert not isinstance(g, np.ndarray), f"{what}.{field} came back on the host"
        g = host(g)
        assert g.shape == w.shape, f"{what}.{field}"
        assert g.dtype == w.dtype, f"{what}.{field}"
        np.testing.assert_allclose(g, w, err_msg=f"{what}.{field}", **_tol(dtype))


def test_mixing_host_and_device_raises(rng, on_gpu):
    x, _, w, b, rm, rv = channel_data(rng, (2, 3, 4), 3, np.float32)
    before = rm.copy()
    with pytest.raises(TypeError, match="batch_norm_forward: .*different devices.*running_mean"):
        fastnorm.batch_norm_forward(on_gpu(x), on_gpu(w), on_gpu(b), rm, on_gpu(rv))
    np.testing.assert_array_equal(rm, before)
    with pytest.raises(TypeError, match="group_norm_forward: .*different devices"):
        fastnorm.group_norm_forward(on_gpu(x), 3, w)
