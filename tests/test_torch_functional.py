"""fastnorm.torch.functional: gradcheck (float64) for every op, agreement with torch.nn.functional,
torch.compile (fullgraph, the custom ops in the traced graphs), torch.library.opcheck, bad input."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

import fastnorm

from ._util import assert_close_to_ref, capture_backend

torch = pytest.importorskip("torch")
TF = torch.nn.functional
FF = pytest.importorskip("fastnorm.torch.functional")
B = pytest.importorskip("fastnorm.torch._bind").BINDINGS
REGISTRY = fastnorm._spec.REGISTRY


@dataclass
class Case:
    make: Callable  # (generator, dtype) -> dict of tensors
    call: Callable  # (functional module, dict) -> output: run on fastnorm.torch.functional and on torch's
    op: str  # the op pair whose custom ops (<op>_forward, <op>_backward) the compiled graphs must hold
    torch_call: Callable | None = None  # dict -> output, where torch's spelling differs

    def fast(self, a):
        return self.call(FF, a)

    def ref(self, a):
        return self.torch_call(a) if self.torch_call else self.call(TF, a)

    @property
    def ops(self) -> tuple:
        return (f"{self.op}_forward", f"{self.op}_backward")


def _t(gen, shape, dtype, scale=1.0, shift=0.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype).requires_grad_()


def _ln_make(affine, bias):
    def make(gen, dt):
        d = {"x": _t(gen, (3, 5, 7), dt)}
        d["weight"] = _t(gen, (5, 7), dt) if affine else None
        d["bias"] = _t(gen, (5, 7), dt) if bias else None
        return d

    return make


def _rms_make(affine):
    def make(gen, dt):
        return {"x": _t(gen, (4, 9), dt), "weight": _t(gen, (9,), dt) if affine else None}

    return make


def _buf(gen, shape, dtype, positive=False):
    t = torch.randn(shape, generator=gen, dtype=torch.float64)
    return (t.abs() + 0.5 if positive else t).to(dtype)


def _bn_make(shape, affine=True, running=True):
    def make(gen, dt):
        c = shape[1]
        d = {"x": _t(gen, shape, dt)}
        d["weight"] = _t(gen, (c,), dt) if affine else None
        d["bias"] = _t(gen, (c,), dt) if affine else None
        d["running_mean"] = _buf(gen, (c,), dt) if running else None
        d["running_var"] = _buf(gen, (c,), dt, positive=True) if running else None
        return d

    return make


def _bn(name, training, momentum=0.1, eps=1e-5):
    """batch_norm / instance_norm with torch's positional arguments."""

    def call(F, a):
        args = (a["running_mean"], a["running_var"], a["weight"], a["bias"], training, momentum, eps)
        return getattr(F, name)(a["x"], *args)

    return call


def _wn(dim):
    return lambda F, a: F.weight_norm(a["v"], a["g"], dim)


