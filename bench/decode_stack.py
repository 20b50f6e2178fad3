"""The batch-1 decode stack's kernel alone (csrc/decode_stack.cu): one launch through every
layer of a dummy model, timed, against the copy bandwidth over the layers' weight bytes.
What the figure means: the share of the roofline the layers reach when nothing but the
stack runs (its final LayerNorm and the token's embedding included since session 29; no
logits or sampling, no host); batch-1 tok/s from bench/batch1_switch.py is the whole step's.

    python bench/decode_stack.py [--models dummy:gpt2-xl,dummy:starcoder-1b] [--contexts 256,2048]
                                 [--copies bulk,cp_async] [--pacing 0,2] [--splits 1,5]

--copies times each way the producer can copy weights (DecodeStack.copies); --pacing
each pace of the producer (DecodeStack.pacing: 0 a stage at a time, k at most k half-stages
on their way); --splits
each number of splits of a head's keys (DecodeStack.num_splits, up to the stack's own).
--timing also runs one step with the kernel stamping each phase (%globaltimer, every CTA)
and prints where a layer's time goes (timing_report below says what each column means).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_probes import copy_bandwidth, median_event_ms  # noqa: E402
from bench.offline import free_gpu_memory  # noqa: E402
from server.engine.attention.metadata import AttentionMetadata  # noqa: E402
from server.engine.fused.decode_stack import COPIES  # noqa: E402
from server.engine.llm import LLM  # noqa: E402


def one_sequence(context: int, *, block_size: int, device: torch.device) -> AttentionMetadata:
    """A decode step of one sequence of `context` tokens in blocks 0, 1, 2, ..."""
    num_blocks = -(-context // block_size)
    ints = dict(dtype=torch.int32, device=device)
    return AttentionMetadata(
        num_tokens=1, num_seqs=1, query_start_loc=torch.tensor([0, 1], **ints),
        seq_lens=torch.tensor([context], **ints), context_lens=torch.tensor([context - 1], **ints),
        block_tables=torch.arange(num_blocks, **ints)[None],
        slot_mapping=torch.tensor([context - 1], dtype=torch.int64, device=device),
        max_query_len=1, max_seq_len=context, query_lens_host=(1,), seq_lens_host=(context,))


def layer_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for layer in model.layers
               for t in vars(layer).values() if isinstance(t, torch.Tensor))


def measure(spec: str, contexts: list[int], bandwidth: float, copies: list[str],
            splits: list[int] | None, *, paces: tuple[int, ...] | None = None,
            timing: bool = False) -> list[dict]:
    llm = LLM(spec, device="cuda", max_num_seqs=8)
    model = llm.engine.runner.model
    stack = model.decode_stack
    if stack is None:
        raise SystemExit(f"{spec}: the decode stack does not apply")
    weight_bytes = layer_bytes(model)
    rows = []
    default_splits, default_pacing = stack.num_splits, stack.pacing
    for context, copy, pacing, split in [(c, k, pace, n) for c in contexts for k in copies
                                         for pace in (paces or (default_pacing,))
                                         for n in (splits or [default_splits])]:
        if not 1 <= split <= default_splits:  # its partials buffer holds no more
            raise SystemExit(f"--splits {split}: {spec} takes 1 to {default_splits}")
        stack.copies = copy
        stack.pacing = pacing
        stack.num_splits = split
        metadata = one_sequence(context, block_size=stack.block_size, device=model.device)
        token = one_token(stack, context)
        ms = median_event_ms(lambda: stack.run(*token, metadata), repeats=50)
        roofline_ms = weight_bytes / bandwidth * 1e3
        rows.append({"model": spec, "context": context, "copies": copy, "pacing": pacing,
                     "splits": split, "stack_us": ms * 1e3,
                     "roofline_us": roofline_ms * 1e3, "of_roofline": roofline_ms / ms})
        print(f"{spec} context {context} ({copy}, pacing {pacing}, {split} splits): "
              f"{ms * 1e3:.1f} us a step's layers, roofline {roofline_ms * 1e3:.1f} us "
              f"({weight_bytes / 1e9:.2f} GB at {bandwidth / 1e9:.0f} GB/s): "
              f"{100 * roofline_ms / ms:.1f} % of roofline",
              flush=True)
    if timing:
        stack.copies = "cp_async"  # the default producer
        stack.pacing = default_pacing
        stack.num_splits = default_splits
        metadata = one_sequence(contexts[0], block_size=stack.block_size, device=model.device)
        timing_report(stack, one_token(stack, contexts[0]), metadata)
    del llm
    free_gpu_memory()
    return rows


PHASE_NAMES = ("qkv", "attention", "o", "fc", "proj")


def one_token(stack, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and positions of the step's one token: the context's last position, or the
    model's last one where the context is longer than its position table."""
    device = stack.h.device
    position = min(context, stack.position_embeddings.shape[0]) - 1
    return (torch.tensor([11], dtype=torch.int64, device=device),
            torch.tensor([position], dtype=torch.int64, device=device))


