#!/usr/bin/env bash
# The whole GPU suite in one go (one device call): environment report, tests/gpu against
# the torch references, the kernel micro-benchmark, and, where the tools exist, an Nsight
# Compute profile of the attention kernels (PROFILE=1, the default) and a compute-sanitizer
# memcheck and racecheck of one mixed attention batch (SANITIZE=1, the default).
# Logs go to $OUT (the device tool's output folder), else ./gpu-logs.
# Wheels carried in .whl/ (cuda-core, cuda-bindings, pytest, ...) are installed first, into
# /tmp/site, for machines whose python lacks them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

{
  date -u +"%Y-%m-%d %H:%M:%S UTC"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 - <<'PY'
import sys, torch, cuda.core, cuda.bindings
from server.engine.nvrtc import find_cuda_include_dir, nvrtc_version
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda.core",
      cuda.core.__version__, "cuda.bindings", cuda.bindings.__version__, "nvrtc",
      nvrtc_version(), "headers", find_cuda_include_dir())
PY
} 2>&1 | tee "$OUT/env.log"

python3 -m pytest -q -p no:cacheprovider -rs tests/gpu 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=$?
python3 bench/kernels.py --json "$OUT/bench_kernels.json" 2>&1 | tee "$OUT/bench.log"
bench_rc=$?

NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
if [ "${PROFILE:-1}" = 1 ] && [ -n "$NCU" ]; then
  echo "== $NCU on one decode and one prefill attention call" | tee "$OUT/ncu.log"
  timeout 150 "$NCU" --profile-from-start off --clock-control none --section SpeedOfLight \
    --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis python3 bench/profile_attention.py >>"$OUT/ncu.log" 2>&1
  echo "ncu rc=$?" | tee -a "$OUT/ncu.log"
fi

if [ "${SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer --tool $tool"
    # API errors are left out: cuda-bindings probes driver entry points newer than the
    # driver, which the sanitizer would count; what matters here is the kernels' accesses.
    timeout 100 compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 9 \
      python3 -m pytest -q -p no:cacheprovider tests/gpu/test_paged_attention_kernel.py \
      -k "test_paged_attention_matches_reference and mixed and gqa and 128 and bf16" \
      2>&1 | grep -v "Host Frame" | head -n 40
    echo "rc=${PIPESTATUS[0]}"
  done 2>&1 | tee "$OUT/sanitizer.log"
fi
echo "gpu suite: tests rc=$tests_rc bench rc=$bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
