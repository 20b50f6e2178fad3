#!/usr/bin/env bash
# Issue 20's GPU figures in one device call (10 minutes), each stage time-boxed:
#   build    `inflightd build MODEL_SHAPE` into ENGINE (decode graphs up to MAX_SEQS), plus the
#            default model's tokenizer files from TOKENIZER_DIR when the build copied none
#            (the GPU image has no packaged default model)
#   offline  the BURSTS (512 and 1,024 requests of INPUT_LEN random tokens, OUTPUT_LEN output
#            tokens, all at once) through the engine in one process, no HTTP
#            (bench/serving_figures.py offline: output tok/s, step time per engine step,
#            GPU time per step, gaps between a request's outputs)
#   daemon   `inflightd serve ENGINE` with the same engine settings
#   serve    `inflightd bench serve` of each burst, the same prompts (same seed and tokenizer)
#            with the usage on every chunk (continuous_usage_stats), so a chunk that brings k
#            tokens counts k ITLs: the burst model's random ids past the default tokenizer's
#            49,152 decode to no text (about 60 % of llama-3's 128,256), and a step with no text
#            sends no chunk, so per-chunk gaps would span several steps
#   aiperf   NVIDIA's aiperf on the first burst's prompts (AIPERF_SITE: where its wheels are
#            installed; skipped when it does not import)
#   sweep    the packaged ShareGPT prompts (SWEEP_OUTPUT_LEN tokens out, ignore_eos): first
#            SWEEP_CAL_PROMPTS of them at once (rate=inf: saturation), whose output tok/s /
#            SWEEP_OUTPUT_LEN is the capacity in requests/s (their prompts are much shorter
#            than the bursts': mean 88 tokens in the default tokenizer); then Poisson arrivals
#            at SWEEP_FRACTIONS of it, one `inflightd bench sweep --request-rates R` per point
#            (a timed-out point loses only itself), as many prompts per point as the time
#            left allows
#   summary  bench/serving_figures.py summary: one table, summary.json, sweep.json and PNGs
# Everything goes to $OUT; progress lines carry UTC times. Knobs (environment):
#   OUT MODEL_SHAPE ENGINE TOKENIZER_DIR BURSTS INPUT_LEN OUTPUT_LEN SEED MAX_SEQS
#   MAX_BATCHED_TOKENS MEMORY_FRACTION | KV_CACHE_TOKENS PREFIX_CACHING(0) DEVICE DTYPE
#   BUILD_ARGS SERVE_ARGS BENCH_ARGS PORT AIPERF_SITE AIPERF_WORKERS SWEEP_FRACTIONS
#   SWEEP_OUTPUT_LEN SWEEP_CAL_PROMPTS SWEEP_MAX_PROMPTS SLO STAGES
#   DEADLINE (seconds from the start for everything, stopping the daemon and the summary too)
#   PYTHON THREADS (torch CPU threads of the offline run)
# Prefix caching is off by default on both sides: the sweep's points resend the same 500
# ShareGPT prompts, which would otherwise be prefix-cache hits (random burst prompts share
# nothing, so the bursts are unaffected either way).
# GPU (the device call wraps it with the wheels' install; about 9.5 minutes on an H200):
#   OUT=/tmp/o bash scripts/serving_figures.sh
# CPU, every stage at toy size (about 5 minutes on 2 cores; aiperf where AIPERF_SITE has it):
#   OUT=/tmp/dry MODEL_SHAPE=dummy:smollm2-135m DTYPE=float32 DEVICE=cpu KV_CACHE_TOKENS=32768 \
#   ENGINE=/tmp/dry-engine BURSTS=8,16 INPUT_LEN=32:64 OUTPUT_LEN=16 MAX_SEQS=16 \
#   MAX_BATCHED_TOKENS=512 SWEEP_OUTPUT_LEN=16 SWEEP_CAL_PROMPTS=16 SWEEP_MAX_PROMPTS=24 \
#   THREADS=1 DEADLINE=420 bash scripts/serving_figures.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
MODEL_SHAPE=${MODEL_SHAPE:-dummy:llama-3-8b}
ENGINE=${ENGINE:-/root/engines/serving-figures}
TOKENIZER_DIR=${TOKENIZER_DIR:-build/gpu_a/smollm2}
BURSTS=${BURSTS:-512,1024}
INPUT_LEN=${INPUT_LEN:-128:1024}
OUTPUT_LEN=${OUTPUT_LEN:-256}
SEED=${SEED:-1}
MAX_SEQS=${MAX_SEQS:-1024}
MAX_BATCHED_TOKENS=${MAX_BATCHED_TOKENS:-8192}
MEMORY_FRACTION=${MEMORY_FRACTION:-0.9}
KV_CACHE_TOKENS=${KV_CACHE_TOKENS:-}
PREFIX_CACHING=${PREFIX_CACHING:-0}
DEVICE=${DEVICE:-auto}
DTYPE=${DTYPE:-auto}
PORT=${PORT:-8020}
AIPERF_SITE=${AIPERF_SITE:-/tmp/aiperf-site}
AIPERF_WORKERS=${AIPERF_WORKERS:-4}
SWEEP_FRACTIONS=${SWEEP_FRACTIONS:-0.25,0.5,0.75,1,1.25}
SWEEP_OUTPUT_LEN=${SWEEP_OUTPUT_LEN:-256}
SWEEP_MAX_PROMPTS=${SWEEP_MAX_PROMPTS:-3000}
SWEEP_CAL_PROMPTS=${SWEEP_CAL_PROMPTS:-512}
SLO=${SLO:-ttft=1,tpot=0.05}
DEADLINE=${DEADLINE:-560}
STAGES=${STAGES:-build offline daemon serve aiperf sweep}
RESERVE=25  # kept for stopping the daemon and the summary
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# 1,024 streams and more: a socket each in the client and in the daemon
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
status=0
has() { [[ " $STAGES " == *" $1 "* ]]; }
log() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*"; }
fail() { log "stage $1 failed (rc=$2)"; status=1; }
# seconds a stage may take: WANT, or what is left before the deadline less the reserve
box() {
  local left=$(( DEADLINE - RESERVE - SECONDS ))
  (( left < $1 )) && { echo $(( left > 1 ? left : 1 )); return; }
  echo "$1"
}
first_burst=${BURSTS%%,*}
cache_args=(--memory-fraction "$MEMORY_FRACTION")
[ -n "$KV_CACHE_TOKENS" ] && cache_args=(--kv-cache-tokens "$KV_CACHE_TOKENS")
prefix_off=(); [ "$PREFIX_CACHING" = 1 ] || prefix_off=(--disable-prefix-caching)
log "serving figures: $MODEL_SHAPE, bursts $BURSTS ($INPUT_LEN in, $OUTPUT_LEN out)," \
  "stages: $STAGES"

