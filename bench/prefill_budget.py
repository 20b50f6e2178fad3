"""Time to first token against inter-token latency, per --max-prefill-tokens, in the engine
alone (no HTTP): running decodes while long prompts queue behind them.

    python bench/prefill_budget.py [--model M] [--caps none,1024,512,256]

For each cap: `--decodes` requests with short prompts are brought to decoding, then
`--prompts` prompts of `--prompt-len` random tokens arrive at once, and the engine steps
until every prompt has its first token. Reported per cap:

    step p50/p99/max ms  the engine's step time while the prompts were prefilled
    itl p50/p99/max ms   gaps between a decoding request's tokens over the same steps
                         (each decode is in every step, so this is the step time seen from
                         a stream)
    ttft mean/max s      from the prompts' arrival to each one's first token
    prefill tok/s        prompt tokens computed per second over the phase

One engine serves every cap: between caps, with nothing running, its scheduler is replaced
by a fresh one with the new cap (and an empty prefix cache, so every cap prefills every
prompt).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

# the repository root instead of bench/, whose kernels.py would shadow the `kernels`
# package that transformers imports when it is installed
sys.path[0] = str(Path(__file__).resolve().parents[1])

from server.config import DEFAULT_MODEL, CacheConfig  # noqa: E402
from server.engine.llm import LLM  # noqa: E402
from server.scheduler.request import SamplingParams  # noqa: E402
from server.scheduler.scheduler import Scheduler  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def fresh_scheduler(engine, cap: int | None) -> None:
    """The engine's scheduler again, empty, with another prefill cap."""
    old = engine.scheduler
    blocks = old.block_manager
    engine.scheduler = Scheduler(
        replace(old.config, max_prefill_tokens=cap),
        CacheConfig(block_size=blocks.block_size, num_blocks=blocks.num_blocks))


def run_cap(engine, cap: int | None, args, tag: str) -> dict:
    fresh_scheduler(engine, cap)
    rng = random.Random(0)
    vocab = engine.info.vocab_size
    decode_params = SamplingParams(temperature=0, max_tokens=args.decode_len, ignore_eos=True)
    decode_ids = [f"{tag}-dec{i}" for i in range(args.decodes)]
    for req_id in decode_ids:
        engine.add_request(req_id, [rng.randrange(vocab) for _ in range(16)], decode_params)
    started = set()
    while len(started) < len(decode_ids):  # until every decode has its first token
        started.update(o.req_id for o in engine.step())
    prompt_ids = [f"{tag}-prompt{i}" for i in range(args.prompts)]
    arrived = time.perf_counter()
    for req_id in prompt_ids:
        engine.add_request(req_id, [rng.randrange(vocab) for _ in range(args.prompt_len)],
                           SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    first_token: dict[str, float] = {}
    last_token = {req_id: arrived for req_id in decode_ids}
    gaps: list[float] = []
    steps: list[float] = []
    while len(first_token) < len(prompt_ids):
        began = time.perf_counter()
        outputs = engine.step()
        now = time.perf_counter()
        steps.append(now - began)
        for output in outputs:
            if output.req_id in last_token:
                gaps.append(now - last_token[output.req_id])
                last_token[output.req_id] = now
            elif output.req_id in prompt_ids:
                first_token.setdefault(output.req_id, now - arrived)
    engine.abort(decode_ids)
    while engine.has_unfinished():
        engine.step()
    phase_s = time.perf_counter() - arrived
    ttfts = list(first_token.values())
    return {"cap": cap or engine.scheduler.config.max_num_batched_tokens,
            "steps": len(steps),
            "step_ms": [1e3 * percentile(steps, q) for q in (0.5, 0.99, 1.0)],
            "itl_ms": [1e3 * percentile(gaps, q) for q in (0.5, 0.99, 1.0)],
            "ttft_s": [sum(ttfts) / len(ttfts), max(ttfts)],
            "prefill_tok_s": args.prompts * args.prompt_len / phase_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--caps", default="none,1024,512,256",
                        help="comma-separated --max-prefill-tokens values (none: no cap)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--decodes", type=int, default=8)
    parser.add_argument("--decode-len", type=int, default=4096)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=1536)
    parser.add_argument("--kv-cache-tokens", type=int, default=65536)
    args = parser.parse_args(argv)
    llm = LLM(args.model, max_num_batched_tokens=args.max_num_batched_tokens,
              kv_cache_tokens=args.kv_cache_tokens, max_model_len=args.decode_len + 64)
    engine = llm.engine
    print(f"{engine.info.model_name} on {engine.info.device}, {args.decodes} decodes, "
          f"{args.prompts} prompts of {args.prompt_len} tokens, "
          f"--max-num-batched-tokens {args.max_num_batched_tokens}")
    print("cap | steps | step p50/p99/max ms | itl p50/p99/max ms | ttft mean/max s | "
          "prefill tok/s")
    warmup = argparse.Namespace(**{**vars(args), "decodes": 2, "prompts": 1,
                                   "prompt_len": 256})
    run_cap(engine, None, warmup, "warmup")  # first steps pay for lazy initialisation
    for i, text in enumerate(args.caps.split(",")):
        cap = None if text == "none" else int(text)
        r = run_cap(engine, cap, args, f"run{i}")
        print(f"{r['cap']} | {r['steps']} | {'/'.join(f'{v:.0f}' for v in r['step_ms'])} | "
              f"{'/'.join(f'{v:.0f}' for v in r['itl_ms'])} | "
              f"{r['ttft_s'][0]:.2f}/{r['ttft_s'][1]:.2f} | {r['prefill_tok_s']:,.0f}",
              flush=True)
    llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
