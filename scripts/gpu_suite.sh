#!/usr/bin/env bash
# The GPU suite in one go (one device call), as stages named in STAGES (default: the kernel
# work of issue 5: "tests kernels profile sanitize"):
#   tests     environment report, then tests/gpu (kernels against the torch references,
#             CUDA graphs, the engine on the GPU)
#   kernels   the kernel micro-benchmarks (bench/kernels.py, bench/gemv.py)
#   profile   Nsight Compute on the attention kernels (PROFILE=0 skips it)
#   sanitize  compute-sanitizer memcheck + racecheck of one mixed attention batch (SANITIZE=0)
#   stash     keep the carried GGUF parts (*.part_*) in /root/parts for a later call on the
#             same warm machine (the default model's GGUF is larger than one call carries)
#   default   join the GGUF parts, convert the default model, and run the GPU-vs-CPU
#             greedy comparison (tests/gpu/test_engine_gpu.py) on it
#   build     `inflightd build` of BUILD_MODEL (default dummy:llama-3-8b) into /root/engines
#   bench     bench/offline.py on BENCH_MODEL with the issue's acceptance arguments (and
#             BENCH_ARGS, e.g. --compare-sync, --compare-fp8)
#   workloads bench/offline.py --workload: TensorRT-LLM's throughput workloads (issue 15)
#   families  bench/offline.py on each model family's real-size dummy shape (issue 17)
#   triton    scripts/triton_burst.sh: 512 requests at once through the OpenAI route and
#             through Triton's generate_stream on the default model (issue 23; after
#             "default"; the web stack's wheels as for "daemon", plus numpy)
#   daemon    scripts/gpu_daemon_smoke.py: `inflightd serve` on the GPU with concurrent,
#             streamed and abandoned requests, stats, metrics and a SIGTERM drain, for
#             dummy:smollm2-135m and dummy:llama-3-8b (bf16, --quantization fp8, then
#             --kv-cache-dtype fp8). The image lacks the web stack: carry
#             its wheels (fastapi starlette pydantic pydantic-core uvicorn msgspec pyzmq
#             annotated-types typing-inspection typing_extensions opentelemetry-api, and for
#             grammars xgrammar apache-tvm-ffi jsonschema referencing rpds-py attrs
#             jsonschema-specifications, the
#             versions of the venv, `pip download --no-deps --only-binary=:all:
#             --python-version 3.12`) in a folder named by WHEEL_DIRS
# Logs go to $OUT (the device tool's output folder), else ./gpu-logs. Wheels carried in
# .whl/ and in the folders named by WHEEL_DIRS are installed first into /tmp/site.
#
# The default model's GGUF (98 MB) travels in two calls on the same warm machine, each half
# with the cuda-core/cuda-bindings/cuda-pathfinder wheels (build/ is git-ignored):
#   G=$(python -c 'from server.engine.loading.default_model import packaged_default_gguf as p; print(p())')
#   mkdir -p build/gpu_a build/gpu_b; cp .whl/cuda_*.whl build/gpu_a; cp .whl/cuda_*.whl build/gpu_b
#   head -c 49181216 $G > build/gpu_a/smollm2.gguf.part_a
#   tail -c +49181217 $G > build/gpu_b/smollm2.gguf.part_b
#   sha256sum $G | cut -d' ' -f1 > build/gpu_b/smollm2.gguf.sha256
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d build/gpu_b gguf==0.19.0
# then  run(carry=[build/gpu_a]): STAGES="stash tests build" WHEEL_DIRS=build/gpu_a bash $0
# and at once  run(carry=[build/gpu_b]): STAGES="default bench" WHEEL_DIRS=build/gpu_b bash $0
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
STAGES=${STAGES:-tests kernels profile sanitize}
export PYTHONUNBUFFERED=1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export INFLIGHTD_CACHE=${INFLIGHTD_CACHE:-/root/inflightd-cache}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
status=0
has() { [[ " $STAGES " == *" $1 "* ]]; }
fail() { echo "stage $1 failed (rc=$2)"; status=1; }

# the same wheel in two folders is installed once (pip refuses a duplicate)
wheels=$(ls .whl/*.whl ${WHEEL_DIRS:+$(for d in $WHEEL_DIRS; do echo "$d"/*.whl; done)} \
  2>/dev/null | awk -F/ '!seen[$NF]++')
if [ -n "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site $wheels || exit 1
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}

{
  date -u +"%Y-%m-%d %H:%M:%S UTC"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 - <<'PY'
import sys, torch, cuda.core, cuda.bindings, transformers
from server.engine.gpu.nvrtc import find_cuda_include_dir, nvrtc_version
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda.core",
      cuda.core.__version__, "cuda.bindings", cuda.bindings.__version__, "transformers",
      transformers.__version__, "nvrtc", nvrtc_version(), "headers", find_cuda_include_dir())
PY
} 2>&1 | tee "$OUT/env.log"

if has stash; then
  mkdir -p /root/parts && for f in $(ls build/*/*.part_* 2>/dev/null); do cp "$f" /root/parts/; done
  ls -l /root/parts | tee -a "$OUT/env.log"
fi

if has tests; then
  python3 -m pytest -q -p no:cacheprovider -rs tests/gpu 2>&1 | tee "$OUT/gpu_tests.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || fail tests "$rc"
fi