{
  date -u +"%Y-%m-%d %H:%M:%S UTC"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
  $PY - <<'PY'
import importlib, sys
versions = []
for name in ("torch", "transformers", "tokenizers", "fastapi", "uvicorn", "pydantic", "zmq",
             "msgspec", "httpx", "matplotlib", "aiohttp"):
    try:
        module = importlib.import_module(name)
        versions.append(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as exc:
        versions.append(f"{name} MISSING ({type(exc).__name__})")
print("python", sys.version.split()[0], "|", ", ".join(versions))
PY
  echo "open files: $(ulimit -n); cores: $(nproc)"
  git log -1 --format="commit %h %s" 2>/dev/null
} 2>&1 | tee "$OUT/env.log"

if has build; then
  log "build $MODEL_SHAPE -> $ENGINE"
  timeout "$(box 150)" $PY -m server.cli build "$MODEL_SHAPE" --output "$ENGINE" --force \
    --max-batch-size "$MAX_SEQS" --max-num-tokens "$MAX_BATCHED_TOKENS" --dtype "$DTYPE" \
    ${BUILD_ARGS:-} > "$OUT/build.log" 2>&1
  rc=$?; [ $rc -eq 0 ] || fail build $rc
  if [ ! -f "$ENGINE/tokenizer.json" ] && [ -d "$TOKENIZER_DIR" ]; then
    for f in tokenizer.json tokenizer_config.json special_tokens_map.json \
             generation_config.json chat_template.jinja; do
      [ -f "$TOKENIZER_DIR/$f" ] && cp "$TOKENIZER_DIR/$f" "$ENGINE/"
    done
    echo "tokenizer files copied from $TOKENIZER_DIR" >> "$OUT/build.log"
  fi
  ls -l "$ENGINE" >> "$OUT/build.log" 2>&1
  tail -n 3 "$OUT/build.log"
fi

if has offline; then
  log "offline bursts $BURSTS"
  offline_args=(); [ "$PREFIX_CACHING" = 1 ] || offline_args=(--no-prefix-caching)
  [ -n "${THREADS:-}" ] && offline_args+=(--threads "$THREADS")
  timeout "$(box 200)" $PY bench/serving_figures.py offline --model "$ENGINE" \
    --tokenizer "$ENGINE" --bursts "$BURSTS" --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" \
    --seed "$SEED" --max-num-seqs "$MAX_SEQS" --max-num-batched-tokens "$MAX_BATCHED_TOKENS" \
    "${cache_args[@]}" "${offline_args[@]}" --device "$DEVICE" --dtype "$DTYPE" \
    --json "$OUT/offline.json" > "$OUT/offline.log" 2>&1
  rc=$?; [ $rc -eq 0 ] || fail offline $rc
  grep "^offline burst" "$OUT/offline.log" || tail -n 5 "$OUT/offline.log"
fi

pid=
stop_daemon() {
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  pid=
}
trap stop_daemon EXIT
engine_stats() {  # the engine's counters (preemptions, tokens) after a stage
  $PY - "$PORT" "$1" <<'PY' >> "$OUT/engine_stats.log" 2>&1
import sys, httpx
print(sys.argv[2], httpx.get(f"http://127.0.0.1:{sys.argv[1]}/v1/engine/stats", timeout=5).text)
PY
}

if has daemon; then
  log "daemon on port $PORT"
  $PY -m server.cli serve "$ENGINE" --served-model-name burst-model --port "$PORT" \
    --max-num-seqs "$MAX_SEQS" --max-num-batched-tokens "$MAX_BATCHED_TOKENS" \
    "${cache_args[@]}" "${prefix_off[@]}" --device "$DEVICE" --dtype "$DTYPE" \
    --log-level warning ${SERVE_ARGS:-} > "$OUT/daemon.log" 2>&1 &
  pid=$!
  $PY - "$PORT" "$(box 180)" "$pid" <<'PY' \
    || { fail daemon 1; tail -n 20 "$OUT/daemon.log"; stop_daemon; }
import sys, time, httpx
port, limit, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
end = time.monotonic() + limit
while time.monotonic() < end:
    try:
        if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
            sys.exit(0)
    except httpx.TransportError:
        pass
    try:  # gone, or a zombie its shell has not reaped yet
        if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            sys.exit("the daemon exited")
    except OSError:
        sys.exit("the daemon exited")
    time.sleep(0.5)
sys.exit("the daemon did not get ready")
PY
  [ -n "$pid" ] && log "daemon ready" && engine_stats ready
fi

daemon_cpu() {  # CPU seconds so far of each of the daemon's processes (api, engine)
  local p
  for p in $pid $(pgrep -P "$pid"); do
    awk -v p="$p" '{sub(/.*\) /, ""); printf "%s %.2f ", p, ($12 + $13) / 100}' \
      "/proc/$p/stat" 2>/dev/null || continue
    tr '\0' ' ' < "/proc/$p/cmdline" | cut -c1-60
  done
}
bench() {  # NAME TIMEOUT ARGS...: one `inflightd bench` run, its table in NAME.log; the
  # client's CPU seconds and the daemon's processes' before and after go to cpu_NAME.log
  # (saturated: CPU seconds near the burst's wall time)
  local name=$1 limit=$2; shift 2
  { echo "before (pid cpu_s command)"; daemon_cpu; } > "$OUT/cpu_$name.log"
  timeout "$(box "$limit")" $PY - "$@" --base-url "http://127.0.0.1:$PORT" \
    --model burst-model --tokenizer "$ENGINE" --seed "$SEED" --no-progress \
    --continuous-usage-stats ${BENCH_ARGS:-} \
    > "$OUT/$name.log" 2>> "$OUT/cpu_$name.log" <<'PY'
import resource, subprocess, sys, time
start = time.monotonic()
rc = subprocess.run([sys.executable, "-m", "server.cli", "bench", *sys.argv[1:]]).returncode
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"client: {usage.ru_utime + usage.ru_stime:.1f} CPU s in {time.monotonic() - start:.1f} s",
      file=sys.stderr)
sys.exit(rc)
PY
  local rc=$?
  { echo "after"; daemon_cpu; } >> "$OUT/cpu_$name.log"
  return $rc
}

