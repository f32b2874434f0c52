#!/usr/bin/env bash
# One-shot GPU check for the CUDA backend, run once on a lent GPU machine from the repository root:
#
#     OUT=/some/dir bash bench/gpu_check.sh        (the device tool sets $OUT; default ./gpu_out)
#
# Steps, in priority order, each under a `timeout`, all inside a global deadline (GPU_CHECK_BUDGET seconds,
# default 480) so a hang cannot eat the device budget:
#   1. environment report (GPU, driver, python, numba / numba-cuda / torch / cupy versions) and a one-kernel
#      Numba smoke test that says clearly if Numba cannot compile or launch here;
#   2. the Cython build in place (the CPU kernels; the CUDA path does not need it, so a failed build is
#      reported and the GPU steps still run);
#   3. the LayerNorm/RMSNorm CUDA tests on the real GPU (tests/cuda/test_cuda_layer_norm.py);
#   4. the GPU benchmark (python3 -m fastnorm.bench --device cuda), with its launch-shape sweep;
#   5. the optimizer and channel-norm CUDA tests;
#   6. part of the LayerNorm tests again with the shared-memory block reductions (FASTNORM_CUDA_SHUFFLE=0).
# Logs and JSON go to $OUT; a summary is printed at the end.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-480}
START=$(date +%s)
export PYTHONUNBUFFERED=1 NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0 PYTHONDONTWRITEBYTECODE=1
# numba-cuda 0.30.x overloads np.row_stack, which NumPy 2.5 removed: seen on the lent H200 image (numpy 2.5.2),
# where every kernel compile failed with "module 'numpy' has no attribute 'row_stack'". Alias it back.
SHIM=$(mktemp -d)
printf 'import numpy\nif not hasattr(numpy, "row_stack"):\n    numpy.row_stack = numpy.vstack\n' > "$SHIM/sitecustomize.py"
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
declare -A RC

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
step() { echo; echo "=== [$(( $(date +%s) - START ))s] $*"; }
# run NAME MAXSECONDS CMD...: run CMD under timeout min(MAXSECONDS, time left), log to $OUT/NAME.log
run() {
  local name=$1 max=$2; shift 2
  local l; l=$(left)
  if [ "$l" -lt 20 ]; then echo "skipped: out of time budget" | tee "$OUT/$name.log"; RC[$name]=skipped; return; fi
  [ "$max" -gt "$l" ] && max=$l
  timeout -k 10 "$max" "$@" > "$OUT/$name.log" 2>&1
  RC[$name]=$?
  [ "${RC[$name]}" = 124 ] && echo "TIMED OUT after ${max}s" >> "$OUT/$name.log"
  tail -n 25 "$OUT/$name.log"
}

step "environment"
{
  date -u; uname -a; nvidia-smi || true
  $PY - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for m in ("numpy", "numba", "numba_cuda", "llvmlite", "torch", "cupy", "pytest", "Cython"):
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

step "numba smoke test (compile + launch one kernel)"
run smoke 120 $PY - <<'EOF'
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

step "Cython build in place"
run build 180 $PY setup.py build_ext --inplace -j "$(nproc)"

# Tests per file, so that one slow or hanging file cannot starve the others or the benchmark.
PYT=(-q -rfE --tb=short --maxfail=20 -p no:cacheprovider --durations=5)
step "CUDA tests on the GPU: LayerNorm / RMSNorm"
run pytest_layer_norm 170 $PY -m pytest tests/cuda/test_cuda_layer_norm.py "${PYT[@]}" \
  --junitxml="$OUT/pytest_layer_norm.xml"

step "GPU benchmark (python -m fastnorm.bench --device cuda)"
run bench_cuda 170 env FASTNORM_CUDA_BENCH_PARTIAL="$OUT/bench_cuda_partial.json" \
  $PY -m fastnorm.bench --device cuda --json "$OUT/bench_cuda.json"

step "CUDA tests on the GPU: optimizers"
run pytest_optim 60 $PY -m pytest tests/cuda/test_cuda_optim.py "${PYT[@]}" --junitxml="$OUT/pytest_optim.xml"

step "CUDA tests on the GPU: BatchNorm / InstanceNorm / GroupNorm, LRN / WeightNorm / CosineLinear"
run pytest_channel 120 $PY -m pytest tests/cuda/test_cuda_channel_norm.py tests/cuda/test_cuda_misc.py "${PYT[@]}" \
  --junitxml="$OUT/pytest_channel.xml"

step "LayerNorm tests with shared-memory block reductions (FASTNORM_CUDA_SHUFFLE=0)"
run pytest_noshuffle 60 env FASTNORM_CUDA_SHUFFLE=0 $PY -m pytest tests/cuda/test_cuda_layer_norm.py "${PYT[@]}" \
  -k "matches_reference or streaming"

step "summary"
{
  echo "gpu_check summary ($(( $(date +%s) - START ))s of ${BUDGET}s budget)"
  grep -m1 -E "NVIDIA|GPU" "$OUT/env.log" || true
  grep -E "^(numba|numba_cuda|torch|cupy|pytest) " "$OUT/env.log" || true
  for s in smoke build pytest_layer_norm bench_cuda pytest_optim pytest_channel pytest_noshuffle; do
    line=$(grep -E "passed|failed|skipped|Error|OK|TIMED OUT" "$OUT/$s.log" 2>/dev/null | tail -n 1)
    echo "  $s: rc=${RC[$s]:-?}  ${line}"
  done
  echo
  sed -n '/^fastnorm .* on /,$p' "$OUT/bench_cuda.log" 2>/dev/null | head -n 80
} | tee "$OUT/summary.txt"