if has default; then
  {
    parts="/root/parts/smollm2.gguf.part_a $(echo build/*/smollm2.gguf.part_b)"
    cat $parts > /root/default.gguf  # in this order: ls would sort them by locale
    want=$(cat build/*/smollm2.gguf.sha256 2>/dev/null)
    have=$(sha256sum /root/default.gguf | cut -d' ' -f1)
    echo "parts: $parts; sha256 $have (want $want)"
    if [ "$have" = "$want" ]; then
      mkdir -p /root/default-model &&
      python3 -c "from pathlib import Path; from server.engine.loading.gguf_convert import convert_gguf
convert_gguf(Path('/root/default.gguf'), Path('/root/default-model'), progress=False)" &&
      INFLIGHTD_TEST_MODEL_DIR=/root/default-model timeout 300 python3 -m pytest -q \
        -p no:cacheprovider -rs tests/gpu/test_engine_gpu.py
    else
      echo "the default model's GGUF parts are missing or damaged"; false
    fi
  } 2>&1 | tee "$OUT/default_model.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || fail default "$rc"
fi

if has build; then
  { time python3 -m server.engine.loading.build "${BUILD_MODEL:-dummy:llama-3-8b}" --force \
      --output /root/engines/build-stage --max-batch-size 256 --max-num-tokens 8192; } \
    2>&1 | tee "$OUT/build.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || fail build "$rc"
  (ls -lR /root/engines/build-stage; cat /root/engines/build-stage/tuning.json) \
    >>"$OUT/build.log" 2>&1
fi

if has bench; then
  timeout "${BENCH_TIMEOUT:-400}" python3 bench/offline.py --model "${BENCH_MODEL:-dummy:llama-3-8b}" \
    --num-prompts 512 --input-len 128:1024 --output-len 256 --peer-requests 64 \
    --max-num-seqs 512 --max-num-batched-tokens 8192 --json "$OUT/bench_offline.json" ${BENCH_ARGS:-} \
    2>&1 | grep -v "it/s]$" | tee "$OUT/bench_offline.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || fail bench "$rc"
fi

if has workloads; then
  # TensorRT-LLM's throughput workloads (issue 15), FP8 weights and an e4m3 KV cache at
  # TensorRT-LLM's memory fraction, then bf16 1000/1000 beside them; WORKLOADS overrides
  # the list (ISL/OSL:N each), sized so the whole stage fits one 10-minute call
  common=(--model dummy:llama-3.1-8b --max-num-seqs 1024 --max-num-batched-tokens 8192
          --memory-fraction 0.95)
  workloads=()
  for w in ${WORKLOADS:-128/2048:1000 1000/1000:500 2048/128:400 5000/500:100 2048/2048:150}
  do workloads+=(--workload "$w"); done
  timeout "${WORKLOADS_TIMEOUT:-420}" python3 bench/offline.py "${common[@]}" \
    --quantization fp8 --kv-cache-dtype fp8 "${workloads[@]}" --json "$OUT/workloads_fp8.json" \
    2>&1 | grep -v "it/s]$" | tee "$OUT/workloads_fp8.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || fail workloads "$rc"
  timeout 90 python3 bench/offline.py "${common[@]}" --workload 1000/1000:250 \
    --json "$OUT/workloads_bf16.json" 2>&1 | grep -v "it/s]$" | tee "$OUT/workloads_bf16.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || fail workloads-bf16 "$rc"
fi

if has families; then
  # issue 17's table: each family's real-size dummy shape, batch-1 decode against its
  # weight-streaming roofline and a 256-request run; FAMILIES overrides the list (the whole
  # list takes about two 10-minute calls)
  for shape in ${FAMILIES:-glm-4-9b qwen3-8b phi-3-mini baichuan2-7b starcoder2-7b falcon-7b \
                 gpt2-xl starcoder-1b gemma-2-9b gemma-3-12b mpt-7b bloom-7b1 baichuan2-13b}
  do
    timeout "${FAMILY_TIMEOUT:-150}" python3 bench/offline.py --model "dummy:$shape" \
      --num-prompts 256 --input-len 128 --output-len 128 --skip-peers \
      --json "$OUT/family_$shape.json" 2>&1 | grep -v "it/s]$" | tee "$OUT/family_$shape.log"
    rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || fail "families ($shape)" "$rc"
  done
fi

if has daemon; then
  for variant in dummy:smollm2-135m dummy:llama-3-8b dummy:llama-3-8b:fp8 dummy:llama-3-8b:kvfp8
  do
    model=${variant%:*fp8}; quant=()
    [ "${variant##*:}" = fp8 ] && quant=(--quantization fp8)
    [ "${variant##*:}" = kvfp8 ] && quant=(--kv-cache-dtype fp8)
    echo "== $model ${quant[*]}" | tee -a "$OUT/daemon.log"
    timeout 300 python3 scripts/gpu_daemon_smoke.py --model "$model" --clients 64 "${quant[@]}" \
      --log "$OUT/daemon_$(echo "${variant#dummy:}" | tr : _).log" 2>&1 | tee -a "$OUT/daemon.log"
    rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || fail daemon "$rc"
  done
fi

if has triton; then
  OUT="$OUT" bash scripts/triton_burst.sh 2>&1 | tee "$OUT/triton_burst.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || fail triton "$rc"
fi

if has kernels; then
  python3 bench/kernels.py --json "$OUT/bench_kernels.json" 2>&1 | tee "$OUT/bench.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || fail kernels "$rc"
  python3 bench/gemv.py 2>&1 | tee -a "$OUT/bench.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || fail kernels "$rc"
fi

NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
if has profile && [ "${PROFILE:-1}" = 1 ] && [ -n "$NCU" ]; then
  echo "== $NCU on one decode and one prefill attention call" | tee "$OUT/ncu.log"
  timeout 150 "$NCU" --profile-from-start off --clock-control none --section SpeedOfLight \
    --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis python3 bench/profile_attention.py >>"$OUT/ncu.log" 2>&1
  echo "ncu rc=$?" | tee -a "$OUT/ncu.log"
fi

if has sanitize && [ "${SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null; then
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
echo "gpu suite: stages '$STAGES' status=$status"
exit $status
