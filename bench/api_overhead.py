"""What the api process spends per streamed token, with the engine taken out of the picture.

    python bench/api_overhead.py [--baseline-tree DIR] [--concurrency 512,1024,2048]

The daemon's api process (`inflightd serve`, unchanged) runs against bench/fake_engine.py, a
stand-in engine on the same ZeroMQ protocol that emits one token per step for every open
request at a fixed pace. A client (bench/sse_load.py, in this process) opens C connections,
sends C streamed chat requests at once and reads every stream to [DONE]. Each burst runs
twice, with a short and a long output length, and the api process's CPU time (user + system,
from /proc, the fake engine and the client excluded) is split into:

    us/token     (CPU_long - CPU_short) / (tokens_long - tokens_short): the cost of one more
                 streamed token (engine output decoding, detokenization, stop strings, JSON
                 chunk, SSE write, the event loop's share)
    us/request   what is left per request: parsing, chat template and tokenization, the
                 response's start and end
    tok/s        tokens delivered per second of the long burst's wall time
    events/tok   SSE events the client received per token of the long burst (below 1 once
                 chunks coalesce because the api fell behind)
    gap p50/p99  ms between the client's reads that brought events (its inter-token latency)

--offered sets the pace: the fake engine steps every C / offered seconds, so every
concurrency offers the same tokens per second (one the api keeps up with gives the pure
per-token cost; a flood shows coalescing). With --baseline-tree the same bursts run, in turns,
against another checkout's api process (e.g. `git archive main | tar -x -C DIR`), and the
ratios baseline / this tree are printed side by side. --profile FILE writes a cProfile of
this tree's api process over all its bursts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

# the repository root instead of bench/, whose kernels.py would shadow the `kernels`
# package that transformers imports when it is installed
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.sse_load import LoadResult, run_load  # noqa: E402
from bench.stack_categories import breakdown  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
THIS_TREE = BENCH_DIR.parent
DEFAULT_TOKENIZER = Path.home() / ".cache/inflightd/models/HuggingFaceTB--SmolLM2-135M-Instruct"
# Runs the daemon's own CLI with the fake engine in place of the real one; with
# BENCH_PROFILE set, under cProfile (written when the daemon stops on SIGINT).
LAUNCHER = """
import os, sys
import server.engine.service.client as client
client.ENGINE_MODULE = "fake_engine"
from server.cli import main
profile_path = os.environ.get("BENCH_PROFILE")
if profile_path:
    import cProfile
    profiler = cProfile.Profile()
    status = profiler.runcall(main, sys.argv[1:])
    profiler.dump_stats(profile_path)
    sys.exit(status)
sys.exit(main(sys.argv[1:]))
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def api_process(tree: Path, *, tokenizer_dir: Path, step_interval_s: float,
                extra_args: list[str], profile: Path | None = None):
    """The tree's `inflightd serve` on a free port with the fake engine; yields (port, pid)."""
    port = free_port()
    # only the fake engine joins the path: bench/'s other modules would shadow packages
    # (bench/kernels.py, `kernels`)
    engine_dir = Path(tempfile.mkdtemp(prefix="fake-engine-"))
    (engine_dir / "fake_engine.py").symlink_to(BENCH_DIR / "fake_engine.py")
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{engine_dir}",
           "FAKE_ENGINE": json.dumps({"tokenizer_dir": str(tokenizer_dir),
                                      "step_interval_s": step_interval_s})}
    if profile is not None:
        env["BENCH_PROFILE"] = str(profile)
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "serve", "--port", str(port), "--log-level",
         "warning", "--max-request-body-bytes", "65536", *extra_args],
        cwd=tree, env=env)
    try:
        wait_ready(port, process, tree)
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(engine_dir, ignore_errors=True)


