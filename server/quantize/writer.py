"""The output directory: config.json with its quantization_config, model.safetensors and the
source's tokenizer files, renamed into place only when complete (loading/staging.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from server.engine.loading.build import copy_tokenizer_files
from server.engine.loading.staging import staged_directory
from server.engine.loading.weights import ModelSource
from server.quantize.options import QuantizeError


def check_output(output: Path, *, force: bool) -> Path:
    output = Path(output).expanduser().resolve()
    if output.exists() and not force:
        raise QuantizeError(f"{output} already exists; pass --force to replace it")
    return output


def write_checkpoint(output: Path, source: ModelSource, tensors: dict[str, torch.Tensor],
                     quantization_config: dict, *, force: bool) -> Path:
    """The quantized checkpoint at `output`; `tensors` by their stored names."""
    output = check_output(output, force=force)
    with staged_directory(output) as staging:
        config = {**source.hf_config, "quantization_config": quantization_config}
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if quantization_config.get("quant_method") == "gptq":
            # AutoGPTQ's own loader reads the settings from this file
            (staging / "quantize_config.json").write_text(
                json.dumps(quantization_config, indent=2) + "\n")
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()},
                  str(staging / "model.safetensors"), metadata={"format": "pt"})
        copy_tokenizer_files(source, staging)
    return output
