"""Accuracy of the quantization schemes: perplexity on held-out text, and greedy agreement
with the unquantized model, each scheme on the same model in one run (issue 21).

    python bench/accuracy.py [--model M] [--schemes bf16,int8_wo,...] [--json out.json]

Two corpora, neither of them seen by calibration:
  prose     bench/lm_eval_tasks/prose.jsonl, scored as lm-eval's loglikelihood_rolling
            scores it (each text after the BOS token, else EOS): word_perplexity here
            should equal lm-eval's `inflightd_prose` through the daemon
  heldout   the last 100 prompts of the packaged ShareGPT sample (server/bench/data;
            `inflightd quantize` calibrates on the first 400): token perplexity
Both come from the engine's prompt logprobs (SamplingParams(max_tokens=0,
prompt_logprobs=0)), the path /v1/completions' echo + logprobs serves.

Greedy agreement: the first --num-greedy held-out prompts, --greedy-tokens greedy tokens each;
"same prefix" is the mean share of each output that matches the reference's before the first
different token; "exact" the share of outputs equal throughout. The reference is the first
scheme (bf16 by default).

How each scheme loads:
  bf16                   the model in --dtype
  fp8, int8_wo, int4_wo  rounded as they load (--quantization)
  awq, gptq, w8a8_sq     `inflightd quantize --method ...` into --work-dir (once; reused),
                         then that directory as any checkpoint
  awq-g32, gptq-g32      the same with --group-size 32 (any -gN after awq or gptq)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.offline import weight_bytes_of  # noqa: E402
from server.config import DEFAULT_MODEL  # noqa: E402
from server.engine.llm import LLM  # noqa: E402
from server.scheduler.request import SamplingParams  # noqa: E402

HERE = Path(__file__).resolve().parent
PROSE = HERE / "lm_eval_tasks" / "prose.jsonl"
SHAREGPT = HERE.parent / "server" / "bench" / "data" / "sharegpt_500.json"
HELDOUT_FROM = 400  # prompts [400, 500) of the sample; quantize calibrates on [0, 400)
ON_LOAD = ("fp8", "int8_wo", "int4_wo", "w8a8")
QUANTIZED_CHECKPOINTS = ("awq", "gptq", "w8a8_sq")
SCHEMES = ("bf16", *ON_LOAD, *QUANTIZED_CHECKPOINTS)
GROUPED = ("awq", "gptq")  # these take a group size: awq-g32


def prose_texts() -> list[str]:
    return [json.loads(line)["text"] for line in PROSE.read_text().splitlines() if line.strip()]


def heldout_texts() -> list[str]:
    sample = json.loads(SHAREGPT.read_text())[HELDOUT_FROM:]
    return [entry["conversations"][0]["value"] for entry in sample]


def prefix_token_id(llm: LLM) -> int:
    """lm-eval's rolling windows start after the BOS token, else EOS."""
    tokenizer = llm.tokenizer
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
        else tokenizer.eos_token_id


def total_logprob(llm: LLM, texts: list[str], *, max_len: int) -> tuple[float, int]:
    """The summed logprob of every text's tokens after the prefix token, and their count
    (texts longer than max_len tokens are cut there)."""
    prefix = prefix_token_id(llm)
    prompts = [[prefix] + llm.tokenizer.encode(t, add_special_tokens=False)[:max_len - 1]
               for t in texts]
    outs = llm.generate(prompts, SamplingParams(max_tokens=0, prompt_logprobs=0),
                        use_tqdm=False)
    entries = [e for out in outs for e in out.prompt_logprobs[1:]]
    return sum(e.logprob for e in entries), len(entries)


def perplexities(llm: LLM, *, max_len: int) -> dict[str, float]:
    prose = prose_texts()
    prose_total, prose_tokens = total_logprob(llm, prose, max_len=max_len)
    words = sum(len(re.split(r"\s+", t)) for t in prose)
    heldout_total, heldout_tokens = total_logprob(llm, heldout_texts(), max_len=max_len)
    return {"prose_word_perplexity": math.exp(-prose_total / words),
            "prose_token_perplexity": math.exp(-prose_total / prose_tokens),
            "heldout_token_perplexity": math.exp(-heldout_total / heldout_tokens),
            "heldout_tokens": heldout_tokens}


def greedy_outputs(llm: LLM, *, num_prompts: int, num_tokens: int) -> list[tuple[int, ...]]:
    conversations = [[{"role": "user", "content": t}] for t in heldout_texts()[:num_prompts]]
    params = SamplingParams(temperature=0, max_tokens=num_tokens, ignore_eos=True)
    return [c.token_ids for c in llm.chat(conversations, params, use_tqdm=False)]


