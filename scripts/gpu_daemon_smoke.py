"""The daemon on a GPU, end to end: `inflightd serve MODEL` (engine directory built into the
cache, our kernels, CUDA graphs, async scheduling), then concurrent completions, streamed and
not, some clients leaving after their first chunk, then the stats, the metrics, and a SIGTERM
drain. Prompts are token ids, so models without a tokenizer (dummy weights) serve too.

    python3 scripts/gpu_daemon_smoke.py --model dummy:smollm2-135m [--clients 48]

Exit status 0 when every check holds; each check prints a line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def start_daemon(model: str, port: int, log_path: Path, *, quantization: str | None = None,
                 kv_cache_dtype: str = "auto") -> subprocess.Popen:
    args = [sys.executable, "-m", "server.cli", "serve", model, "--host", "127.0.0.1",
            "--port", str(port), "--max-num-seqs", "64", "--log-level", "info",
            "--kv-cache-dtype", kv_cache_dtype]
    if quantization:
        args += ["--quantization", quantization]
    return subprocess.Popen(args, cwd=REPO, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def wait_ready(base_url: str, process: subprocess.Popen, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if process.poll() is not None:
            raise SystemExit(f"the daemon exited with {process.returncode} while starting")
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the daemon was not ready after {timeout_s:.0f} s")


async def one_client(client: httpx.AsyncClient, index: int, model: str) -> dict:
    rng = random.Random(index)
    max_tokens = rng.randint(8, 64)
    prompt = [rng.randrange(100, 30000) for _ in range(rng.randint(16, 400))]
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0 if index % 3 else 0.8,
            "ignore_eos": True}
    if index % 2 == 0:
        response = await client.post("/v1/completions", json=body)
        usage = response.json().get("usage", {})
        return {"status": response.status_code, "tokens": usage.get("completion_tokens"),
                "want": max_tokens}
    leaves_early = index % 8 == 1
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    tokens = None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if leaves_early and line.startswith("data: "):
                return {"status": response.status_code, "tokens": None, "want": None}
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return {"status": response.status_code, "tokens": tokens, "want": max_tokens}


async def run_clients(base_url: str, model: str, num_clients: int) -> list[dict]:
    limits = httpx.Limits(max_connections=num_clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        return await asyncio.gather(*(one_client(client, i, model) for i in range(num_clients)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dummy:smollm2-135m")
    parser.add_argument("--port", type=int, default=18123)
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--log", type=Path, default=Path("daemon.log"))
    parser.add_argument("--quantization", choices=("fp8",), default=None)
    parser.add_argument("--kv-cache-dtype", choices=("auto", "fp8"), default="auto")
    args = parser.parse_args()
    base_url = f"http://127.0.0.1:{args.port}"
    process = start_daemon(args.model, args.port, args.log, quantization=args.quantization,
                           kv_cache_dtype=args.kv_cache_dtype)
    failures = 0

    def check(ok: bool, what: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)

    try:
        print(f"ready after {wait_ready(base_url, process, timeout_s=600):.0f} s", flush=True)
        if args.quantization:
            listening = [line for line in args.log.read_text().splitlines()
                         if "listening on" in line]
            check(bool(listening) and args.quantization in listening[0],
                  f"the start-up log names {args.quantization}: {listening[:1]}")
        if args.kv_cache_dtype == "fp8":
            kv_lines = [line for line in args.log.read_text().splitlines()
                        if "KV cache:" in line]
            check(bool(kv_lines) and "float8_e4m3fn" in kv_lines[0],
                  f"the start-up log names the e4m3 KV cache: {kv_lines[:1]}")
        start = time.monotonic()
        results = asyncio.run(run_clients(base_url, args.model, args.clients))
        seconds = time.monotonic() - start
        finished = [r for r in results if r["want"] is not None]
        check(all(r["status"] == 200 for r in results), f"{len(results)} clients got 200")
        check(all(r["tokens"] == r["want"] for r in finished),
              f"{len(finished)} finished clients got exactly max_tokens tokens "
              f"({sum(r['tokens'] or 0 for r in finished)} in all, {seconds:.1f} s)")
        time.sleep(1)
        stats = httpx.get(f"{base_url}/v1/engine/stats", timeout=10).json()
        check(stats["num_running"] == 0 and stats["num_waiting"] == 0,
              f"nothing left running or waiting ({stats['num_running']}, "
              f"{stats['num_waiting']}); generation tokens {stats['generation_tokens_total']}")
        metrics = httpx.get(f"{base_url}/metrics", timeout=10).text
        check("inflightd:generation_tokens_total" in metrics, "/metrics has the token counters")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = None
    check(code == 0, f"SIGTERM drained and exited with {code}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
