#!/usr/bin/env bash
# Issue 23's burst figure: one daemon, 512 requests at once through the OpenAI completions
# route and through Triton's generate_stream (TensorRT-LLM's inputs), the same prompts, twice
# each, alternating; prints the output tok/s of every run and the ratio of the medians
# (acceptance: generate_stream within 5 % of the OpenAI path). The Triton door reads text, so
# MODEL needs a tokenizer (default: the packaged default model, converted by gpu_suite.sh's
# "default" stage). Runs as gpu_suite.sh's "triton" stage, or alone:
#   OUT=dir MODEL=path bash scripts/triton_burst.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
PORT=${PORT:-8010}
NUM=${NUM_PROMPTS:-512}
INPUT_LEN=${INPUT_LEN:-128:1024}
OUTPUT_LEN=${OUTPUT_LEN:-256}
# No prefix cache: the rounds resend the same prompts, and a round that finds the previous
# round's blocks prefills nothing (the first H100 run's completions rounds took 6.3 and 4.4 s)
python3 -m server.cli serve ${MODEL:+"$MODEL"} --served-model-name burst-model \
  --served-model-name ensemble --port "$PORT" --max-num-seqs "$NUM" --disable-prefix-caching \
  --max-num-batched-tokens 8192 --log-level warning >"$OUT/triton_burst_daemon.log" 2>&1 &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null; wait "$pid"' EXIT
python3 - "$PORT" "$pid" <<'PY' || { echo "the daemon did not get ready"; tail -n 5 "$OUT/triton_burst_daemon.log"; exit 1; }
import os, sys, time, httpx
port, pid = sys.argv[1], int(sys.argv[2])
for _ in range(900):
    try:
        if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
            sys.exit(0)
    except httpx.TransportError:
        pass
    try:  # a daemon that exited (e.g. a missing package) ends the wait at once
        if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            sys.exit(1)
    except OSError:
        sys.exit(1)
    time.sleep(1)
sys.exit(1)
PY
status=0
for round in 1 2; do
  for endpoint in completions triton; do
    timeout 300 python3 -m server.cli bench serve --base-url "http://127.0.0.1:$PORT" \
      --model burst-model ${MODEL:+--tokenizer "$MODEL"} --endpoint "$endpoint" --triton-model ensemble --num-prompts "$NUM" \
      --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --seed 1 --no-progress \
      --json "$OUT/triton_burst_${endpoint}_$round.json" >"$OUT/triton_burst_${endpoint}_$round.log" 2>&1 \
      || { echo "bench $endpoint round $round failed"; status=1; }
  done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
runs = {e: [json.loads(p.read_text())["summary"]["output_throughput"]
            for p in sorted(Path(sys.argv[1]).glob(f"triton_burst_{e}_*.json"))]
        for e in ("completions", "triton")}
for endpoint, figures in runs.items():
    print(endpoint, " ".join(f"{f:,.0f}" for f in figures), "output tok/s")
if all(runs.values()):
    ratio = statistics.median(runs["triton"]) / statistics.median(runs["completions"])
    print(f"generate_stream / OpenAI completions: {ratio:.3f} (acceptance: >= 0.95)")
PY
exit $status