CASES = {
    "layer_norm": Case(
        _ln_make(True, True), lambda F, a: F.layer_norm(a["x"], (5, 7), a["weight"], a["bias"], eps=1e-5), "layer_norm"
    ),
    "layer_norm_weight_only": Case(
        _ln_make(True, False), lambda F, a: F.layer_norm(a["x"], [7], a["weight"][0], None), "layer_norm"
    ),
    "layer_norm_plain": Case(
        _ln_make(False, False), lambda F, a: F.layer_norm(a["x"], 7, eps=1e-3), "layer_norm",
        lambda a: TF.layer_norm(a["x"], (7,), eps=1e-3),
    ),
    "rms_norm": Case(_rms_make(True), lambda F, a: F.rms_norm(a["x"], (9,), a["weight"], eps=1e-6), "rms_norm"),
    "rms_norm_default_eps": Case(
        _rms_make(False), lambda F, a: F.rms_norm(a["x"], 9), "rms_norm", lambda a: TF.rms_norm(a["x"], (9,))
    ),
    "batch_norm_train": Case(_bn_make((4, 3, 5)), _bn("batch_norm", True, 0.2), "batch_norm"),
    "batch_norm_eval": Case(_bn_make((4, 3, 5)), _bn("batch_norm", False, eps=1e-3), "batch_norm"),
    "batch_norm_2d_plain": Case(_bn_make((6, 3), affine=False, running=False), _bn("batch_norm", True), "batch_norm"),
    "batch_norm_4d": Case(_bn_make((2, 3, 4, 5), running=False), _bn("batch_norm", True), "batch_norm"),
    "instance_norm_train": Case(_bn_make((3, 4, 6)), _bn("instance_norm", True, 0.3), "instance_norm"),
    "instance_norm_eval": Case(_bn_make((3, 4, 2, 3)), _bn("instance_norm", False), "instance_norm"),
    "instance_norm_plain": Case(
        _bn_make((2, 3, 7), affine=False, running=False), lambda F, a: F.instance_norm(a["x"]), "instance_norm"
    ),
    "group_norm": Case(
        _bn_make((2, 6, 5), running=False),
        lambda F, a: F.group_norm(a["x"], 3, a["weight"], a["bias"], eps=1e-4),
        "group_norm",
    ),
    "local_response_norm": Case(
        lambda gen, dt: {"x": _t(gen, (2, 7, 3, 2), dt)},
        lambda F, a: F.local_response_norm(a["x"], 3, alpha=0.3, beta=0.75, k=1.5),
        "local_response_norm",
    ),
    "local_response_norm_even": Case(
        lambda gen, dt: {"x": _t(gen, (3, 5, 4), dt)}, lambda F, a: F.local_response_norm(a["x"], 4),
        "local_response_norm",
    ),
    "weight_norm_dim0": Case(
        lambda gen, dt: {"v": _t(gen, (5, 4), dt), "g": _t(gen, (5, 1), dt)}, _wn(0), "weight_norm",
        lambda a: torch._weight_norm(a["v"], a["g"], 0),
    ),
    "weight_norm_dim1_3d": Case(
        lambda gen, dt: {"v": _t(gen, (3, 4, 2), dt), "g": _t(gen, (1, 4, 1), dt)}, _wn(1), "weight_norm",
        lambda a: torch._weight_norm(a["v"], a["g"], 1),
    ),
    "weight_norm_whole": Case(
        lambda gen, dt: {"v": _t(gen, (3, 4), dt), "g": _t(gen, (), dt)}, _wn(None), "weight_norm",
        lambda a: torch._weight_norm(a["v"], a["g"], -1),
    ),
    "cosine_linear": Case(
        lambda gen, dt: {"x": _t(gen, (2, 3, 6), dt), "weight": _t(gen, (4, 6), dt)},
        lambda F, a: F.cosine_linear(a["x"], a["weight"]),
        "cosine_linear",
        lambda a: TF.linear(TF.normalize(a["x"], dim=-1, eps=1e-8), TF.normalize(a["weight"], dim=-1, eps=1e-8)),
    ),
    "group_norm_4d_plain": Case(
        _bn_make((2, 4, 3, 3), affine=False, running=False), lambda F, a: F.group_norm(a["x"], 2), "group_norm"
    ),
}  # fmt: skip