def timing_report(stack, token: tuple[torch.Tensor, torch.Tensor],
                  metadata: AttentionMetadata) -> None:
    """One step with stamps; per phase, means over CTAs and layers 1.. (us):
    wait: the CTA at the phase's counter until every CTA is done with the phase before;
    release: the last CTA's count to the median CTA seeing it (the barrier's own latency);
    skew: the median CTA's count to the last one's (stragglers);
    input: the norm, merge or act load after the release; work: the rows and the count;
    stage waits: the consumers' cycles in those rows waiting for the producer's stages."""
    words = stack.times_words()
    times = torch.zeros(words, dtype=torch.int64, device=token[0].device)
    stack.times_address = times.data_ptr()
    for _ in range(3):
        stack.run(*token, metadata)
    torch.cuda.synchronize()
    stack.times_address = 0
    ctas, layers = stack.num_ctas, stack.arch.num_layers
    words = times.view(ctas * (layers * 5 + 1), 6).cpu()
    phases = words[: ctas * layers * 5].view(ctas, layers, 5, 6)
    stamps = phases[..., :4].double() / 1e3
    ring = phases[..., 4].double().reshape(ctas, -1)  # consumers' stage waits so far, cycles
    ring_per_phase = torch.diff(ring, dim=1, prepend=ring[:, :1] * 0).view(ctas, layers, 5)
    waits = words[ctas * layers * 5:].view(ctas, 6).double()
    done = stamps[..., 3]  # [ctas, layers, 5]
    seen = stamps[..., 1]
    # the counter each phase waits on: the phase before, the previous layer's last for qkv
    before = torch.cat([done.new_full((ctas, 1), float("nan")), done.reshape(ctas, -1)[:, :-1]],
                       dim=1).view(ctas, layers, 5)
    last_before = before.max(dim=0).values  # [layers, 5]
    median_before = before.median(dim=0).values
    print(f"  {'phase':<10}{'wait':>8}{'release':>9}{'skew':>8}{'input':>8}{'work':>8}"
          f"{'stage waits (kcycles)':>23}")
    for phase, name in enumerate(PHASE_NAMES):
        sl = (slice(None), slice(1, None), phase)
        wait = (stamps[sl + (1,)] - stamps[sl + (0,)]).mean()
        release = (seen[:, 1:, phase].median(dim=0).values - last_before[1:, phase]).mean()
        skew = (last_before[1:, phase] - median_before[1:, phase]).mean()
        ready = (stamps[sl + (2,)] - stamps[sl + (1,)]).mean()
        work = (stamps[sl + (3,)] - stamps[sl + (2,)]).mean()
        stage_waits = ring_per_phase[:, 1:, phase].mean() / 1e3
        print(f"  {name:<10}{wait:8.2f}{release:9.2f}{skew:8.2f}{ready:8.2f}{work:8.2f}"
              f"{stage_waits:23.2f}")
    late = attention_lateness(done[:, 1:, 1], num_heads=stack.arch.num_heads,
                              num_splits=stack.num_splits)
    print("  attention's count, us after the median CTA's: "
          + ", ".join(f"{name} {value:.2f}" for name, value in late.items()))
    layer_end = done[:, :, 4].max(dim=0).values
    per_layer = (layer_end[-1] - layer_end[0]) / (layers - 1)
    print(f"  a layer {per_layer:.2f} us (last CTA to last CTA); waits on the ring, mean cycles a "
          f"CTA over the step: consumers (full) {waits[:, 0].mean():,.0f}, producer (empty) "
          f"{waits[:, 1].mean():,.0f}", flush=True)


def attention_lateness(counted: torch.Tensor, *, num_heads: int,
                       num_splits: int) -> dict[str, float]:
    """Where the attention phase's stragglers are. counted [ctas, layers]: when each CTA
    counted itself done with attention; CTA head * num_splits + split has that task, the
    CTAs past the tasks none. Means, over layers, of the time after the median CTA: each
    head's last split to count in, the other splits, split 0, and the CTAs without a
    task."""
    tasks = num_heads * num_splits
    late = counted - counted.median(dim=0).values
    heads = late[:tasks].view(num_heads, num_splits, -1)
    last = heads.max(dim=1).values
    found = {"last split": last.mean().item(), "split 0": heads[:, 0].mean().item()}
    if num_splits > 1:
        found["other splits"] = ((heads.sum(dim=1) - last) / (num_splits - 1)).mean().item()
    if counted.shape[0] > tasks:
        found["no task"] = late[tasks:].mean().item()
    return found


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="dummy:gpt2-xl,dummy:starcoder-1b")
    p.add_argument("--contexts", default="256,2048")
    p.add_argument("--copies", default="cp_async",
                   help="cp_async, bulk or plain (compute-sanitizer's), comma-separated")
    p.add_argument("--pacing", default=None,
                   help="the producer's paces to time, comma-separated (default: the stack's)")
    p.add_argument("--splits", default=None,
                   help="splits of each head's keys to time, comma-separated (default: the "
                        "stack's, the most the SMs allow up to 8)")
    p.add_argument("--timing", action="store_true", help="where a layer's time goes")
    args = p.parse_args(argv)
    copies = args.copies.split(",")
    if not set(copies) <= set(COPIES):
        p.error(f"--copies takes {', '.join(COPIES)}, got {args.copies!r}")
    bandwidth = copy_bandwidth("cuda")
    contexts = [int(c) for c in args.contexts.split(",")]
    splits = [int(n) for n in args.splits.split(",")] if args.splits else None
    paces = tuple(int(k) for k in args.pacing.split(",")) if args.pacing else None
    if paces and min(paces) < 0:
        p.error(f"--pacing takes 0 or more half-stages, got {args.pacing!r}")
    return [row for spec in args.models.split(",")
            for row in measure(spec, contexts, bandwidth, copies, splits,
                               paces=paces, timing=args.timing)]


if __name__ == "__main__":
    main()