def wait_ready(port: int, process: subprocess.Popen, tree: Path,
               timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        with suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the api process of {tree} did not start")


def bodies(concurrency: int, output_len: int, stop: list[str]) -> list[dict]:
    extra = {"stop": stop} if stop else {}
    return [{"messages": [{"role": "user", "content": f"Tell me a story, number {i}."}],
             "max_tokens": output_len, "stream": True, **extra} for i in range(concurrency)]


def burst(port: int, pid: int, concurrency: int, output_len: int,
          stop: list[str]) -> tuple[float, LoadResult]:
    """One burst; returns the api process's CPU seconds over it and what the client saw."""
    before = cpu_seconds(pid)
    result = asyncio.run(run_load(port=port, path="/v1/chat/completions",
                                  bodies=bodies(concurrency, output_len, stop)))
    cpu = cpu_seconds(pid) - before
    if result.num_complete != concurrency:
        raise RuntimeError(f"{concurrency - result.num_complete} of {concurrency} streams "
                           f"did not end with [DONE]")
    return cpu, result


@contextmanager
def sampled(py_spy: str | None, pid: int, out: Path | None):
    """py-spy samples the process meanwhile (collapsed stacks to `out`), if asked."""
    if py_spy is None or out is None:
        yield
        return
    sampler = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--format", "raw",
                                "--rate", "200", "--nonblocking", "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(60)


def measure(port: int, pid: int, concurrency: int, short_len: int, long_len: int, *,
            stop: list[str], py_spy: str | None = None, stacks: Path | None = None) -> dict:
    cpu_short, _ = burst(port, pid, concurrency, short_len, stop)
    with sampled(py_spy, pid, stacks):
        cpu_long, long_run = burst(port, pid, concurrency, long_len, stop)
    extra_tokens = concurrency * (long_len - short_len)
    per_token = (cpu_long - cpu_short) / extra_tokens
    per_request = (cpu_short - per_token * concurrency * short_len) / concurrency
    p50, p99 = long_run.gap_percentiles(0.5, 0.99)
    tokens = concurrency * long_len
    # the role chunk per stream and [DONE] are not tokens' events
    token_events = long_run.num_events - 2 * concurrency
    figures = {"us_per_token": 1e6 * per_token, "us_per_request": 1e6 * per_request,
               "tokens_per_s": tokens / long_run.wall_s,
               "events_per_token": token_events / tokens,
               "gap_p50_ms": 1e3 * p50, "gap_p99_ms": 1e3 * p99}
    if stacks is not None and stacks.exists():
        # the long burst's CPU per token, shared out by where py-spy found the process
        per_token_all = 1e6 * cpu_long / tokens
        figures["categories_us_per_token"] = {
            category: round(share * per_token_all, 2)
            for category, share in breakdown(stacks).items()}
    return figures


def print_table(rows: list[tuple[str, int, dict]], baseline: dict | None) -> None:
    header = ("tree", "streams", "us/token", "us/request", "tok/s", "events/tok",
              "gap p50 ms", "gap p99 ms")
    print(" | ".join(header))
    for tree, concurrency, figures in rows:
        print(" | ".join([tree, str(concurrency), f"{figures['us_per_token']:.1f}",
                          f"{figures['us_per_request']:.0f}", f"{figures['tokens_per_s']:,.0f}",
                          f"{figures['events_per_token']:.2f}", f"{figures['gap_p50_ms']:.1f}",
                          f"{figures['gap_p99_ms']:.1f}"]))
    if baseline:
        print("\nbaseline / this tree (higher is better for this tree):")
        for tree, concurrency, figures in rows:
            if tree != "this":
                continue
            base = baseline[concurrency]
            token = base["us_per_token"] / figures["us_per_token"]
            request = base["us_per_request"] / figures["us_per_request"]
            rate = figures["tokens_per_s"] / base["tokens_per_s"]
            print(f"  {concurrency} streams: us/token x{token:.2f}, us/request x{request:.2f}, "
                  f"tok/s x{rate:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="512,1024,2048")
    parser.add_argument("--short-len", type=int, default=16)
    parser.add_argument("--long-len", type=int, default=96)
    parser.add_argument("--offered", type=float, default=8000.0,
                        help="tokens per second the fake engine offers, at every concurrency")
    parser.add_argument("--baseline-tree", type=Path, default=None)
    parser.add_argument("--tokenizer-dir", type=Path, default=DEFAULT_TOKENIZER)
    parser.add_argument("--profile", type=Path, default=None,
                        help="cProfile this tree's api process into FILE.<streams>.prof")
    parser.add_argument("--py-spy", default=None, metavar="EXE",
                        help="sample each long burst with this py-spy and print the api "
                             "process's CPU per token by category (all of the long burst's "
                             "CPU, its per-request part included)")
    parser.add_argument("--stop", action="append", default=[],
                        help="a stop string every request asks for (repeatable; the fake "
                             "engine's text never contains it, so each is checked to the "
                             "end)")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="an extra `inflightd serve` argument (repeatable)")
    args = parser.parse_args(argv)
    trees = [("this", THIS_TREE)]
    if args.baseline_tree is not None:
        trees.insert(0, ("baseline", args.baseline_tree.resolve()))
    rows, baseline = [], {}
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        for name, tree in trees:  # in turns, so drifting machine load hits both alike
            profile = args.profile if name == "this" and args.profile else None
            with api_process(tree, tokenizer_dir=args.tokenizer_dir,
                             step_interval_s=concurrency / args.offered,
                             extra_args=args.serve_arg,
                             profile=profile and profile.with_suffix(f".{concurrency}.prof")
                             ) as (port, pid):
                stacks = (Path(tempfile.mkdtemp(prefix="api-overhead-"))
                          / f"{name}.{concurrency}.txt") if args.py_spy else None
                figures = measure(port, pid, concurrency, args.short_len, args.long_len,
                                  stop=args.stop, py_spy=args.py_spy, stacks=stacks)
            rows.append((name, concurrency, figures))
            if name == "baseline":
                baseline[concurrency] = figures
            print(json.dumps({"tree": name, "streams": concurrency, "stacks": str(stacks),
                              **{k: v if isinstance(v, dict) else round(v, 3)
                                 for k, v in figures.items()}}), flush=True)
    print()
    print_table(rows, baseline or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
