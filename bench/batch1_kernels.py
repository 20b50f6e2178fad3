"""Where a batch-1 decode step's GPU time goes: each kernel's microseconds a token, and the time
no kernel runs, from torch.profiler (CUPTI) over one request decoding alone with the engine's
CUDA graphs and defaults (the decode stack where it applies).

A step's time is the profiled span over the tokens decoded; "idle" is that span less the union
of the kernels' intervals: launch gaps between graphs and inside them, and any wait on the host.

    python3 bench/batch1_kernels.py [--models dummy:gpt2-xl,dummy:llama-3-8b@int4_wo]
        [--tokens 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.gpu_probes import kernel_ms_by_group  # noqa: E402
from bench.offline import free_gpu_memory  # noqa: E402
from server.engine.llm import LLM  # noqa: E402
from server.scheduler.request import SamplingParams  # noqa: E402

MODELS = "dummy:gpt2-xl,dummy:starcoder-1b"


def decode_alone(llm: LLM, num_tokens: int) -> int:
    """One request of 32 prompt tokens decoding num_tokens; returns the tokens seen."""
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=num_tokens, ignore_eos=True)
    engine.add_request("batch1", [101] * 32, params)
    count = 0
    while engine.has_unfinished():
        count += sum(len(out.new_token_ids) for out in engine.step())
    torch.cuda.synchronize()
    return count


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Microseconds covered by at least one of the (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def profile_model(spec: str, num_tokens: int) -> dict:
    """spec: MODEL[@QUANTIZATION]."""
    model, _, quantization = spec.partition("@")
    llm = LLM(model, device="cuda", max_num_seqs=8, quantization=quantization or None)
    llm.engine.runner.capture_graphs()
    decode_alone(llm, 16)  # warm-up: the prefill's and decode's graphs and kernels loaded
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        tokens = decode_alone(llm, num_tokens)
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    # the prefill and the first token come before the steady decode: its kernels are counted
    # in (a few per cent at 64 tokens), as batch-1 tok/s counts from the first token on
    span = max(e.time_range.end for e in kernels) - min(e.time_range.start for e in kernels)
    busy = union_us([(e.time_range.start, e.time_range.end) for e in kernels])
    by_name: dict[str, list[float]] = defaultdict(list)
    for e in kernels:
        by_name[e.name].append(e.time_range.end - e.time_range.start)
    rows = sorted(({"kernel": name, "calls_per_token": len(t) / tokens,
                    "us_per_token": sum(t) / tokens} for name, t in by_name.items()),
                  key=lambda r: -r["us_per_token"])
    groups = {group: 1e3 * ms / tokens for group, ms in kernel_ms_by_group(prof).items()}
    del llm
    free_gpu_memory()
    return {"model": spec, "tokens": tokens, "step_us": span / tokens,
            "idle_us": (span - busy) / tokens, "kernels": rows, "groups_us": groups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS, help="MODEL[@QUANTIZATION],...")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = [profile_model(m, args.tokens) for m in args.models.split(",")]
    print(torch.cuda.get_device_name())
    for r in results:
        print(f"\n{r['model']}: {r['step_us']:.1f} us a token over {r['tokens']} tokens, "
              f"{r['idle_us']:.1f} with no kernel running")
        for k in r["kernels"][:20]:
            print(f"  {k['us_per_token']:8.1f} us  {k['calls_per_token']:5.2f}/token  "
                  f"{k['kernel'][:90]}")
        print("  by group (us a token; kernels that overlap under programmatic launch count "
              "in full): " + ", ".join(f"{g} {us:.1f}" for g, us in
                                       sorted(r["groups_us"].items(), key=lambda x: -x[1])))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
