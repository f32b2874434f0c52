"""On a real GPU (``bench/gpu_check.sh``): each form of the LayerNorm / RMSNorm row kernels and of the fused
residual add + norm kernels against the others and against torch, through the kernel launchers.

The forms (persistent / one-row 128-bit / scalar forward, 128-bit / scalar backward) are proven without a
GPU only by the simulator and PTX/ptxas. Per dtype, shape and form this prints the device time per call
(``gpu_timer``: median, host hidden and checked: ``valid``), the GB/s it implies, the max error against a
float64 reference computed by torch on the GPU (y; h bit-exact against the rounded float32 sum; dx), the
backward's max |dx(vec) - dx(scalar)| and whether dweight/dbias are bitwise equal between the two forms
(same chunk count: they should be), and torch's time for the same work (its native op in the same dtype;
for the fused ops torch's add followed by its norm). Figures from a run are hardware observations; nothing
here is a test (the tests are tests/cuda).

    python tools/cuda_gpu_probe.py [--shapes 16384x4096,4096x1024,8192x768] [--repeats 5]
"""

from __future__ import annotations

import argparse
import traceback

import torch

import fastnorm._kernels.cuda as K
from fastnorm._kernels.cuda import layer_norm as L
from fastnorm.bench.gpu_timer import Timer

F = torch.nn.functional
EPS = 1e-5
P = 128  # partial rows: the chunk count min(P, resident teams, M) is the same for both backward forms
FWD_FORMS = {"persistent": (True, True), "vec": (True, False), "scalar": (False, False)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _forms(vec: bool, persist: bool, bwd_vec: bool = True) -> None:
    L.FWD_VEC, L.FWD_PERSIST, L.BWD_VEC, L._plans = vec, persist, bwd_vec, {}


def _ref_norm(h64, w, b, rms: bool):
    """The float64 norm of ``h64`` (float64) with float32 parameters (cast up)."""
    if rms:
        return h64 * torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + EPS) * w.double()
    return F.layer_norm(h64, (h64.shape[1],), w.double(), None if b is None else b.double(), EPS)


def _ref_grads(dy, h, w, b, rms: bool):
    """float64 (dx, dweight, dbias) of the norm at ``h`` (autograd in float64)."""
    h64 = h.double().requires_grad_(True)
    w64 = w.double().requires_grad_(True)
    b64 = None if b is None else b.double().requires_grad_(True)
    if rms:
        y = h64 * torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + EPS) * w64
    else:
        y = F.layer_norm(h64, (h64.shape[1],), w64, b64, EPS)
    y.backward(dy.double())
    return h64.grad, w64.grad, None if b64 is None else b64.grad


def _err(a, ref) -> float:
    return (a.double() - ref).abs().max().item()