def _inputs(case, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return case.make(gen, dtype)


def _fresh_buffers(args):
    """The same inputs with private copies of the buffers (running statistics are updated in place)."""
    return {k: v.clone() if v is not None and not v.requires_grad else v for k, v in args.items()}


def _buffers(args):
    return {k: v for k, v in args.items() if v is not None and not v.requires_grad}


def _dy(out, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)


def _grads(out, args, dy=None):
    dy = _dy(out, out.dtype) if dy is None else dy
    leaves = [v for v in args.values() if v is not None and v.requires_grad]
    return torch.autograd.grad(out, leaves, dy)


@pytest.fixture
def one_thread():
    """gradcheck calls each op hundreds of times on tiny inputs: one thread (2 threads are covered elsewhere)."""
    old = fastnorm.get_num_threads()
    fastnorm.set_num_threads(1)
    yield
    fastnorm.set_num_threads(old)


@pytest.mark.parametrize("name", CASES)
def test_gradcheck_float64(name, one_thread):
    case = CASES[name]
    args = _inputs(case, torch.float64)
    keys = [k for k, v in args.items() if v is not None]

    keys = [k for k in keys if args[k].requires_grad]

    def f(*tensors):
        return case.fast(_fresh_buffers({**args, **dict(zip(keys, tensors, strict=True))}))

    assert torch.autograd.gradcheck(f, tuple(args[k] for k in keys), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", CASES)
def test_matches_torch(name, dtype, threads):
    """DESIGN.md's criterion, not a fixed tolerance: fastnorm's error against torch run in float64 on the
    same (upcast) inputs is at most 2x torch's own same-dtype error plus a few ulps."""
    case = CASES[name]
    args = _inputs(case, dtype)
    args64 = _inputs(case, torch.float64)  # the same values: _t draws in float64 and rounds
    a_fast, a_ref, a_64 = _fresh_buffers(args), _fresh_buffers(args), _fresh_buffers(args64)
    out, ref, ref64 = case.fast(a_fast), case.ref(a_ref), case.ref(a_64)
    assert out.dtype == ref.dtype
    assert out.shape == ref.shape
    ulps = 8 if dtype == torch.float32 else 64
    assert_close_to_ref(out, ref, ref64, name="output", ulps=ulps)
    for k, buf in _buffers(a_ref).items():  # running statistics updated (or left) like torch's
        assert_close_to_ref(a_fast[k], buf, a_64[k], name=k, ulps=ulps)
    dy = _dy(out, dtype)
    grads = zip(_grads(out, args, dy), _grads(ref, args, dy), _grads(ref64, args64, dy.double()), strict=True)
    for i, (g, gr, g64) in enumerate(grads):
        assert_close_to_ref(g, gr, g64, name=f"gradient #{i}", ulps=ulps)


def test_non_contiguous_and_expanded_grad():
    x = torch.randn(8, 6, dtype=torch.float64).t().requires_grad_()  # (6, 8), strided
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    out = FF.layer_norm(x, 8, w)
    out.sum().backward()  # dy is an expanded (stride 0) tensor of ones
    x2 = x.detach().clone().requires_grad_()
    w2 = w.detach().clone().requires_grad_()
    TF.layer_norm(x2, (8,), w2).sum().backward()
    # float64: torch's float64 result is the other result and the reference, so the slack bounds
    want = TF.layer_norm(x2, (8,), w2).detach()
    assert_close_to_ref(out.detach(), want, want, name="y", ulps=64)
    assert_close_to_ref(x.grad, x2.grad, x2.grad, name="dx", ulps=64)
    assert_close_to_ref(w.grad, w2.grad, w2.grad, name="dweight", ulps=64)


def test_large_offset_float32():
    x = torch.randn(16, 33) * 0.1 + 1e4
    exact = TF.layer_norm(x.double(), (33,))
    assert_close_to_ref(FF.layer_norm(x, 33), TF.layer_norm(x, (33,)), exact, name="layer_norm at 1e4")


def test_no_grad_and_inference_mode():
    x = torch.randn(4, 5)
    with torch.no_grad():
        y = FF.layer_norm(x, 5)
    with torch.inference_mode():
        z = FF.rms_norm(x, 5)
    assert_close_to_ref(y, TF.layer_norm(x, (5,)), TF.layer_norm(x.double(), (5,)), name="layer_norm")
    assert_close_to_ref(z, TF.rms_norm(x, (5,)), TF.rms_norm(x.double(), (5,)), name="rms_norm")


@pytest.mark.parametrize("name", CASES)
def test_torch_compile_fullgraph_uses_custom_ops(name):
    case = CASES[name]
    args = _inputs(case, torch.float64)
    a_comp, a_eager = _fresh_buffers(args), _fresh_buffers(args)
    torch._dynamo.reset()
    backend, graphs = capture_backend()
    compiled = torch.compile(lambda a: case.fast(a).sin(), backend=backend, fullgraph=True)
    out = compiled(a_comp)
    eager = case.fast(a_eager).sin()
    torch.testing.assert_close(out, eager)
    for g, ge in zip(_grads(out, a_comp), _grads(eager, a_eager), strict=True):
        torch.testing.assert_close(g, ge)
    for k, buf in _buffers(a_eager).items():  # in-place running-statistics updates survive compilation
        torch.testing.assert_close(a_comp[k], buf, msg=k)
    code = "\n".join(graphs)
    for op in case.ops:
        assert f"fastnorm.{op}" in code, f"{op} not in the compiled graphs"


def _opcheck_args():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    w = torch.randn(4, 5, generator=g, dtype=torch.float64)
    b = torch.randn(4, 5, generator=g, dtype=torch.float64)
    dy = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    _, mean, rstd = B["layer_norm"].fwd_impl(x, w, b, 2, 1e-5)
    _, rrstd = B["rms_norm"].fwd_impl(x, w[0], 1, 1e-6)
    return [
        (B["layer_norm"].fwd_op, (x, w, b, 2, 1e-5)),
        (B["layer_norm"].fwd_op, (x, None, None, 1, 1e-5)),
        (B["layer_norm"].bwd_op, (dy, x, mean, rstd, w, b, 2)),
        (B["layer_norm"].bwd_op, (dy, x, mean, rstd, None, b, 2)),
        (B["rms_norm"].fwd_op, (x, w[0], 1, 1e-6)),
        (B["rms_norm"].bwd_op, (dy, x, rrstd, w[0], 1)),
        (B["rms_norm"].bwd_op, (dy, x, rrstd, None, 1)),
        *_channel_opcheck_args(x, dy),
        *_misc_opcheck_args(x, dy),
    ]


def _misc_opcheck_args(x, dy):
    ly, ls = B["local_response_norm"].fwd_impl(x, 3, 1e-2, 0.75, 1.0)
    v, g = x[0].clone(), torch.rand(4, 1, dtype=x.dtype) + 0.5
    _, norm = B["weight_norm"].fwd_impl(v, g, 0)
    w = torch.randn(6, 5, dtype=x.dtype)
    cy, cxn, cwn = B["cosine_linear"].fwd_impl(x, w, 1e-8)
    return [
        (B["local_response_norm"].fwd_op, (x, 3, 1e-2, 0.75, 1.0)),
        (B["local_response_norm"].bwd_op, (dy, x, ly, ls, 3, 1e-2, 0.75, 1.0)),
        (B["weight_norm"].fwd_op, (v, g, 0)),
        (B["weight_norm"].fwd_op, (v, torch.tensor(2.0, dtype=x.dtype), None)),
        (B["weight_norm"].bwd_op, (dy[0], v, g, norm, 0)),
        (B["cosine_linear"].fwd_op, (x, w, 1e-8)),
        (B["cosine_linear"].bwd_op, (torch.randn_like(cy), x, w, cy, cxn, cwn, 1e-8)),
    ]


def _channel_opcheck_args(x, dy):
    c = x.shape[1]
    w, b = torch.randn(c, dtype=x.dtype), torch.randn(c, dtype=x.dtype)
    rm, rv = torch.randn(c, dtype=x.dtype), torch.rand(c, dtype=x.dtype) + 0.5
    _, bm, br = B["batch_norm"].fwd_impl(x, w, b, None, None, True, 0.1, 1e-5)
    _, im, ir = B["instance_norm"].fwd_impl(x, w, b, None, None, True, 0.1, 1e-5)
    _, gm, gr = B["group_norm"].fwd_impl(x, 2, w, b, 1e-5)
    return [
        (B["batch_norm"].fwd_op, (x, w, b, rm, rv, True, 0.1, 1e-5)),
        (B["batch_norm"].fwd_op, (x, None, None, rm, rv, False, 0.1, 1e-5)),
        (B["batch_norm"].bwd_op, (dy, x, bm, br, w, b, True)),
        (B["batch_norm"].bwd_op, (dy, x, bm, br, None, None, False)),
        (B["instance_norm"].fwd_op, (x, w, b, rm, rv, True, 0.1, 1e-5)),
        (B["instance_norm"].bwd_op, (dy, x, im, ir, w, None, True)),
        (B["group_norm"].fwd_op, (x, 2, w, b, 1e-5)),
        (B["group_norm"].bwd_op, (dy, x, gm, gr, 2, w, b)),
    ]


def test_opcheck_custom_ops():
    checked = set()
    for op, args in _opcheck_args():
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), (op, result)
        checked.add(op._name)
    # every op declared in the registry is bound to torch and opchecked here (the fused add ops in
    # tests/test_torch_add_norm.py)
    norms = {s.name for s in fastnorm._spec.ops(group=fastnorm._spec.NORM)}
    declared = {s for s in norms if REGISTRY[s].family != "add_norm"}
    assert checked == declared
    assert {b.fwd.name for b in B.values()} | {b.bwd.name for b in B.values()} == norms


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64, torch.uint8], ids=str)
def test_unsupported_dtype_raises(dtype):
    x = torch.ones(2, 3, dtype=dtype)
    with pytest.raises(TypeError, match="layer_norm.*dtype"):
        FF.layer_norm(x, 3)
    with pytest.raises(TypeError, match="rms_norm.*dtype"):
        FF.rms_norm(x, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_dtype_follows_the_kernels(dtype, monkeypatch):
    """16-bit CPU tensors are taken when the op's kernels take them (asked once per op and dtype), a
    TypeError naming the op and the kernels' reason otherwise."""
    monkeypatch.setattr(FF, "_half_reasons", {})
    x = torch.ones(2, 3, dtype=dtype)
    assert FF.layer_norm(x, 3).dtype == dtype  # this branch's LayerNorm kernels take 16-bit data

    def probe(*arrays):
        raise TypeError("layer_norm_forward: no 16-bit kernels here")

    monkeypatch.setattr(FF, "_half_reasons", {})
    monkeypatch.setitem(FF._HALF_PROBES, "layer_norm", probe)
    with pytest.raises(TypeError, match="layer_norm.*dtype.*no 16-bit kernels here"):
        FF.layer_norm(x, 3)
    assert FF.unsupported_reason(x) is not None  # no op named: 16-bit is not assumed


def test_unsupported_device_raises():
    x = torch.ones(2, 3, device="meta")
    with pytest.raises(TypeError, match="device meta"):
        FF.layer_norm(x, 3)


def test_bad_normalized_shape_raises():
    with pytest.raises(ValueError, match="normalized_shape"):
        FF.layer_norm(torch.ones(2, 3), (4,))
    with pytest.raises(ValueError, match="normalized_shape"):
        FF.rms_norm(torch.ones(2, 3), (2, 2, 3))


def test_mixed_dtypes_raise():
    with pytest.raises(TypeError, match="weight"):
        FF.layer_norm(torch.ones(2, 3), 3, torch.ones(3, dtype=torch.float64))


def test_outputs_share_memory_with_numpy_results():
    """CPU results are torch views of the kernels' NumPy outputs (no copy on the way back)."""
    x = torch.randn(3, 4)
    y, mean, rstd = B["layer_norm"].fwd_impl(x, None, None, 1, 1e-5)
    assert isinstance(y.numpy(), np.ndarray)
    assert y.is_contiguous()
    assert mean.shape == (3,)
    assert rstd.shape == (3,)


# ------------------------------------------------------------------ accept what torch accepts (issue 12)


def _both(fast, ref, make):
    """Run fastnorm's and torch's op on private copies of the same inputs; also torch in float64.

    Returns (fast output, torch output, float64 reference, fast inputs, torch inputs, float64 inputs)."""
    a_f, a_t = make(), make()
    a_64 = {k: None if v is None else v.detach().double() for k, v in make().items()}
    return fast(**a_f), ref(**a_t), ref(**a_64), a_f, a_t, a_64


def _stats_inputs(shape=(4, 3, 5), seed=0):
    def make():
        g = torch.Generator().manual_seed(seed)
        c = shape[1]
        return {
            "input": torch.randn(shape, generator=g),
            "running_mean": torch.randn(c, generator=g),
            "running_var": torch.rand(c, generator=g) + 0.5,
            "weight": torch.randn(c, generator=g),
            "bias": torch.randn(c, generator=g),
        }

    return make


@pytest.mark.parametrize("momentum", [2.0, -1.0, 1.5, float("inf"), float("nan")])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("op", ["batch_norm", "instance_norm"])
def test_momentum_outside_unit_interval_as_torch(op, training, momentum):
    flag = "training" if op == "batch_norm" else "use_input_stats"
    out, ref, ref64, a_f, a_t, a_64 = _both(
        lambda **a: getattr(FF, op)(**a, **{flag: training}, momentum=momentum),
        lambda **a: getattr(TF, op)(**a, **{flag: training}, momentum=momentum),
        _stats_inputs(),
    )
    assert_close_to_ref(out, ref, ref64, name=op)
    for k in ("running_mean", "running_var"):
        # with an infinite momentum the update is inf - inf or +-inf depending on the order torch averages
        # InstanceNorm's per-instance updates in: only which entries are finite must agree there
        fin = torch.isfinite(a_t[k])
        assert torch.equal(torch.isfinite(a_f[k]), fin), k
        assert_close_to_ref(a_f[k][fin], a_t[k][fin], a_64[k][fin], name=k)


EPS_CASES = [
    ("layer_norm", lambda F, x, e: F.layer_norm(x, (5,), eps=e), [0.0, -1e-5, -10.0]),
    ("rms_norm", lambda F, x, e: F.rms_norm(x, (5,), eps=e), [0.0, -1e-5, -10.0]),
    ("group_norm", lambda F, x, e: F.group_norm(x, 3, eps=e), [0.0, -1e-5]),
    ("instance_norm", lambda F, x, e: F.instance_norm(x, eps=e), [0.0, -1e-5]),
    ("batch_norm_eval", lambda F, x, e: F.batch_norm(x, x.new_zeros(3), x.new_ones(3), eps=e), [0.0]),
]


@pytest.mark.parametrize(
    ("name", "call", "eps"), [(n, c, e) for n, c, es in EPS_CASES for e in es], ids=lambda v: str(v)[:16]
)
def test_eps_zero_and_negative_as_torch(name, call, eps):
    x = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(2))
    assert_close_to_ref(call(FF, x, eps), call(TF, x, eps), call(TF, x.double(), eps), name=name)


