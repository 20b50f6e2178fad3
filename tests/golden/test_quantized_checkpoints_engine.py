"""GPTQ and AWQ checkpoints, built by hand in the layouts GPTQ tools and AutoAWQ write from
a tiny Llama (round to nearest, per group), loaded by `LLM(dir)` with no options: greedy
tokens of the same Llama holding the dequantized weights, as transformers computes them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from server.engine.llm import LLM
from server.engine.loading.quantized_checkpoints import AWQ_ORDER, pack_columns, pack_rows
from server.scheduler.request import SamplingParams
from tests.golden.helpers import make_hf_model, single_torch_thread
from tests.golden.test_sliding_window_engine import hf_greedy

GROUP = 16
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantize(weight: torch.Tensor, *, bits: int, symmetric: bool, g_idx: torch.Tensor):
    """Round to nearest per (group of input rows, output column): q [in, out], zeros and
    fp16 scales [groups, out], and the weight they stand for [out, in]."""
    w = weight.t().float()  # [in, out]
    groups = int(g_idx.max()) + 1
    top = (1 << bits) - 1
    scales, zeros = torch.empty(groups, w.shape[1]), torch.empty(groups, w.shape[1])
    for g in range(groups):
        rows = w[g_idx == g]
        if symmetric:
            scales[g] = rows.abs().amax(0).clamp(min=1e-6) / (top // 2 + 0.5)
            zeros[g] = (top + 1) // 2
        else:
            low, high = rows.amin(0), rows.amax(0)
            scales[g] = (high - low).clamp(min=1e-6) / top
            zeros[g] = torch.round(-low / scales[g]).clamp(0, top)
    scales = scales.half()
    q = torch.clamp(torch.round(w / scales[g_idx].float()) + zeros[g_idx], 0, top).long()
    dequantized = ((q - zeros[g_idx]) * scales[g_idx].float()).t()
    return q, zeros.long(), scales, dequantized


def write_checkpoint(llama, path, *, method: str, bits: int = 4, symmetric: bool = True,
                     desc_act: bool = False, v2: bool = False):
    """The checkpoint in `path`; llama's linear weights become the dequantized ones."""
    state, tensors = llama.state_dict(), {}
    for name, tensor in state.items():
        prefix, part = name.rsplit(".", 1)[0], name.rsplit(".", 2)[-2]
        if part not in LINEAR:
            if name != "lm_head.weight" or not llama.config.tie_word_embeddings:
                tensors[name] = tensor.clone()
            continue
        rows = tensor.shape[1]
        g_idx = torch.arange(rows) // GROUP
        if desc_act:  # GPTQ's act-order: groups follow a permutation of the rows
            g_idx = g_idx[torch.randperm(rows, generator=torch.Generator().manual_seed(rows))]
        q, zeros, scales, dequantized = quantize(tensor, bits=bits, symmetric=symmetric,
                                                 g_idx=g_idx)
        with torch.no_grad():
            tensor.copy_(dequantized)
        if method == "gptq":
            stored_zeros = zeros if v2 else zeros - 1
            tensors.update({f"{prefix}.qweight": pack_rows(q, bits),
                            f"{prefix}.qzeros": pack_columns(stored_zeros & ((1 << bits) - 1),
                                                             bits),
                            f"{prefix}.scales": scales, f"{prefix}.g_idx": g_idx.int()})
        else:
            tensors.update({f"{prefix}.qweight": pack_columns(q, bits, order=AWQ_ORDER),
                            f"{prefix}.qzeros": pack_columns(zeros, bits, order=AWQ_ORDER),
                            f"{prefix}.scales": scales})
    quantization = ({"quant_method": "gptq", "bits": bits, "group_size": GROUP,
                     "desc_act": desc_act, "sym": symmetric,
                     "checkpoint_format": "gptq_v2" if v2 else "gptq"} if method == "gptq" else
                    {"quant_method": "awq", "bits": bits, "group_size": GROUP,
                     "version": "gemm", "zero_point": True})
    config = {**llama.config.to_dict(), "architectures": ["LlamaForCausalLM"],
              "quantization_config": quantization}
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(path / "model.safetensors"))


@pytest.mark.parametrize("variant", [
    dict(method="gptq", bits=4, symmetric=True, desc_act=True),
    dict(method="gptq", bits=8, symmetric=False, v2=True),
    dict(method="awq", bits=4, symmetric=False),
], ids=["gptq-4bit-act-order", "gptq-8bit-asym-v2", "awq-4bit"])
def test_quantized_checkpoint_gives_its_dequantized_twins_greedy_tokens(tmp_path, variant):
    llama = make_hf_model("llama-gqa-tied")
    write_checkpoint(llama, tmp_path / "quantized", **variant)
    prompts = [[5, 17, 33, 2, 9], [100, 7, 8, 44, 45, 46, 3, 1, 60]]
    with single_torch_thread():
        llm = LLM(str(tmp_path / "quantized"), device="cpu", kv_cache_tokens=512)
        got = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=10,
                                                   ignore_eos=True))
        for prompt, completion in zip(prompts, got):
            assert list(completion.token_ids) == hf_greedy(llama, prompt, num_tokens=10)