if has serve && [ -n "$pid" ]; then
  for num in ${BURSTS//,/ }; do
    log "bench serve: $num requests at once"
    bench "serve_$num" 240 serve --num-prompts "$num" --input-len "$INPUT_LEN" \
      --output-len "$OUTPUT_LEN" --json "$OUT/serve_$num.json"
    rc=$?; [ $rc -eq 0 ] || fail "serve $num" $rc
    grep -E "Output token throughput|^ITL|^TTFT|Failed" "$OUT/serve_$num.log" | tr -s ' '
    grep "^client" "$OUT/cpu_serve_$num.log"
    engine_stats "serve_$num"
    if [ "$num" = "$first_burst" ] && has aiperf; then
      # aiperf right after the same burst through bench serve, on the same prompts
      log "aiperf: the $num-request burst"
      if PYTHONPATH="$AIPERF_SITE${PYTHONPATH:+:$PYTHONPATH}" $PY -c "import aiperf.cli" \
          2>"$OUT/aiperf_import.log"; then
        $PY bench/serving_figures.py aiperf-input --model "$ENGINE" --num-prompts "$num" \
          --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --seed "$SEED" \
          --output "$OUT/aiperf_prompts.jsonl" > "$OUT/aiperf.log" 2>&1
        # a local tokenizer path is read as such only outside HF offline mode (offline,
        # aiperf looks the name up in the hub cache); nothing here can reach a hub anyway
        aiperf_cmd=(aiperf profile --model burst-model --url "http://127.0.0.1:$PORT"
          --endpoint-type completions --streaming
          --input-file "$OUT/aiperf_prompts.jsonl" --custom-dataset-type single_turn
          --dataset-sampling-strategy sequential --request-count "$num" --concurrency "$num"
          --tokenizer "$ENGINE" --use-legacy-max-tokens --extra-inputs ignore_eos:true
          --use-server-token-count --random-seed "$SEED" --workers-max "$AIPERF_WORKERS"
          --ui none --no-server-metrics --no-gpu-telemetry --artifact-dir "$OUT/aiperf")
        echo "${aiperf_cmd[*]}" >> "$OUT/aiperf.log"
        env -u HF_HUB_OFFLINE -u TRANSFORMERS_OFFLINE \
          PYTHONPATH="$AIPERF_SITE${PYTHONPATH:+:$PYTHONPATH}" \
          timeout "$(box 150)" $PY -m "${aiperf_cmd[@]}" >> "$OUT/aiperf.log" 2>&1
        rc=$?; [ $rc -eq 0 ] || fail aiperf $rc
        grep -E "Output Token Throughput \(|Request Throughput|Benchmark Duration|Error" \
          "$OUT/aiperf.log" | tr -s ' ─'
        engine_stats aiperf
      else
        log "aiperf does not import: skipped ($(tail -n 1 "$OUT/aiperf_import.log"))"
      fi
    fi
  done
fi

sweep_point() {  # INDEX RATE NUM_PROMPTS TIMEOUT: one `bench sweep` point
  bench "sweep_rate_$1" "$4" sweep --dataset sharegpt --num-prompts "$3" \
    --output-len "$SWEEP_OUTPUT_LEN" --ignore-eos --request-rates "$2" --slo "$SLO" \
    --json "$OUT/sweep_rate_$1.json" --plot "$OUT/sweep_rate_$1.png"
  rc=$?; [ $rc -eq 0 ] || fail "sweep rate $2" $rc
  rm -f "$OUT/sweep_rate_$1.png"  # the summary draws every point in one chart
  grep -A 2 "^ *point" "$OUT/sweep_rate_$1.log" | tail -n 1
}

if has sweep && [ -n "$pid" ]; then
  # saturation: the sweep's own prompts all at once; its output tok/s sets the capacity
  log "sweep point 0: $SWEEP_CAL_PROMPTS ShareGPT prompts at once (saturation, capacity)"
  sweep_point 0 inf "$SWEEP_CAL_PROMPTS" 150
  seconds=$(( DEADLINE - RESERVE - SECONDS ))
  log "sweep: planning ${seconds}s of points"
  points=()
  [ -f "$OUT/sweep_rate_0.json" ] && mapfile -t points < <($PY bench/serving_figures.py rates \
    --burst-json "$OUT/sweep_rate_0.json" --output-len "$SWEEP_OUTPUT_LEN" \
    --fractions "$SWEEP_FRACTIONS" --seconds "$seconds" --max-prompts "$SWEEP_MAX_PROMPTS" \
    --json "$OUT/rates.json")
  i=0
  [ ${#points[@]} -gt 0 ] || log "sweep: no rates planned (no saturation point?)"
  for point in "${points[@]+"${points[@]}"}"; do
    read -r rate num expected <<< "$point"
    i=$((i + 1))
    left=$(( DEADLINE - RESERVE - SECONDS ))
    (( left < 10 )) && { log "sweep: no time left for rate $rate"; status=1; break; }
    log "sweep point $i: rate $rate req/s, $num prompts (~${expected}s)"
    sweep_point "$i" "$rate" "$num" $(( expected + 30 ))
  done
  engine_stats sweep
fi

stop_daemon
log "summary"
timeout 60 $PY bench/serving_figures.py summary "$OUT" 2>&1 | tee "$OUT/summary.log"
log "done (status $status)"
exit $status
