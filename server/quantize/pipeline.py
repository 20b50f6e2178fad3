"""One quantize run: resolve the model, calibrate where the method needs it, round every
decoder linear weight, and write the checkpoint in the method's layout.

    int8_wo, int4_wo   round to nearest, symmetric          -> GPTQ layout (vLLM reads it)
    gptq               GPTQ (--awq-scales: AWQ's first)     -> GPTQ layout
    awq                AWQ's scales folded, then rounded    -> AutoAWQ's GEMM layout
    w8a8_sq            SmoothQuant's smoothing folded in    -> compressed-tensors W8A8 int8
    fp8                per-channel e4m3                     -> compressed-tensors FP8

Embeddings, norms and lm_head keep the source's dtype (AWQ, GPTQ with --awq-scales and
SmoothQuant change the norms).
"""

from __future__ import annotations

import logging
import re
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from server.engine.loading.weights import ModelSource, resolve_model, safetensors_files
from server.engine.models.int_grid import IntCodes, choose_group_size, round_to_nearest
from server.quantize import layouts
from server.quantize.calibration import calibration_texts, token_sequences
from server.quantize.layerwise import check_architecture, load_model
from server.quantize.options import QuantizeError, QuantizeOptions
from server.quantize.writer import check_output, write_checkpoint

logger = logging.getLogger("inflightd.quantize")
LINEAR = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
                    r"\.weight")


@dataclass(frozen=True)
class Plan:
    """What each linear weight becomes: its grid and its layout."""

    options: QuantizeOptions
    group_size: int | None  # None: one group per output channel

    def codes(self, weight: torch.Tensor) -> IntCodes:
        group = self.group_size or weight.shape[1]
        return round_to_nearest(weight, bits=self.options.weight_bits, group_size=group,
                                symmetric=self.options.method != "awq")

    def tensors(self, prefix: str, weight: torch.Tensor,
                codes: IntCodes | None) -> dict[str, torch.Tensor]:
        method = self.options.method
        if method == "fp8":
            return layouts.fp8_tensors(prefix, weight)
        codes = codes if codes is not None else self.codes(weight)
        if method == "awq":
            return layouts.awq_tensors(prefix, codes)
        if method == "w8a8_sq":
            return layouts.w8a8_tensors(prefix, codes)
        return layouts.gptq_tensors(prefix, codes)

    def config(self) -> dict:
        method = self.options.method
        if method in ("fp8", "w8a8_sq"):
            return layouts.compressed_tensors_config("float" if method == "fp8" else "int")
        if method == "awq":
            return layouts.awq_config(group_size=self.group_size)
        return layouts.gptq_config(bits=self.options.weight_bits, group_size=self.group_size,
                                   per_channel=self.group_size is None,
                                   method="gptq" if method == "gptq" else "rtn",
                                   sym=method != "gptq" or gptq_symmetric(self.options))


def quantize_model(options: QuantizeOptions) -> Path:
    """Writes options.output; returns its path."""
    check_output(options.output, force=options.force)
    started = time.perf_counter()
    source = _resolve(options.model)
    with ExitStack() as stack:
        stored = {}  # stored name -> (safetensors handle, dtype)
        for path in safetensors_files(source.weights_dir):
            handle = stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
            stored.update({name: handle for name in handle.keys()})
        plan = Plan(options, _group_size(options, {
            name: handle.get_slice(name).get_shape()[1] for name, handle in stored.items()
            if LINEAR.fullmatch(name)}))
        tensors, codes = _calibrated(options, plan, source) if options.calibrated else ({}, {})
        out: dict[str, torch.Tensor] = {}
        missing = sorted(set(stored) - set(tensors)) if options.calibrated else []
        if missing:
            raise QuantizeError(f"transformers' model of {options.model} has no {missing[:3]}: "
                                "its calibrated weights cannot be matched to the checkpoint")
        for name, handle in tqdm(stored.items(), desc="writing", unit="tensor"):
            original = handle.get_tensor(name)
            tensor = tensors.get(name, original)
            if LINEAR.fullmatch(name):
                prefix = name.removesuffix(".weight")
                out.update(plan.tensors(prefix, tensor.float(), codes.get(prefix)))
            else:
                out[name] = tensor.to(original.dtype)
    path = write_checkpoint(options.output, source, out, plan.config(), force=options.force)
    logger.info("quantized %s with %s in %.1f s: %s", options.model, options.method,
                time.perf_counter() - started, path)
    return path


def gptq_symmetric(options: QuantizeOptions) -> bool:
    """4-bit GPTQ uses zero points (SmolLM2-135M, one experiment: held-out perplexity
    34.7 with them, 40.1 without); 8 bits stay symmetric, the form int8 weights are held in
    (an asymmetric 8-bit grid's codes - zero do not fit int8, so engines dequantize them)."""
    return options.weight_bits == 8


def _resolve(model: str) -> ModelSource:
    source = resolve_model(model)
    if source.weights_dir is None or source.engine_dir is not None:
        raise QuantizeError(f"{model} has no checkpoint to quantize: give a Hugging Face "
                            "directory (or the default model's name)")
    check_architecture(source.hf_config)
    if source.hf_config.get("quantization_config"):
        method = source.hf_config["quantization_config"].get("quant_method")
        raise QuantizeError(f"{model} is quantized already ({method}); quantize the original "
                            "checkpoint")
    return source


def _group_size(options: QuantizeOptions, input_sizes: dict[str, int]) -> int | None:
    """None (per channel) for 8-bit round to nearest, W8A8, FP8 and --group-size -1."""
    if not input_sizes:
        raise QuantizeError(f"{options.model} has no decoder linear weights named as Llama's "
                            "(model.layers.N.self_attn.q_proj.weight, ...)")
    if options.method in ("int8_wo", "w8a8_sq", "fp8") or options.group_size == -1:
        return None
    try:
        return choose_group_size(input_sizes, options.group_size)
    except ValueError as exc:
        raise QuantizeError(f"--group-size: {exc}") from exc


def _device(options: QuantizeOptions) -> torch.device:
    if options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise QuantizeError("--device cuda, but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def _calibrated(options: QuantizeOptions, plan: Plan, source: ModelSource
                ) -> tuple[dict[str, torch.Tensor], dict[str, IntCodes]]:
    """Runs the method's calibration: (the model's tensors after it, by name, on the CPU;
    GPTQ's codes by layer prefix)."""
    from server.quantize.awq import calibrate_awq
    from server.quantize.gptq import calibrate_gptq
    from server.quantize.smoothquant import calibrate_smoothquant

    texts = calibration_texts(options.calibration, options.num_calibration_samples)
    blocks = token_sequences(texts, source.tokenizer_dir)
    model = load_model(source.weights_dir, _device(options))
    logger.info("calibrating on %d texts (%d tokens)", len(texts),
                sum(block.shape[1] for block in blocks))
    codes = {}
    if options.method == "gptq":
        codes = calibrate_gptq(model, blocks, bits=options.weight_bits,
                               group_size=plan.group_size,
                               symmetric=gptq_symmetric(options),
                               awq_scales=options.awq_scales)
    elif options.method == "awq":
        calibrate_awq(model, blocks, group_size=plan.group_size)
    else:
        calibrate_smoothquant(model, blocks)
    tensors = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    codes = {prefix: IntCodes(codes=c.codes.cpu(), scales=c.scales.cpu(), zeros=c.zeros.cpu(),
                              bits=c.bits, group_size=c.group_size)
             for prefix, c in codes.items()}
    return tensors, codes
