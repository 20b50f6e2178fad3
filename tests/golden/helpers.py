"""Shared pieces of the golden tests: tiny random HF models, and HandBatcher, a by-hand
stand-in for the scheduler that builds SchedulerOutputs and allocates blocks itself, so
these tests pin the model and the runner without depending on the real scheduler."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from server.scheduler.output import NewRequestData, ScheduledRequest, SchedulerOutput
from server.scheduler.request import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=64)

_COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)

# name -> (transformers config class name, its kwargs); GPT2Config maps hidden_size and
# the like onto its own keys (its MLP is 4 x n_embd wide)
TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama-mha": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4,
                                      tie_word_embeddings=False)),
    "llama-gqa-tied": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2,
                                           tie_word_embeddings=True)),
    "llama-mqa": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=1,
                                      tie_word_embeddings=False)),
    # a vocabulary no tensor-parallel split divides: the shards pad it
    "llama-odd-vocab": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2,
                                            vocab_size=251, tie_word_embeddings=False)),
    "llama3-rope": ("LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        rope_theta=10000.0,
        # With head_dim 16 the wavelengths run 6 .. 20000, so original length 64 puts some
        # frequencies below, some inside and some above the smoothed band.
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "mistral": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=False, sliding_window=None)),
    # Mistral v0.1: every layer attends within a window the tests' sequences outgrow
    "mistral-sliding": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2,
                                              tie_word_embeddings=False, sliding_window=7)),
    # Qwen2 with use_sliding_window: the layers from max_window_layers on slide
    "qwen2-sliding": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2,
                                          tie_word_embeddings=True, use_sliding_window=True,
                                          sliding_window=6, max_window_layers=1)),
    "qwen2-bias": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2,
                                       tie_word_embeddings=True)),
    "qwen3-qk-norm": ("Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=2,
                                          head_dim=16, tie_word_embeddings=False)),
    # Phi-3 stores qkv_proj and gate_up_proj fused in the checkpoint
    "phi3-fused": ("Phi3Config", dict(num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=False, pad_token_id=0)),
    # LayerNorm with biases, biased projections, ungated tanh-GELU MLP, tied head, and a
    # sliding window in every layer
    "starcoder2": ("Starcoder2Config", dict(num_attention_heads=4, num_key_value_heads=2,
                                            norm_epsilon=1e-5, use_bias=True,
                                            tie_word_embeddings=True, sliding_window=9)),
    # (1 + w) sandwich norms, GeGLU, scaled embeddings, soft-capped scores and logits; every
    # other layer slides over a window the tests' sequences outgrow
    "gemma2": ("Gemma2Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    query_pre_attn_scalar=16, attn_logit_softcapping=20.0,
                                    final_logit_softcapping=10.0, sliding_window=8,
                                    pad_token_id=0)),
    # Gemma 3: (1 + w) q/k norms, sliding layers rotating with their own base frequency,
    # the global ones with linear scaling
    "gemma3": ("Gemma3TextConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=8, pad_token_id=0,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 4.0,
                                            "rope_theta": 1000000.0}})),
    # learned positions, LayerNorm, Conv1D weights stored [in, out], fused biased c_attn
    "gpt2": ("GPT2Config", dict(num_attention_heads=4, tie_word_embeddings=True)),
    # Starcoder 1: GPT-2's layout with Linear weights and one kv head (multi-query)
    # ALiBi (5 heads: not a power of two), LayerNorm and linear layers without biases
    "mpt-alibi": ("MptConfig", dict(num_attention_heads=5, hidden_size=80,
                                    no_bias=True, tie_word_embeddings=True,
                                    attn_config={"alibi": True, "alibi_bias_max": 8})),
    # ALiBi (6 heads), LayerNorm on the embeddings, q|k|v stored head by head
    "bloom": ("BloomConfig", dict(num_attention_heads=6, hidden_size=96, n_head=6,
                                  tie_word_embeddings=True)),
    "gpt-bigcode-mqa": ("GPTBigCodeConfig", dict(num_attention_heads=4, multi_query=True,
                                                 tie_word_embeddings=True)),
    # Falcon 7B: attention and MLP in parallel under one LayerNorm, multi-query, rotary
    "falcon-parallel-mqa": ("FalconConfig", dict(num_attention_heads=4, multi_query=True,
                                                 parallel_attn=True, bias=False,
                                                 tie_word_embeddings=False)),
    # Falcon 40B: the new decoder architecture, q|k|v grouped by kv head, two norms
    "falcon-new-decoder": ("FalconConfig", dict(num_attention_heads=4, num_kv_heads=2,
                                                new_decoder_architecture=True, bias=False)),
    # Falcon-RW: sequential blocks, ALiBi scaled by 1/sqrt(head_dim), q|k|v head by head
    "falcon-rw-alibi": ("FalconConfig", dict(num_attention_heads=4, multi_query=False,
                                             parallel_attn=False, alibi=True, bias=True)),
    # GLM: half of each head rotated as interleaved pairs, q|k|v biased, gate|up fused
    "glm": ("GlmConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              pad_token_id=0)),
    # GLM 4: GLM with norms after attention and after the MLP as well
    "glm4": ("Glm4Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                pad_token_id=0)),
}


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """Tiny ops spend most of their time in thread hand-offs, and on a busy 2-core machine
    intra-op threads spin against each other (measured: 20x slower); run them on one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_hf_model(name: str, *, seed: int = 0):
    """A tiny transformers CausalLM with weights drawn large enough that attention is
    sharp (HF's default init makes it near-uniform, which would hide rotary mistakes)."""
    import transformers

    class_name, kwargs = TINY_CONFIGS[name]
    config = getattr(transformers, class_name)(**{**_COMMON, **kwargs})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.architectures = [type(model).__name__]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith("norm.weight"):
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            elif param.dim() == 1:  # q/k/v biases
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param.shape[1]
                param.copy_(torch.randn(param.shape, generator=generator) * 1.5 / fan_in ** 0.5)
    return model.eval()


