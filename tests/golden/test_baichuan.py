"""Baichuan 2 (its own modelling code, which transformers does not ship) against the
transformers model that computes the same thing: a Llama whose q, k and v are Baichuan's
W_pack split in three and whose lm_head rows are Baichuan's divided by their length. The
13B has ALiBi instead of rotary: the Llama then runs with every position 0 (rotation by
nothing) and ALiBi's biases in its attention mask."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from server.engine.llm import LLM
from server.engine.models.alibi import alibi_slopes
from server.scheduler.request import SamplingParams
from tests.golden.helpers import make_hf_model, single_torch_thread


def baichuan_dir(llama, path, *, alibi: bool = False):
    """Llama's weights in Baichuan 2's layout and config (the 13B's with alibi); lm_head
    left unnormalised, as Baichuan's checkpoints store it."""
    weights = {}
    state = llama.state_dict()
    for name, tensor in state.items():
        if ".self_attn.q_proj." in name:
            prefix = name.split(".self_attn.")[0]
            weights[f"{prefix}.self_attn.W_pack.weight"] = torch.cat(
                [state[f"{prefix}.self_attn.{p}_proj.weight"] for p in "qkv"])
        elif ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue
        elif name == "lm_head.weight":
            weights[name] = tensor * torch.linspace(0.5, 2.0, tensor.shape[0])[:, None]
        else:
            weights[name] = tensor.contiguous()
    config = {**llama.config.to_dict(), "architectures": ["BaichuanForCausalLM"],
              "model_type": "baichuan"}
    if alibi:  # the 13B's config: no rotary settings, only model_max_length
        config["model_max_length"] = config.pop("max_position_embeddings")
        config.pop("rope_parameters", None)
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    save_file(weights, str(path / "model.safetensors"))
    return weights["lm_head.weight"]


def test_baichuan_checkpoint_gives_the_equivalent_llamas_greedy_tokens(tmp_path):
    llama = make_hf_model("llama-mha")
    head = baichuan_dir(llama, tmp_path / "baichuan")
    with torch.no_grad():
        llama.lm_head.weight.copy_(F.normalize(head, dim=-1))
    prompts = [[5, 17, 33, 2, 9], [100, 7, 8, 44, 45, 46, 3, 1, 60, 61, 62, 63]]
    with single_torch_thread():
        llm = LLM(str(tmp_path / "baichuan"), device="cpu", kv_cache_tokens=1024)
        ours = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12,
                                                    ignore_eos=True))
        for prompt, got in zip(prompts, ours):
            expected = llama.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                      min_new_tokens=12)[0, len(prompt):].tolist()
            assert list(got.token_ids) == expected


def alibi_llama_greedy(llama, prompt: list[int], *, num_tokens: int) -> list[int]:
    """The Llama as Baichuan 2 13B: positions all 0, so rotary turns nothing, and a mask
    that adds slope_h * (key - query) under the causal -inf."""
    tokens = list(prompt)
    slopes = alibi_slopes(llama.config.num_attention_heads, bias_max=8.0)
    for _ in range(num_tokens):
        position = torch.arange(len(tokens))
        distance = (position[None, :] - position[:, None]).float()
        causal = torch.full((len(tokens),) * 2, float("-inf")).triu(1)
        mask = (slopes[:, None, None] * distance + causal)[None]
        ids = torch.tensor([tokens])
        with torch.no_grad():
            logits = llama(ids, attention_mask=mask, position_ids=torch.zeros_like(ids)).logits
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt):]


def test_baichuan_13b_alibi_checkpoint_gives_the_equivalent_models_greedy_tokens(tmp_path):
    llama = make_hf_model("llama-mha")
    head = baichuan_dir(llama, tmp_path / "baichuan-13b", alibi=True)
    with torch.no_grad():
        llama.lm_head.weight.copy_(F.normalize(head, dim=-1))
    prompts = [[5, 17, 33, 2, 9], [100, 7, 8, 44, 45, 46, 3, 1, 60, 61, 62, 63]]
    with single_torch_thread():
        llm = LLM(str(tmp_path / "baichuan-13b"), device="cpu", kv_cache_tokens=1024)
        assert llm.engine.runner.model.arch.alibi_bias_max == 8.0
        ours = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12,
                                                    ignore_eos=True))
        for prompt, got in zip(prompts, ours):
            assert list(got.token_ids) == alibi_llama_greedy(llama, prompt, num_tokens=12)