class Probe:
    def __init__(self, repeats: int):
        self.timer = Timer(torch)
        self.repeats = repeats

    def time(self, fn):
        t = self.timer(fn, repeats=self.repeats)
        return t.median_ms, t.valid

    def line(self, what, nbytes, ms, valid, extra=""):
        print(f"  {what}: {ms:.4f} ms (valid {valid}), {nbytes / ms / 1e6:.0f} GB/s{extra}", flush=True)

    def case(self, dt, m: int, n: int, rms: bool, add: bool) -> None:
        """Forward forms, backward forms and torch for one (dtype, shape, op)."""
        dev = "cuda"
        x = (torch.randn(m, n, device=dev) + 3).to(dt)
        r = torch.randn(m, n, device=dev).to(dt) if add else None
        dy, dh = torch.randn(m, n, device=dev).to(dt), (torch.randn(m, n, device=dev).to(dt) if add else None)
        w = 1 + 0.1 * torch.randn(n, device=dev)  # float32 parameters (the 16-bit rule)
        b = None if rms else 0.1 * torch.randn(n, device=dev)
        y, h = torch.empty_like(x), torch.empty_like(x)
        mean, rstd = torch.empty(m, device=dev), torch.empty(m, device=dev)
        hs = (x.float() + r.float()).to(dt) if add else x
        y64 = _ref_norm(hs.double(), w, b, rms)
        es = x.element_size()
        name = f"{'add_' if add else ''}{'rms' if rms else 'layer'}_norm {str(dt)[6:]} ({m}x{n})"
        print(f"{name}:", flush=True)

        def fwd():
            if add and rms:
                K.add_rms_norm_forward(x, r, w, y, h, rstd, EPS, 1)
            elif add:
                K.add_layer_norm_forward(x, r, w, b, y, h, mean, rstd, EPS, 1)
            elif rms:
                K.rms_norm_forward(x, w, y, rstd, EPS, 1)
            else:
                K.layer_norm_forward(x, w, b, y, mean, rstd, EPS, 1)

        fbytes = (4 if add else 2) * m * n * es
        for form, (vec, persist) in FWD_FORMS.items():
            _forms(vec, persist)
            y.zero_()
            fwd()
            torch.cuda.synchronize()
            extra = f", max|y - f64| {_err(y, y64):.3g}"
            if add:
                extra += f", h bit-exact {torch.equal(h, hs)}"
            self.line(f"fwd {form}", fbytes, *self.time(fwd), extra)
        wt, bt = w.to(dt), None if b is None else b.to(dt)

        def tfwd():
            a = x + r if add else x
            return F.rms_norm(a, (n,), wt, EPS) if rms else F.layer_norm(a, (n,), wt, bt, EPS)

        self.line("fwd torch", fbytes, *self.time(tfwd))

        _forms(True, True)
        fwd()
        dx64, dw64, db64 = _ref_grads(dy, hs, w, b, rms)
        if add:
            dx64 = dx64 + dh.double()
        res = {}
        for vec in (True, False):
            _forms(True, True, vec)
            dx, dw, db = torch.empty_like(x), torch.empty(n, device=dev), torch.empty(n, device=dev)
            pw, pb = (torch.empty((P, n), device=dev, dtype=torch.float64) for _ in range(2))

            bwd = self.backward(add, rms, dy, dh, h if add else x, mean, rstd, w, dx, dw, db, pw, pb)
            bwd()
            torch.cuda.synchronize()
            res[vec] = (dx.clone(), dw.clone(), db.clone())
            extra = f", max|dx - f64| {_err(dx, dx64):.3g}, max|dw - f64| {_err(dw, dw64):.3g}"
            if not rms:
                extra += f", max|db - f64| {_err(db, db64):.3g}"
            self.line(f"bwd {'vec' if vec else 'scalar'}", (4 if add else 3) * m * n * es, *self.time(bwd), extra)
        same = [torch.equal(res[True][i], res[False][i]) for i in (1, 2)]
        ddx = (res[True][0].float() - res[False][0].float()).abs().max().item()
        print(
            f"  bwd vec vs scalar: max|dx diff| {ddx:.3g}, "
            f"dweight/dbias bitwise equal {same[0]}/{same[1] if not rms else '-'}",
            flush=True,
        )
        _forms(True, True, True)

    @staticmethod
    def backward(add, rms, dy, dh, h, mean, rstd, w, dx, dw, db, pw, pb):
        """The backward launcher call of the op on these arrays (``h``: x for the plain norms)."""
        none = torch.empty((0, 0), device=dy.device)
        if add and rms:
            return lambda: K.add_rms_norm_backward(dy, dh, h, rstd, w, dx, dw, pw, none, P)
        if add:
            return lambda: K.add_layer_norm_backward(dy, dh, h, mean, rstd, w, dx, dw, db, pw, none, pb, none, P)
        if rms:
            return lambda: K.rms_norm_backward(dy, h, rstd, w, dx, dw, pw, none, P)
        return lambda: K.layer_norm_backward(dy, h, mean, rstd, w, dx, dw, db, pw, none, pb, none, P)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="16384x4096,4096x1024,8192x768")
    ap.add_argument("--dtypes", default="float32,bfloat16,float16")
    ap.add_argument("--ops", default="add_layer_norm,add_rms_norm,layer_norm")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    probe = Probe(args.repeats)
    failures = 0
    for op in args.ops.split(","):
        for dname in args.dtypes.split(","):
            for shape in args.shapes.split(","):
                m, n = (int(v) for v in shape.split("x"))
                try:
                    probe.case(DTYPES[dname], m, n, "rms" in op, op.startswith("add_"))
                except Exception:  # one case's failure is reported and the others still run
                    failures += 1
                    print(f"{op} {dname} {shape}: FAILED")
                    traceback.print_exc()
                torch.cuda.empty_cache()
    print(f"probe done: {failures} case(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
