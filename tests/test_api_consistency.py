"""One rule across ops where two ops used to disagree (the public Python layer).

- An elementwise upstream gradient (``dloss`` for reduction="none") is in the input's dtype, as torch's
  grad_output: softmax cross-entropy's backward and kl_div's / js_div's backwards refuse another dtype alike.
- ``batch_norm_gather_stats`` refuses running statistics in two different 16-bit formats (float32 running
  statistics beside 16-bit ones stay allowed).
- The backend attribute ``on_host`` (not the backend's name) decides how array-likes are taken.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm
from fastnorm import _dtypes
from fastnorm import _validation as V
from fastnorm._backend import CPU, Backend, host

BF16, F16 = _dtypes.BFLOAT16, _dtypes.FLOAT16


def _logits(rng, dtype, n=6, v=7):
    return rng.standard_normal((n, v)).astype(np.float32).astype(dtype)


# --------------------------------------------------------------------------------- dloss dtype rule
@pytest.mark.parametrize("dtype", [np.float32, np.float64, BF16, F16], ids=["f32", "f64", "bf16", "f16"])
def test_ce_backward_dloss_must_match_logits_dtype(rng, dtype):
    x = _logits(rng, dtype)
    t = np.array([0, 3, 6, 1, 2, 5])
    lse = fastnorm.softmax_cross_entropy_forward(x, t, reduction="none").lse
    other = np.float64 if np.dtype(dtype) != np.float64 else np.float32
    with pytest.raises(TypeError, match=rf"softmax_cross_entropy_backward: dloss has dtype {np.dtype(other).name}"):
        fastnorm.softmax_cross_entropy_backward(np.ones(6, other), x, t, lse, reduction="none")
    g = fastnorm.softmax_cross_entropy_backward(np.ones(6, dtype), x, t, lse, reduction="none")
    assert g.dtype == np.dtype(dtype)
    assert g.shape == x.shape
    # a reduced loss's dloss is a scalar of any real type (a Python float, a 0-d array of another dtype)
    lse_m = fastnorm.softmax_cross_entropy_forward(x, t).lse
    a = fastnorm.softmax_cross_entropy_backward(np.float64(0.5), x, t, lse_m)
    b = fastnorm.softmax_cross_entropy_backward(0.5, x, t, lse_m)
    np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["f32", "bf16"])
def test_divergence_backwards_share_the_dloss_rule(rng, dtype):
    """kl_div_backward, js_div_backward and softmax_cross_entropy_backward give the same kind of error for a
    float64 elementwise dloss beside float32 / bfloat16 input."""
    x = np.log(np.full((4, 5), 0.2)).astype(dtype)
    t = np.log(np.full((4, 5), 0.2)).astype(dtype)
    d64 = np.ones((4, 5), np.float64)
    for fn in (fastnorm.kl_div_backward, fastnorm.js_div_backward):
        with pytest.raises(TypeError, match=r"dloss has dtype float64 but must match the input's dtype"):
            fn(d64, x, t, reduction="none")
    xl = _logits(rng, dtype, 4, 5)
    labels = np.array([0, 1, 2, 3])
    lse = fastnorm.softmax_cross_entropy_forward(xl, labels, reduction="none").lse
    with pytest.raises(TypeError, match=r"dloss has dtype float64 but must match the input's dtype"):
        fastnorm.softmax_cross_entropy_backward(np.ones(4), xl, labels, lse, reduction="none")


def test_ce_backward_dloss_shape_still_checked(rng):
    x = _logits(rng, np.float32)
    t = np.array([0, 3, 6, 1, 2, 5])
    lse = fastnorm.softmax_cross_entropy_forward(x, t, reduction="none").lse
    with pytest.raises(ValueError, match=r"dloss must have shape \(6,\)"):
        fastnorm.softmax_cross_entropy_backward(np.ones(5, np.float32), x, t, lse, reduction="none")


def test_torch_cross_entropy_backward_keeps_working_in_bf16(monkeypatch):
    torch = pytest.importorskip("torch")
    from fastnorm.torch import losses

    seen = []
    backward = fastnorm.softmax_cross_entropy_backward

    def spy(dloss, *args, **kwargs):
        seen.append(dloss.dtype)
        return backward(dloss, *args, **kwargs)

    monkeypatch.setattr(fastnorm, "softmax_cross_entropy_backward", spy)
    x = torch.randn(5, 7, dtype=torch.bfloat16, requires_grad=True)
    t = torch.tensor([0, 6, 3, 2, 1])
    loss = losses.cross_entropy(x, t, reduction="none")
    loss.backward(torch.ones_like(loss))  # grad_output in the loss's (= logits') dtype, as torch passes it
    assert seen == [BF16]
    assert x.grad is not None
    assert x.grad.dtype == torch.bfloat16
    xr = x.detach().float().requires_grad_()
    torch.nn.functional.cross_entropy(xr, t, reduction="none").backward(torch.ones(5))
    assert torch.allclose(x.grad.float(), xr.grad, atol=2e-2, rtol=2e-2)


# ------------------------------------------------------------------- gather_stats running statistics
def _gather_inputs(rng, c=3, p=2):
    means = rng.standard_normal((p, c)).astype(np.float32)
    m2s = (rng.random((p, c)) + 0.5).astype(np.float32)
    return means, m2s, np.array([4.0, 5.0])


@pytest.mark.parametrize(("rm_dt", "rv_dt"), [(BF16, F16), (F16, BF16)], ids=["bf16+f16", "f16+bf16"])
def test_gather_stats_refuses_mixed_16bit_running_stats(rng, rm_dt, rv_dt):
    means, m2s, counts = _gather_inputs(rng)
    rm, rv = np.zeros(3, rm_dt), np.ones(3, rv_dt)
    rm0, rv0 = rm.copy(), rv.copy()
    with pytest.raises(TypeError, match=r"batch_norm_gather_stats: running_var has dtype .* but running_mean has"):
        fastnorm.batch_norm_gather_stats(means, m2s, counts, rm, rv)
    # nothing written
    np.testing.assert_array_equal(rm.view(np.uint16), rm0.view(np.uint16))
    np.testing.assert_array_equal(rv.view(np.uint16), rv0.view(np.uint16))


@pytest.mark.parametrize(
    ("rm_dt", "rv_dt"),
    [(BF16, BF16), (F16, F16), (np.float32, BF16), (F16, np.float32), (np.float32, np.float32)],
    ids=["bf16", "f16", "f32+bf16", "f16+f32", "f32"],
)
def test_gather_stats_accepts_one_16bit_format_and_float32(rng, rm_dt, rv_dt):
    means, m2s, counts = _gather_inputs(rng)
    rm, rv = np.zeros(3, rm_dt), np.ones(3, rv_dt)
    mean, invstd = fastnorm.batch_norm_gather_stats(means, m2s, counts, rm, rv, momentum=0.5)
    ref_m, ref_i = fastnorm.batch_norm_gather_stats(means, m2s, counts)
    np.testing.assert_array_equal(mean, ref_m)
    np.testing.assert_array_equal(invstd, ref_i)
    # the update happened (in place, in each buffer's own dtype)
    assert rm.dtype == np.dtype(rm_dt)
    assert rv.dtype == np.dtype(rv_dt)
    np.testing.assert_allclose(rm.astype(np.float64), 0.5 * mean.astype(np.float64), rtol=1e-2, atol=1e-3)


# ----------------------------------------------------------------------------------- backend attribute
def test_backends_declare_on_host():
    assert "on_host" in Backend.__annotations__
    assert CPU.on_host is True
    assert isinstance(CPU, Backend)


def test_float_input_array_likes_follow_on_host():
    a = V.float_input(CPU, "op", "x", [1.0, 2.0])
    assert isinstance(a, np.ndarray)
    assert a.dtype == np.float64
    swapped = np.arange(4, dtype=">f4")
    b = V.float_input(CPU, "op", "x", swapped)
    assert b.dtype.isnative
    assert b.dtype == np.float32
    np.testing.assert_array_equal(b, swapped)


def test_host_is_a_view_on_the_cpu():
    a = np.arange(5.0)
    assert host(CPU, a) is a


# ------------------------------------------------------------------------------- registry is the wiring
def test_every_declared_op_is_wired_from_the_registry():
    """A declaration is all the wiring a norm op needs in the public layer: exports, reference, and the
    docstring's out= entry rendered from the declared outputs."""
    import importlib

    from fastnorm._spec import NORM, ops

    assert ops(group=NORM)
    for spec in ops(group=NORM):  # the other groups: tests/contracts/test_declared_ops.py
        name = spec.name
        fn = getattr(fastnorm, name)
        assert name in fastnorm.__all__
        family = importlib.import_module(f"fastnorm.norms.{spec.family}")
        assert getattr(family, name) is fn
        assert name in family.__all__
        if spec.family == "add_norm":
            assert getattr(fastnorm.add_norm, name) is fn
            assert name in fastnorm.add_norm.__all__
        else:
            assert getattr(fastnorm.norms, name) is fn
            assert name in fastnorm.norms.__all__
        assert spec.reference is getattr(fastnorm.reference, name)
        doc = fn.__doc__
        assert "%(" not in doc, name
        assert "Parameters\n" in doc, name
        assert "Returns\n" in doc, name
        assert f"``({spec.output_names[0]}" in doc or f"``{spec.output_names[0]}``" in doc, name