def saved_hf_model(tmp_path_factory, name: str, *, seed: int = 0):
    """(make_hf_model(name, seed=seed), the directory it is saved in) for a module fixture."""
    hf_model = make_hf_model(name, seed=seed)
    model_dir = tmp_path_factory.mktemp(f"{name}-{seed}")
    hf_model.save_pretrained(model_dir)
    return hf_model, model_dir


def hf_logits(model, token_ids: list[int]) -> torch.Tensor:
    """float32 [len(token_ids), vocab]: HF's logits for every position of one sequence."""
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()


@dataclass
class HandRequest:
    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    send_as_new: bool = True

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids


class HandBatcher:
    """Builds SchedulerOutputs from explicit plans ({req_id: tokens to compute}), with
    reference-counted blocks handed out last-freed-first, so a preempted request's blocks
    are overwritten by whoever comes next."""

    def __init__(self, *, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.free_block_ids = list(range(num_blocks - 1, -1, -1))
        self.block_refs: dict[int, int] = {}
        self.requests: dict[str, HandRequest] = {}
        self._preempted: list[str] = []
        self._finished: list[str] = []

    def add(self, *, req_id: str, prompt_token_ids: list[int],
            sampling_params: SamplingParams = GREEDY, shared_from: str | None = None,
            num_shared_blocks: int = 0) -> None:
        """num_shared_blocks full blocks of shared_from's table are reused: a prefix hit."""
        request = HandRequest(req_id, list(prompt_token_ids), sampling_params)
        if shared_from is not None:
            donor = self.requests[shared_from]
            shared = donor.block_ids[:num_shared_blocks]
            assert donor.all_token_ids[:num_shared_blocks * self.block_size] == \
                request.prompt_token_ids[:num_shared_blocks * self.block_size]
            for block_id in shared:
                self.block_refs[block_id] += 1
            request.block_ids = list(shared)
            request.num_computed_tokens = num_shared_blocks * self.block_size
        self.requests[req_id] = request

    def step(self, plan: Mapping[str, int | None]) -> SchedulerOutput:
        """plan: req_id -> how many of its uncomputed tokens to compute (None: all)."""
        scheduled, new = [], []
        for req_id, count in plan.items():
            request = self.requests[req_id]
            tokens = request.all_token_ids
            start = request.num_computed_tokens
            end = len(tokens) if count is None else start + count
            assert start < end <= len(tokens), (req_id, start, end, len(tokens))
            self._grow(request, end)
            if request.send_as_new:
                new.append(NewRequestData(req_id, tuple(request.prompt_token_ids),
                                          tuple(request.output_token_ids),
                                          request.sampling_params))
                request.send_as_new = False
            scheduled.append(ScheduledRequest(req_id, tuple(tokens[start:end]), start,
                                              tuple(request.block_ids), end == len(tokens)))
            request.num_computed_tokens = end
        out = SchedulerOutput(tuple(scheduled), tuple(new), tuple(self._preempted),
                              tuple(self._finished), sum(s.num_tokens for s in scheduled))
        self._preempted, self._finished = [], []
        return out

    def record(self, sampled: Mapping[str, int]) -> None:
        for req_id, token_id in sampled.items():
            self.requests[req_id].output_token_ids.append(token_id)

    def preempt(self, req_id: str) -> None:
        """Frees the request's blocks and forgets its progress; it is recomputed later."""
        request = self.requests[req_id]
        self._release(request)
        request.num_computed_tokens = 0
        request.send_as_new = True
        self._preempted.append(req_id)

    def finish(self, req_id: str) -> None:
        self._release(self.requests.pop(req_id))
        self._finished.append(req_id)

    def _grow(self, request: HandRequest, num_tokens: int) -> None:
        while len(request.block_ids) * self.block_size < num_tokens:
            block_id = self.free_block_ids.pop()
            self.block_refs[block_id] = 1
            request.block_ids.append(block_id)

    def _release(self, request: HandRequest) -> None:
        for block_id in reversed(request.block_ids):
            self.block_refs[block_id] -= 1
            if self.block_refs[block_id] == 0:
                del self.block_refs[block_id]
                self.free_block_ids.append(block_id)
        request.block_ids = []


def tiny_llm_that_preempts(*, async_scheduling: bool):
    """dummy:tiny on the CPU with 6 blocks of 16 for up to 4 running requests of up to
    40-60 tokens: preemption happens."""
    from server.engine.llm import LLM

    return LLM("dummy:tiny", device="cpu", kv_cache_tokens=96, max_num_seqs=4,
               max_num_batched_tokens=24, async_scheduling=async_scheduling)