@pytest.mark.parametrize(
    "call",
    [
        lambda F, x: F.batch_norm(x, None, None, training=True, eps=0.0),
        lambda F, x: F.batch_norm(x, None, None, training=True, eps=-1e-5),
        lambda F, x: F.batch_norm(x, torch.zeros(3), torch.ones(3), training=False, eps=-1e-5),
    ],
    ids=["train-eps0", "train-eps-neg", "eval-eps-neg"],
)
def test_batch_norm_eps_refused_where_torch_refuses(call):
    x = torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match="eps"):  # torch's own refusal
        call(TF, x)
    with pytest.raises(ValueError, match="eps"):
        call(FF, x)


@pytest.mark.parametrize("op", ["batch_norm", "instance_norm"])
def test_non_contiguous_running_stats_updated_in_place_as_torch(op):
    flag = "training" if op == "batch_norm" else "use_input_stats"

    def make():
        base = _stats_inputs()()
        # every other element of a wider buffer: non-contiguous, as torch allows
        for k in ("running_mean", "running_var"):
            wide = torch.zeros(3, 2)
            wide[:, 0] = base[k]
            base[k] = wide[:, 0]
            assert not base[k].is_contiguous()
        return base

    out, ref, ref64, a_f, a_t, a_64 = _both(
        lambda **a: getattr(FF, op)(**a, **{flag: True}), lambda **a: getattr(TF, op)(**a, **{flag: True}), make
    )
    assert_close_to_ref(out, ref, ref64, name=op)
    for k in ("running_mean", "running_var"):
        assert not torch.equal(a_f[k], make()[k])  # updated in the caller's tensor
        assert_close_to_ref(a_f[k], a_t[k], a_64[k], name=k)


