#!/usr/bin/env bash
# One-shot GPU check for the CUDA backend, run once on a lent GPU machine from the repository root:
#
#     OUT=/some/dir bash bench/gpu_check.sh        (the device tool sets $OUT; default ./gpu_out)
#
# At most GPU_CHECK_BUDGET seconds (default 290: one run and a rerun fit in the device budget), every step
# under a `timeout` inside that deadline, in priority order:
#   1. environment report and a one-kernel Numba smoke test (says clearly if Numba cannot compile/launch);
#      the Cython build of the CPU kernels starts in the background (some CUDA tests compare with them);
#   2. the LayerNorm/RMSNorm CUDA tests on the real GPU (tests/cuda/test_cuda_layer_norm.py), which include
#      the launch-plan host path (torch and Numba inputs), misaligned views, odd N, repeatable dweight/dbias,
#      the float32 128-bit forward and its scalar fallback, the one-barrier LayerNorm moments (real shuffles),
#      and tests/cuda/test_cuda_row_vec.py (the 128-bit float32/16-bit forward and backward, warp-per-row
#      short rows, the persistent forward); then a probe: LayerNorm forward persistent / one-row 128-bit /
#      scalar and backward 128-bit / scalar in float32 and bfloat16 (time per call, errors, dweight bits);
#   2b. the bfloat16/float16 storage and fused add + norm CUDA tests (tests/cuda/test_cuda_half.py,
#      test_cuda_add_norm.py), then a short bf16/fp16 timing probe of LayerNorm and the fused add-norm
#      kernels at (16384, 4096) (CUDA events around 20 back-to-back calls, host time not hidden: a first
#      look, not a bandwidth claim) with the max error against torch's float32 LayerNorm;
#   3. the GPU benchmark (python -m fastnorm.bench.gpu): LayerNorm/RMSNorm fwd/bwd at (16384, 4096),
#      (4096, 1024), (8192, 768) in float32 and float16 against torch, the same-run copy bandwidth, Adam over
#      200 tensors (100M parameters) against torch's fused Adam; per row the device time (median and
#      minimum, with the timer's check that the host was hidden: gpu_valid), the end-to-end time, the host
#      time per call (gpu_timing.host_ms_per_call) and the profiler's kernel time as a cross-check;
#   4. the remaining CUDA tests (optimizers, channel norms, misc) with what time is left.
# Logs and JSON go to $OUT; a summary is printed at the end (summary.txt).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-290}
START=$(date +%s)
export PYTHONUNBUFFERED=1 NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0 PYTHONDONTWRITEBYTECODE=1
unset NUMBA_ENABLE_CUDASIM
# numba-cuda 0.30.x overloads np.row_stack, which NumPy 2.5 removed: seen on the lent H200 image (numpy 2.5.2),
# where every kernel compile failed with "module 'numpy' has no attribute 'row_stack'". Alias it back.
SHIM=$(mktemp -d)
printf 'import numpy\nif not hasattr(numpy, "row_stack"):\n    numpy.row_stack = numpy.vstack\n' > "$SHIM/sitecustomize.py"
export PYTHONPATH="$PWD:$SHIM${PYTHONPATH:+:$PYTHONPATH}"
declare -A RC

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
step() { echo; echo "=== [$(( $(date +%s) - START ))s] $*"; }
# run NAME MAXSECONDS CMD...: run CMD under timeout min(MAXSECONDS, time left - 5), log to $OUT/NAME.log
run() {
  local name=$1 max=$2; shift 2
  local l; l=$(( $(left) - 5 ))
  if [ "$l" -lt 15 ]; then echo "skipped: out of time budget" | tee "$OUT/$name.log"; RC[$name]=skipped; return; fi
  [ "$max" -gt "$l" ] && max=$l
  timeout -k 5 "$max" "$@" > "$OUT/$name.log" 2>&1
  RC[$name]=$?
  [ "${RC[$name]}" = 124 ] && echo "TIMED OUT after ${max}s" >> "$OUT/$name.log"
  tail -n 20 "$OUT/$name.log"
}