def test_doc_fragments_render_with_the_placeholder_indent():
    from fastnorm import _doc

    def f():
        """Title.

        Parameters
        ----------
        %(normalized_ndim)s
        """

    text = _doc.fill_doc()(f).__doc__
    assert "        normalized_ndim : int\n            How many trailing dims" in text
    with pytest.raises(KeyError):
        _doc.render("    %(nope)s", _doc.FRAGMENTS)


def test_sinkhorn_return_plan_is_checked_by_the_flag_validator():
    a = np.full(3, 1 / 3)
    cost = np.arange(9.0).reshape(3, 3)
    with pytest.raises(TypeError, match=r"sinkhorn: return_plan must be a bool, got str 'yes'"):
        fastnorm.transport.sinkhorn(a, a, cost, 1.0, return_plan="yes")


# ----------------------------------------------------------------------------- the per-call fast paths
class _SpanBackend(type(CPU)):
    """The CPU backend with a byte-span primitive: ``V.outputs`` then compares integers, as on CUDA."""

    @staticmethod
    def span(a):
        lo = a.__array_interface__["data"][0]
        return lo, lo + a.nbytes


def test_a_backend_declares_every_fact_and_its_subclasses_inherit_them():
    from fastnorm._backend._base import BackendBase

    with pytest.raises(TypeError, match="Half must declare array_type, device, on_host, kernels"):

        class Half(BackendBase, name="half"):
            pass

    assert (_SpanBackend.name, _SpanBackend.on_host, _SpanBackend().kernels) == ("cpu", True, CPU.kernels)


