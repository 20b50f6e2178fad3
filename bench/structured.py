"""What grammar-constrained decoding costs: the same requests with and without one
json_schema, in one run on one engine, plus the compile latency of a 20-field schema.

    python bench/structured.py --model dummy:llama-3-8b --num-prompts 256 \
        --input-len 128:512 --output-len 256

Both runs are greedy with the same prompts and max_tokens. The free run ignores EOS, so
every request writes output_len tokens; a constrained request ends when its JSON is
complete (or at output_len), so the figure compared is output tokens per second. The
schema leaves an open-ended array of strings so that a random-weight model writes long
outputs, as a real model filling a form would.

Host time per constrained step (runner.grammar_times):
  wait  the host waiting for the step in flight, whose tokens the matchers need before
        this step's masks (async scheduling would otherwise not wait at all for greedy rows)
  fill  filling the bitmask of the step's constrained rows (xgrammar, on the host, while
        the device runs this step's forward pass)
Compile latency: a schema not seen before, from submission to a compiled grammar, on the
engine's compiler (tokenizer loaded); and the first constrained request's time to its
first token against an unconstrained one's.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

# the repository root instead of bench/, whose kernels.py would shadow the `kernels`
# package that transformers imports when it is installed
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.gpu_probes import StepTimer  # noqa: E402
from server.engine.llm import LLM  # noqa: E402
from server.scheduler.request import SamplingParams  # noqa: E402
from server.structured_output.spec import GrammarSpec  # noqa: E402

FORM_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "verified": {"type": "boolean"},
        "category": {"enum": ["book", "film", "music", "game"]},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "rating", "verified", "category", "notes"],
}


def twenty_field_schema(salt: int) -> dict:
    kinds = [{"type": "string"}, {"type": "integer", "minimum": 0, "maximum": 1000},
             {"type": "number"}, {"type": "boolean"}, {"enum": ["a", "b", "c"]}]
    fields = {f"field_{salt}_{i}": kinds[i % len(kinds)] for i in range(20)}
    return {"type": "object", "properties": fields, "required": list(fields)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="dummy:llama-3-8b")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", default="128:512")
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--kv-cache-tokens", type=int, default=None)
    p.add_argument("--sync", action="store_true", help="async scheduling off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer-dir", type=Path, default=None,
                   help="a dummy model's tokenizer, where the default model's package is "
                        "not installed (a GPU machine)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def use_tokenizer_for_dummies(tokenizer_dir: Path) -> None:
    """Dummy shapes take the default model's tokenizer from its installed package; this
    points them at a copied tokenizer directory instead."""
    from server.engine.loading import weights

    weights._tokenizer_for_dummy = lambda arch, cache_dir: tokenizer_dir


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_run(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> dict:
    llm.engine.scheduler.block_manager.reset_prefix_cache()
    times = llm.engine.runner.grammar_times
    times.reset()
    device = llm.engine.info.device
    sync(device)
    with StepTimer(llm.engine.runner) as steps:
        start = time.perf_counter()
        outs = llm.generate(prompts, params)
        sync(device)
        elapsed = time.perf_counter() - start
    num_out = sum(len(o.token_ids) for o in outs)
    valid = sum(_valid_json(o.text) for o in outs if o.finish_reason == "stop")
    return {"seconds": elapsed, "output_tokens": num_out,
            "output_tokens_per_s": num_out / elapsed,
            "mean_output_len": num_out / len(outs),
            "finished_stop": sum(o.finish_reason == "stop" for o in outs),
            "valid_json_of_stopped": valid,
            "constrained_steps": times.num_steps,
            "mean_masked_rows": times.num_rows / max(times.num_steps, 1),
            "host_wait_ms_per_step": 1e3 * times.wait_s / max(times.num_steps, 1),
            "host_fill_ms_per_step": 1e3 * times.fill_s / max(times.num_steps, 1),
            "host_accept_ms_per_step": 1e3 * times.accept_s / max(times.num_steps, 1),
            "steps": steps.summary(elapsed)}


def _valid_json(text: str | None) -> bool:
    try:
        json.loads(text or "")
        return True
    except json.JSONDecodeError:
        return False


def compile_latency(llm: LLM, prompt: list[int]) -> dict:
    """A new 20-field schema: compile alone, and as the first request's time to token 1."""
    compiler = llm.engine.prepare_grammars()
    compiler.submit("probe", GrammarSpec("json_schema", json.dumps(twenty_field_schema(1))))
    start = time.perf_counter()
    while not compiler.collect().results:
        compiler.wait_for_any(0.001)
    compile_s = time.perf_counter() - start
    first_token = {}
    for name, grammar in (("free", None), ("constrained", GrammarSpec(
            "json_schema", json.dumps(twenty_field_schema(2))))):
        start = time.perf_counter()
        llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1, grammar=grammar))
        first_token[name] = time.perf_counter() - start
    return {"compile_20_fields_s": compile_s,
            "first_request_ttft_free_s": first_token["free"],
            "first_request_ttft_constrained_s": first_token["constrained"]}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.tokenizer_dir is not None:
        use_tokenizer_for_dummies(args.tokenizer_dir.resolve())
    extra = {} if args.kv_cache_tokens is None else {"kv_cache_tokens": args.kv_cache_tokens}
    llm = LLM(args.model, device=args.device, max_num_seqs=args.max_num_seqs,
              seed=args.seed, async_scheduling=not args.sync, **extra)
    rng = random.Random(args.seed)
    lo, _, hi = args.input_len.partition(":")
    vocab = 49152  # the default model's tokenizer's ids, valid for every dummy shape here
    prompts = [[rng.randrange(100, vocab) for _ in range(rng.randint(int(lo), int(hi or lo)))]
               for _ in range(args.num_prompts)]
    llm.engine.prepare_grammars().wait_for_any(0)
    grammar = GrammarSpec("json_schema", json.dumps(FORM_SCHEMA))
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=8, grammar=grammar))
    info = llm.engine.info
    result = {"model": args.model, "device": info.device,
              "machine": torch.cuda.get_device_name() if info.device.startswith("cuda")
              else "CPU", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join(sys.argv), "async_scheduling": llm.engine.async_scheduling,
              "num_prompts": len(prompts), "output_len": args.output_len,
              "latency": compile_latency(llm, prompts[0])}
    free = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    constrained = SamplingParams(temperature=0, max_tokens=args.output_len, grammar=grammar)
    result["free"] = timed_run(llm, prompts, free)
    result["constrained"] = timed_run(llm, prompts, constrained)
    result["free_again"] = timed_run(llm, prompts, free)
    result["ratio"] = (result["constrained"]["output_tokens_per_s"]
                       / result["free"]["output_tokens_per_s"])
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