@pytest.mark.parametrize(
    "call",
    [
        lambda F, a: F.batch_norm(**a, training="False"),
        lambda F, a: F.batch_norm(**a, training=1),
        lambda F, a: F.batch_norm(**a, training=np.bool_(True)),
        lambda F, a: F.batch_norm(**a, training=True, momentum=None),
        lambda F, a: F.batch_norm(**a, training=True, momentum="0.1"),
        lambda F, a: F.instance_norm(**a, use_input_stats="False"),
        lambda F, a: F.instance_norm(**a, use_input_stats=0),
        lambda F, a: F.instance_norm(**a, momentum=None),
    ],
    ids=[
        "training-str",
        "training-int",
        "training-np-bool",
        "momentum-None",
        "momentum-str",
        "uis-str",
        "uis-int",
        "in-momentum-None",
    ],
)
def test_argument_types_refused_as_torch(call):
    a_f, a_t = _stats_inputs()(), _stats_inputs()()
    with pytest.raises(TypeError):
        call(TF, a_t)
    with pytest.raises(TypeError, match="must be"):
        call(FF, a_f)
    for k in ("running_mean", "running_var"):
        torch.testing.assert_close(a_f[k], a_t[k])  # nothing was updated


def test_empty_and_one_dim_batch_norm_as_torch():
    for shape in [(0,), (0, 3), (0, 3, 4), (2, 3, 0)]:
        c = shape[1] if len(shape) > 1 else 0
        stats_f = [torch.zeros(c), torch.ones(c)]
        stats_t = [torch.zeros(c), torch.ones(c)]
        x = torch.randn(shape)
        y = FF.batch_norm(x, *stats_f, training=True)
        assert y.shape == TF.batch_norm(x, *stats_t, training=True).shape == shape
        for a, b in zip(stats_f, stats_t):
            torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError):  # torch: running_mean should contain 0 elements not 4
        TF.batch_norm(torch.randn(4), torch.zeros(4), torch.ones(4))
    with pytest.raises(RuntimeError):
        FF.batch_norm(torch.randn(4), torch.zeros(4), torch.ones(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("normalized_shape", [(1,), (1, 1)])
def test_layer_norm_over_one_element_has_exactly_zero_input_grad(dtype, normalized_shape):
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(64, *normalized_shape, generator=g, dtype=torch.float64) * 1e3 + 0.1).to(dtype)
    w = torch.full(normalized_shape, 1.7, dtype=dtype, requires_grad=True)
    b = torch.full(normalized_shape, 0.3, dtype=dtype, requires_grad=True)
    dy = torch.randn(x.shape, generator=g, dtype=dtype)
    xx = x.clone().requires_grad_()
    FF.layer_norm(xx, normalized_shape, w, b).backward(dy)
    assert torch.count_nonzero(xx.grad) == 0  # torch's own is not always exactly 0 here (5.7e-14 in float64)