def _outputs_error(be, out, inputs):
    specs = [("y", (4, 8), np.float32), ("mean", (4,), np.float32), ("rstd", (4,), np.float32)]
    try:
        V.outputs(be, "op", out, specs, inputs)
    except ValueError as e:
        return str(e)
    return None


def test_span_overlap_checks_say_what_the_pairwise_checks_say():
    buf = np.zeros(64, np.float32)
    x, w = np.zeros((4, 8), np.float32), np.zeros(8, np.float32)
    y, m, r = np.zeros((4, 8), np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32)
    cases = [
        (y, m, r),  # no overlap
        (y, buf[:4], buf[2:6]),  # two outputs share bytes
        (y, buf[:4], buf[4:8]),  # adjacent: no overlap
        (x, m, r),  # y is input #0
        (y, m, w[4:]),  # rstd overlaps input #2 (input #1 is None)
        (y, buf[:0], buf[:4]),  # a wrong shape is reported before any overlap
        (None, w[:4], w[:4]),  # mean's overlap with input #2 is reported before rstd's with mean
    ]
    span_be = _SpanBackend()
    assert CPU.span is None
    assert span_be.span is not None
    for out in cases:
        want = _outputs_error(CPU, out, (x, None, w))
        assert _outputs_error(span_be, out, (x, None, w)) == want
    assert "overlaps input #2" in _outputs_error(span_be, cases[4], (x, None, w))
    assert "out buffers for rstd and mean overlap" in _outputs_error(span_be, cases[1], (x, None, w))


def test_cached_layouts_follow_shapes_dtypes_and_attributes():
    spec = fastnorm.norms.layer_norm.LAYER_NORM_FWD
    x32, x64 = np.zeros((3, 4, 5), np.float32), np.zeros((3, 4, 5))
    for _ in range(2):  # the second round is served from the cache
        assert spec.layout_for(CPU, {"x": x32, "weight": None, "bias": None}, normalized_ndim=1) == [
            ("y", (3, 4, 5), np.float32),
            ("mean", (3, 4), np.float32),
            ("rstd", (3, 4), np.float32),
        ]
        assert spec.layout_for(CPU, {"x": x64, "weight": None, "bias": None}, normalized_ndim=2)[1] == (
            "mean",
            (3,),
            np.float64,
        )
        assert (
            spec.layout_for(CPU, {"x": x32.astype(BF16), "weight": None, "bias": None}, normalized_ndim=1)[2][2]
            == np.float32
        )
    # an unhashable attribute is not cached, and still gives the layout
    bwd = fastnorm.norms.layer_norm.LAYER_NORM_BWD
    arrays = {"dy": x32, "x": x32, "mean": None, "rstd": None, "weight": np.zeros(5, np.float32), "bias": None}
    assert bwd.layout_for(CPU, arrays, normalized_ndim=1, extra=[1])[1:] == [("dweight", (5,), np.float32), None]
