"""Batch-1 decode with an engine switch off and on, side by side: each model's engine built
with the environment variable at 0, then at 1, `--rounds` times over, so that both settings
see the same GPU within minutes of each other. A figure is bench/offline.py's batch-1
measure (one request of 32 prompt tokens decoding --output-len tokens, tokens/s from its
first token on) against the roofline of the copy bandwidth over the weights' bytes.

    python bench/batch1_switch.py --switch INFLIGHTD_PROGRAMMATIC_LAUNCH \\
        [--models dummy:gpt2-xl,dummy:llama-3-8b@int4_wo] [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_probes import copy_bandwidth  # noqa: E402
from bench.offline import batch1_against_roofline, free_gpu_memory, weight_bytes_of  # noqa: E402
from server.engine.llm import LLM  # noqa: E402

MODELS = ("dummy:gpt2-xl", "dummy:starcoder-1b", "dummy:llama-3-8b")


def decode_row(spec: str, *, switch: str, setting: str, output_len: int,
               bandwidth_gbps: float) -> dict:
    """One engine of MODEL[@QUANTIZATION] built with switch=setting, measured at batch 1."""
    model, _, quantization = spec.partition("@")
    previous = os.environ.get(switch)
    os.environ[switch] = setting  # some switches are read as the engine is built, some per step
    try:
        llm = LLM(model, device="cuda", max_num_seqs=8, quantization=quantization or None)
        llm.engine.runner.capture_graphs()
        measured = batch1_against_roofline(llm, output_len, weight_bytes=weight_bytes_of(llm),
                                           copy_bandwidth_GBps=bandwidth_gbps)
        del llm
        free_gpu_memory()
    finally:  # the caller's environment as it was
        if previous is None:
            os.environ.pop(switch)
        else:
            os.environ[switch] = previous
    return {"model": spec, switch: setting, "tokens_per_s": measured["output_tokens_per_s"],
            "of_roofline": measured["fraction_of_roofline"],
            "of_streamed_roofline": measured["fraction_of_streamed_roofline"],
            "copy_GBps": bandwidth_gbps}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--switch", required=True, help="an on/off environment variable")
    p.add_argument("--models", default=",".join(MODELS), help="MODEL[@QUANTIZATION],...")
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    bandwidth = copy_bandwidth("cuda") / 1e9
    rows = []
    for spec in filter(None, args.models.split(",")):
        for _ in range(args.rounds):
            for setting in ("0", "1"):
                rows.append(decode_row(spec, switch=args.switch, setting=setting,
                                       output_len=args.output_len, bandwidth_gbps=bandwidth))
                print(json.dumps(rows[-1]), flush=True)
    result = {"device": torch.cuda.get_device_name(0), "switch": args.switch, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