step "environment"
{
  date -u; uname -a; nvidia-smi || true
  $PY - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for m in ("numpy", "numba", "numba_cuda", "llvmlite", "cuda.core", "cuda.bindings", "torch", "cupy", "pytest"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(m, "NOT AVAILABLE", type(e).__name__, e)
try:
    import torch
    print("torch.cuda", torch.cuda.is_available(), torch.version.cuda,
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:
    print("torch cuda check failed", e)
EOF
} > "$OUT/env.log" 2>&1
cat "$OUT/env.log"

# the CPU kernels, in the background (the GPU steps do not wait for them)
( timeout -k 5 $(( BUDGET - 30 )) $PY setup.py build_ext --inplace -j "$(nproc)" > "$OUT/build.log" 2>&1;
  echo "build rc=$?" >> "$OUT/build.log" ) &
BUILD_PID=$!

step "numba smoke test (compile + launch one kernel)"
run smoke 60 $PY - <<'EOF'
import numpy as np
from numba import cuda
print("cuda.is_available:", cuda.is_available())
cuda.detect()
@cuda.jit("void(float32[::1])")
def k(a):
    i = cuda.grid(1)
    if i < a.shape[0]:
        a[i] = a[i] * np.float32(2) + cuda.shfl_xor_sync(0xFFFFFFFF, np.float32(1), 1)
d = cuda.to_device(np.arange(64, dtype=np.float32))
k[1, 64](d)
assert np.allclose(d.copy_to_host(), np.arange(64) * 2 + 1), d.copy_to_host()
print("numba smoke test OK")
EOF

PYT=(-q -rfE --tb=short --maxfail=20 -p no:cacheprovider --durations=5)
step "CUDA tests on the GPU: LayerNorm / RMSNorm"
run pytest_layer_norm 90 $PY -m pytest tests/cuda/test_cuda_layer_norm.py tests/cuda/test_cuda_row_vec.py "${PYT[@]}" \
  --junitxml="$OUT/pytest_layer_norm.xml"

step "row kernels: persistent / one-row 128-bit / scalar forward, 128-bit / scalar backward (gpu_timer device time)"
# (sessions 5-6: the vector forms (float32 4 and 16-bit 8 elements per 128-bit access), the persistent
# forward (weight/bias in registers, next row prefetched) and the backward vector form are proven only by
# the simulator and PTX/ptxas; this runs each against the others on hardware through the kernel launchers:
# per shape and dtype the device time per call of every form (median, host hidden: valid), the forward's
# max error against torch's float64 LayerNorm, the backward's max |dx(vec) - dx(scalar)| and whether
# dweight/dbias are bitwise equal between the two forms (they should be: same chunk count, P rows)
run vec_probe 90 $PY - <<'EOF3'
import torch
import fastnorm._kernels.cuda as K
from fastnorm._kernels.cuda import layer_norm as L
from fastnorm.bench.gpu_timer import Timer

timer = Timer(torch)
P = 128  # partial rows: the chunk count min(P, resident teams, M) is the same for both backward forms
FWD = {"persistent": (True, True), "vec": (True, False), "scalar": (False, False)}
for dt in (torch.float32, torch.bfloat16):
    for m, n in ((16384, 4096), (4096, 1024), (8192, 768)):
        x = (torch.randn(m, n, device="cuda") + 3).to(dt)
        dy = torch.randn(m, n, device="cuda").to(dt)
        w, b = 1 + 0.1 * torch.randn(n, device="cuda"), 0.1 * torch.randn(n, device="cuda")
        ref = torch.nn.functional.layer_norm(x.double(), (n,), w.double(), b.double(), 1e-5)
        y, mean, rstd = torch.empty_like(x), torch.empty(m, device="cuda"), torch.empty(m, device="cuda")
        fwd = lambda: K.layer_norm_forward(x, w, b, y, mean, rstd, 1e-5, 1)
        line = []
        for name, (vec, persist) in FWD.items():
            L.FWD_VEC, L.FWD_PERSIST, L._plans = vec, persist, {}
            fwd()
            torch.cuda.synchronize()
            err = (y.double() - ref).abs().max().item()
            t = timer(fwd, repeats=5)
            line.append(f"{name} {t.median_ms:.4f} ms (valid {t.valid}, err {err:.3g}, "
                        f"{2 * m * n * x.element_size() / t.median_ms / 1e6:.0f} GB/s)")
        print(f"ln fwd {dt} ({m}x{n}): " + "; ".join(line))
        L.FWD_VEC, L.FWD_PERSIST, L._plans = True, True, {}
        fwd()
        none = torch.empty((0, 0), device="cuda")
        res = {}
        for vec in (True, False):
            L.BWD_VEC, L._plans = vec, {}
            dx, dw, db = torch.empty_like(x), torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
            pw, pb = (torch.empty((P, n), device="cuda", dtype=torch.float64) for _ in range(2))
            bwd = lambda: K.layer_norm_backward(dy, x, mean, rstd, w, dx, dw, db, pw, none, pb, none, P)
            bwd()
            torch.cuda.synchronize()
            res[vec] = (dx.clone(), dw.clone(), db.clone(), timer(bwd, repeats=5))
        t1, t0 = res[True][3], res[False][3]
        print(f"ln bwd {dt} ({m}x{n}): vec {t1.median_ms:.4f} ms (valid {t1.valid}), scalar {t0.median_ms:.4f} ms "
              f"(valid {t0.valid}), max|dx vec - scalar| {(res[True][0].float() - res[False][0].float()).abs().max().item():.3g}, "
              f"dweight/dbias bitwise equal: {torch.equal(res[True][1], res[False][1])}/{torch.equal(res[True][2], res[False][2])}")
L.FWD_VEC = L.FWD_PERSIST = L.BWD_VEC = True
EOF3

step "CUDA tests on the GPU: bfloat16 / float16 storage and the fused add + norm kernels"
# (issue 13: never run on hardware before; the libdevice bit casts of the bf16 helpers, the uint16 launch
# plans and the add-norm kernels are only proven on the simulator and by PTX/ptxas without a GPU)
run pytest_half 90 $PY -m pytest tests/cuda/test_cuda_half.py tests/cuda/test_cuda_add_norm.py "${PYT[@]}" \
  --junitxml="$OUT/pytest_half.xml"

step "bf16 / add-norm timing probe (gpu_timer device time, host hidden and checked)"
run half_probe 60 $PY - <<'EOF2'
import torch
import fastnorm._kernels.cuda as K
from fastnorm.bench.gpu_timer import Timer

timer = Timer(torch)

m, n = 16384, 4096
F = torch.nn.functional
for dt in (torch.bfloat16, torch.float16):
    x = torch.randn(m, n, device="cuda").to(dt)
    r = torch.randn(m, n, device="cuda").to(dt)
    w = 1 + 0.1 * torch.randn(n, device="cuda")  # float32 parameters: the 16-bit rule
    b = 0.1 * torch.randn(n, device="cuda")
    y, h = torch.empty_like(x), torch.empty_like(x)
    mean, rstd = torch.empty(m, device="cuda"), torch.empty(m, device="cuda")
    hs = (x.float() + r.float()).to(dt).float()
    cases = (
        ("layer_norm_forward", 2, lambda: K.layer_norm_forward(x, w, b, y, mean, rstd, 1e-5, 1),
         lambda: F.layer_norm(x.float(), (n,), w, b, 1e-5)),
        ("add_layer_norm_forward", 4, lambda: K.add_layer_norm_forward(x, r, w, b, y, h, mean, rstd, 1e-5, 1),
         lambda: F.layer_norm(hs, (n,), w, b, 1e-5)),
        ("add_rms_norm_forward", 4, lambda: K.add_rms_norm_forward(x, r, w, y, h, rstd, 1e-6, 1),
         lambda: hs * torch.rsqrt(hs.pow(2).mean(-1, keepdim=True) + 1e-6) * w),
    )
    for name, arrays, call, ref in cases:
        call()
        torch.cuda.synchronize()
        err = (y.float() - ref()).abs().max().item()
        herr = (h.float() - hs).abs().max().item() if "add" in name else 0.0
        t = timer(call, repeats=5)
        gbs = arrays * m * n * 2 / t.median_ms / 1e6
        print(f"{name} {dt} ({m}x{n}): max|y - fp32 ref| {err:.3g}, max|h - ref| {herr:.3g}; "
              f"{t.median_ms:.3f} ms/call (device time, host hidden: valid {t.valid}), {gbs:.0f} GB/s")
EOF2

step "GPU benchmark (python -m fastnorm.bench.gpu)"
run bench_gpu 120 env FASTNORM_CUDA_BENCH_PARTIAL="$OUT/bench_gpu_partial.json" \
  $PY -m fastnorm.bench.gpu --shapes 16384x4096,4096x1024,8192x768 --dtypes float32,float16 \
  --adam-total 100e6 --repeats 5 --json "$OUT/bench_gpu.json"

step "remaining CUDA tests (optimizers, channel norms, misc)"
wait "$BUILD_PID" 2>/dev/null
run pytest_rest 100 $PY -m pytest tests/cuda "${PYT[@]}" --ignore=tests/cuda/test_cuda_layer_norm.py \
  --ignore=tests/cuda/test_cuda_row_vec.py \
  --ignore=tests/cuda/test_cuda_half.py --ignore=tests/cuda/test_cuda_add_norm.py \
  --junitxml="$OUT/pytest_rest.xml"

step "summary"
{
  echo "gpu_check summary ($(( $(date +%s) - START ))s of ${BUDGET}s budget)"
  grep -m1 -E "NVIDIA|GPU" "$OUT/env.log" || true
  grep -E "^(numba|numba_cuda|cuda.core|torch|cupy|pytest) " "$OUT/env.log" || true
  tail -n 1 "$OUT/build.log" 2>/dev/null
  for s in smoke pytest_layer_norm vec_probe pytest_half half_probe bench_gpu pytest_rest; do
    line=$(grep -E "passed|failed|skipped|Error|OK|TIMED OUT" "$OUT/$s.log" 2>/dev/null | tail -n 1)
    echo "  $s: rc=${RC[$s]:-?}  ${line}"
  done
  echo
  sed -n '/^fastnorm .* on /,$p' "$OUT/bench_gpu.log" 2>/dev/null | head -n 80
} | tee "$OUT/summary.txt"
