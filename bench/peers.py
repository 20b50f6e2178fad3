"""The transformers peers of bench/offline.py, on the same requests and model: `generate`
one request at a time (CPU), static batched `generate` with left padding, and
`generate_batch`, transformers' continuous batching (GPU). Each returns one result row."""

from __future__ import annotations

import time

import torch


def sync(device: str) -> None:
    """Waits for the GPU's queued work, so a timing ends when the device does."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def hf_model(source, dtype: torch.dtype, device: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    if source.weights_dir is not None:
        model = AutoModelForCausalLM.from_pretrained(source.weights_dir, dtype=dtype)
    else:  # the same random shape; values differ, which does not change the speed
        config = AutoConfig.for_model(**source.hf_config)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.to(device).eval()


def run_hf_sequential(model, prompts, output_len: int, device: str) -> dict:
    start = time.perf_counter()
    num_out = 0
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            out = model.generate(ids, max_new_tokens=output_len, min_new_tokens=output_len,
                                 do_sample=False, pad_token_id=0)
            num_out += out.shape[1] - len(prompt)
    sync(device)
    elapsed = time.perf_counter() - start
    return {"name": "transformers generate, one at a time", "requests": len(prompts),
            "seconds": elapsed, "output_tokens": num_out, "output_tokens_per_s": num_out / elapsed}


def run_hf_static(model, prompts, output_len: int, device: str, batch_size: int) -> dict:
    start = time.perf_counter()
    num_out = 0
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            batch = prompts[i:i + batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[0] * (width - len(p)) + p for p in batch], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch],
                                device=device)
            out = model.generate(ids, attention_mask=mask, max_new_tokens=output_len,
                                 min_new_tokens=output_len, do_sample=False, pad_token_id=0)
            num_out += (out.shape[1] - width) * len(batch)
    sync(device)
    elapsed = time.perf_counter() - start
    return {"name": f"transformers generate, static batch {batch_size}",
            "requests": len(prompts), "seconds": elapsed, "output_tokens": num_out,
            "output_tokens_per_s": num_out / elapsed}


def run_hf_continuous(model, prompts, output_len: int) -> dict:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=output_len, min_new_tokens=output_len,
                              do_sample=False, eos_token_id=None, pad_token_id=0)
    torch.cuda.synchronize()
    start = time.perf_counter()
    results = model.generate_batch(inputs=prompts, generation_config=config)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    num_out = sum(len(r.generated_tokens) for r in results.values())
    return {"name": "transformers generate_batch (continuous batching)",
            "requests": len(prompts), "seconds": elapsed, "output_tokens": num_out,
            "output_tokens_per_s": num_out / elapsed}
