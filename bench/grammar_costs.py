"""Where a constrained step's extra time goes, piece by piece, for a batch of rows at a
state that allows most of the vocabulary (inside a JSON string): filling the bitmask (one
row at a time, and xgrammar's threaded batch fill), accepting a sampled token per row, and
applying the mask to the logits on the device (ours, in torch, against xgrammar's kernel).

    python bench/grammar_costs.py --tokenizer-dir DIR --vocab-size 128256 --rows 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

# the repository root instead of bench/, whose kernels.py would shadow the `kernels`
# package that transformers imports when it is installed
sys.path[0] = str(Path(__file__).resolve().parents[1])

from server.engine.gpu.kernels import KernelLibrary  # noqa: E402
from server.engine.ops.cuda import CudaOps  # noqa: E402
from server.structured_output.bitmask import apply_token_bitmask  # noqa: E402

SCHEMA = {"type": "object", "properties": {"notes": {"type": "array",
                                                     "items": {"type": "string"}}},
          "required": ["notes"]}


def per_call_ms(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.perf_counter() - start) / repeats


def device_ms(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokenizer-dir", type=Path, required=True)
    p.add_argument("--vocab-size", type=int, default=128256)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    import xgrammar
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    # as the engine builds it: the tokenizer's vocabulary, the logits may be wider
    info = xgrammar.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=min(len(tokenizer), args.vocab_size),
        stop_token_ids=[tokenizer.eos_token_id])
    compiled = xgrammar.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA))
    matchers = [xgrammar.GrammarMatcher(compiled) for _ in range(args.rows)]
    for m in matchers:
        assert m.accept_string('{"notes": ["the quick brown fox')
    bitmask = xgrammar.allocate_token_bitmask(args.rows, info.vocab_size)
    result = {"rows": args.rows, "vocab_size": args.vocab_size, "cpus": os.cpu_count()}

    def fill_each():
        for i, m in enumerate(matchers):
            m.fill_next_token_bitmask(bitmask, i)

    result["fill_one_by_one_ms"] = per_call_ms(fill_each, args.repeats)
    for threads in (4, 8, 16):
        batch = xgrammar.BatchGrammarMatcher(max_threads=threads)
        result[f"fill_batch_{threads}_threads_ms"] = per_call_ms(
            lambda: batch.batch_fill_next_token_bitmask(matchers, bitmask), args.repeats)
    batch = xgrammar.BatchGrammarMatcher()
    result["fill_batch_auto_ms"] = per_call_ms(
        lambda: batch.batch_fill_next_token_bitmask(matchers, bitmask), args.repeats)
    token = tokenizer.encode(" jumps", add_special_tokens=False)[0]

    def accept_each():
        for m in matchers:
            m.accept_token(token)
            m.rollback(1)

    result["accept_one_by_one_ms"] = per_call_ms(accept_each, args.repeats)
    for threads in (1, 16):
        batch = xgrammar.BatchGrammarMatcher(max_threads=threads)

        def accept_batch():
            batch.batch_accept_token(matchers, [token] * len(matchers))
            for m in matchers:
                m.rollback(1)

        result[f"accept_batch_{threads}_threads_ms"] = per_call_ms(accept_batch, args.repeats)

    def rollback_only():
        for m in matchers:
            m.accept_token(token)
        start = time.perf_counter()
        for m in matchers:
            m.rollback(1)
        return time.perf_counter() - start

    result["rollback_share_ms"] = 1e3 * rollback_only()
    if torch.cuda.is_available():
        logits = torch.randn(args.rows, args.vocab_size, device="cuda")
        on_device = bitmask.cuda()
        all_rows = torch.arange(args.rows, device="cuda")
        result["apply_torch_reference_ms"] = device_ms(
            lambda: apply_token_bitmask(logits, on_device, all_rows), args.repeats)
        ops = CudaOps(KernelLibrary(torch.device("cuda")))
        result["apply_ours_ms"] = device_ms(
            lambda: ops.apply_token_bitmask(logits, on_device, all_rows), args.repeats)
        reference = torch.randn(args.rows, args.vocab_size, device="cuda")
        ours = reference.clone()
        apply_token_bitmask(reference, on_device, all_rows)
        ops.apply_token_bitmask(ours, on_device, all_rows)
        result["apply_ours_equals_reference"] = bool(torch.equal(reference, ours))
        for backend in ("triton",):
            try:
                result[f"apply_xgrammar_{backend}_ms"] = device_ms(
                    lambda: xgrammar.apply_token_bitmask_inplace(logits, on_device,
                                                                backend=backend), args.repeats)
            except Exception as exc:  # a backend may not build here; say why
                result[f"apply_xgrammar_{backend}_error"] = f"{type(exc).__name__}: {exc}"[:200]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
