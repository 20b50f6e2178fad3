"""`inflightd quantize MODEL --method M --output DIR`: the command line of server/quantize."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from server.quantize.options import METHODS, SHAREGPT_CALIBRATION_PROMPTS, QuantizeError, \
    QuantizeOptions


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `inflightd quantize` to the CLI."""
    parser = subparsers.add_parser(
        "quantize", help="write a quantized checkpoint (GPTQ, AWQ, compressed-tensors)",
        description="Quantize a model's decoder linear layers and write a checkpoint that "
                    "`inflightd serve DIR` (and vLLM) read with no options: int8_wo and "
                    "int4_wo (round to nearest) and gptq in the GPTQ layout, awq in "
                    "AutoAWQ's GEMM layout, w8a8_sq (SmoothQuant) and fp8 as "
                    "compressed-tensors.")
    parser.add_argument("model", metavar="MODEL",
                        help="a Hugging Face directory, or the default model's name")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--output", "-o", type=Path, required=True,
                        help="the checkpoint directory to write")
    parser.add_argument("--group-size", type=int, default=None,
                        help="input columns per scale for int4_wo, awq and gptq; -1: one "
                             "scale per output channel (default: 128, or 64 or 32 where 128 "
                             "does not divide every layer's input size)")
    parser.add_argument("--bits", type=int, default=None,
                        help="gptq: 4 or 8 (default 4); the other methods have one")
    parser.add_argument("--calibration", type=Path, default=None, metavar="FILE",
                        help="JSONL of texts ({\"text\": ...} a line) for awq, gptq and "
                             "w8a8_sq (default: the packaged ShareGPT sample's first "
                             f"{SHAREGPT_CALIBRATION_PROMPTS} prompts; its last 100 are held "
                             "out for the accuracy benchmark)")
    parser.add_argument("--num-calibration-samples", type=int,
                        default=SHAREGPT_CALIBRATION_PROMPTS, metavar="N",
                        help="how many texts from the start of the calibration set "
                             f"(default {SHAREGPT_CALIBRATION_PROMPTS})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where calibration runs (auto: cuda when there is a GPU)")
    parser.add_argument("--awq-scales", action="store_true",
                        help="gptq, 4 bits: fold AWQ's activation-aware scales into each "
                             "layer before GPTQ rounds it (the layout stays plain GPTQ; on "
                             "the default model it helped groups of 64 and hurt groups of 32)")
    parser.add_argument("--force", action="store_true", help="replace an existing DIR")
    parser.set_defaults(func=run_quantize)


def run_quantize(args: argparse.Namespace) -> int:
    from server.quantize.pipeline import quantize_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        options = QuantizeOptions(
            model=args.model, method=args.method, output=args.output,
            group_size=args.group_size, bits=args.bits, calibration=args.calibration,
            num_calibration_samples=args.num_calibration_samples, device=args.device,
            force=args.force, awq_scales=args.awq_scales)
        path = quantize_model(options)
    except (QuantizeError, ValueError) as exc:
        print(f"inflightd quantize: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