def agreement(outputs: list[tuple[int, ...]], reference: list[tuple[int, ...]]) -> dict:
    shares = []
    for out, ref in zip(outputs, reference):
        same = next((i for i, (a, b) in enumerate(zip(out, ref)) if a != b), len(ref))
        shares.append(same / len(ref))
    return {"greedy_same_prefix": sum(shares) / len(shares),
            "greedy_exact": sum(s == 1.0 for s in shares) / len(shares)}


def split_scheme(scheme: str) -> tuple[str, int | None]:
    """("awq", 32) for awq-g32; (scheme, None) without a group size; ValueError if unknown."""
    method, _, group = scheme.partition("-g")
    if group and method in GROUPED and group.isdigit():
        return method, int(group)
    if scheme in SCHEMES:
        return scheme, None
    raise ValueError(scheme)


def scheme_model(scheme: str, args: argparse.Namespace) -> tuple[str, str | None]:
    """(the model to load, its --quantization) for one scheme."""
    if scheme == "bf16":
        return args.model, None
    if scheme in ON_LOAD:
        return args.model, scheme
    method, group = split_scheme(scheme)
    output = args.work_dir / scheme
    if not (output / "config.json").is_file():
        command = [sys.executable, "-m", "server.cli", "quantize", args.model,
                   "--method", method, "--output", str(output), "--device", args.device,
                   *(("--group-size", str(group)) if group else ())]
        print("$", " ".join(command), flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True)
        print(f"  quantized in {time.perf_counter() - started:.0f} s", flush=True)
    return str(output), None


def measure(scheme: str, args: argparse.Namespace) -> tuple[dict, list]:
    model, quantization = scheme_model(scheme, args)
    llm = LLM(model, dtype=args.dtype, device=args.device, quantization=quantization,
              max_num_batched_tokens=4096, enable_prefix_caching=False)
    try:
        row = {"scheme": scheme, "weight_bytes": weight_bytes_of(llm),
               **perplexities(llm, max_len=args.max_len)}
        greedy = greedy_outputs(llm, num_prompts=args.num_greedy,
                                num_tokens=args.greedy_tokens)
    finally:
        llm.close()
        del llm
        gc.collect()
    return row, greedy


def print_table(rows: list[dict]) -> None:
    base = rows[0]
    print(f"\n{'scheme':<9} {'weights MB':>10} {'prose wppl':>10} {'heldout ppl':>11} "
          f"{'vs ' + base['scheme']:>8} {'same prefix':>11} {'exact':>6}")
    for r in rows:
        ratio = r["heldout_token_perplexity"] / base["heldout_token_perplexity"] - 1
        print(f"{r['scheme']:<9} {r['weight_bytes'] / 1e6:>10.1f} "
              f"{r['prose_word_perplexity']:>10.3f} {r['heldout_token_perplexity']:>11.3f} "
              f"{ratio:>+8.2%} {r['greedy_same_prefix']:>11.1%} {r['greedy_exact']:>6.0%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--schemes", default=",".join(SCHEMES),
                   help=f"comma-separated, the first is the reference ({', '.join(SCHEMES)})")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-len", type=int, default=1024, help="tokens per text at most")
    p.add_argument("--num-greedy", type=int, default=16)
    p.add_argument("--greedy-tokens", type=int, default=32)
    p.add_argument("--work-dir", type=Path, default=Path("build/accuracy"),
                   help="where the quantized checkpoints are written (and reused)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    schemes = args.schemes.split(",")
    unknown = sorted(s for s in schemes if not _known(s))
    if unknown:
        p.error(f"unknown scheme(s) {', '.join(unknown)}; choose from {', '.join(SCHEMES)} "
                "(awq and gptq with -gN: awq-g32)")
    rows, reference = [], None
    for scheme in schemes:
        started = time.perf_counter()
        row, greedy = measure(scheme, args)
        reference = reference or greedy
        row.update(agreement(greedy, reference), seconds=time.perf_counter() - started)
        rows.append(row)
        print(f"{scheme}: {json.dumps({k: v for k, v in row.items() if k != 'scheme'})}",
              flush=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "dtype": args.dtype,
                                         "device": args.device, "rows": rows}, indent=2))


def _known(scheme: str) -> bool:
    try:
        split_scheme(scheme)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    main()
