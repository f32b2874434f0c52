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
#      short rows, the persistent forward);
#   2b. the bfloat16/float16 storage and fused add + norm CUDA tests (tests/cuda/test_cuda_half.py,
#      test_cuda_add_norm.py: the fused kernels' 128-bit forms and their scalar fallback included);
#   2c. tools/cuda_gpu_probe.py: fused add + LayerNorm/RMSNorm and LayerNorm, bf16/fp32/fp16 at
#      (16384, 4096) and (4096, 1024): forward persistent / one-row 128-bit / scalar and backward 128-bit /
#      scalar, each timed (device time, host hidden and checked), its error against a float64 reference on
#      the GPU, h bit-exact, dweight/dbias bits equal between the backward forms, torch's time for the work;
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

step "CUDA tests on the GPU: bfloat16 / float16 storage and the fused add + norm kernels"
# (issue 13: never run on hardware before; the libdevice bit casts of the bf16 helpers, the uint16 launch
# plans and the add-norm kernels are only proven on the simulator and by PTX/ptxas without a GPU)
run pytest_half 90 $PY -m pytest tests/cuda/test_cuda_half.py tests/cuda/test_cuda_add_norm.py "${PYT[@]}" \
  --junitxml="$OUT/pytest_half.xml"

step "row-kernel forms vs each other, float64 and torch (tools/cuda_gpu_probe.py; gpu_timer device time)"
# (the 128-bit forward/backward forms, the persistent forward and the fused add + norm 128-bit forms are
# proven without a GPU only by the simulator and PTX/ptxas: per op, dtype and shape, each form's device time
# (host hidden: valid), GB/s, max error against torch's float64 norm on the GPU, h bit-exact, the backward
# forms' dx difference and dweight/dbias bits, and torch's time for the same work (add + norm for the fused))
run probe 150 $PY tools/cuda_gpu_probe.py --ops add_layer_norm,add_rms_norm,layer_norm \
  --dtypes bfloat16,float32,float16 --shapes 16384x4096,4096x1024 --repeats 3

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
  for s in smoke pytest_layer_norm pytest_half probe bench_gpu pytest_rest; do
    line=$(grep -E "passed|failed|skipped|Error|OK|TIMED OUT" "$OUT/$s.log" 2>/dev/null | tail -n 1)
    echo "  $s: rc=${RC[$s]:-?}  ${line}"
  done
  echo
  sed -n '/^fastnorm .* on /,$p' "$OUT/bench_gpu.log" 2>/dev/null | head -n 80
} | tee "$OUT/summary.txt"
