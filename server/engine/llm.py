"""The offline API: the engine in-process, for scripts and benchmarks (no HTTP, no IPC).

    llm = LLM("dummy:tiny")  # or a Hugging Face directory, or the default model
    outs = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=16))

Scoring a text: SamplingParams(max_tokens=0, prompt_logprobs=k) gives each prompt token's
logprob (and the model's top k there) in Completion.prompt_logprobs, and generates nothing.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from server.config import DEFAULT_MODEL, CacheConfig, ModelConfig, SchedulerConfig
from server.engine.core import EngineCore
from server.scheduler.output import TokenLogprobs
from server.scheduler.request import SamplingParams

Prompt = str | Sequence[int]
Message = dict[str, str]


@dataclass(frozen=True)
class Completion:
    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str | None  # None when the model has no tokenizer (dummy weights)
    finish_reason: str
    num_cached_tokens: int
    logprobs: tuple[TokenLogprobs, ...] | None
    # with SamplingParams.prompt_logprobs: one entry per prompt token, None for the first
    # (it has no context), as vLLM's offline API gives them
    prompt_logprobs: tuple[TokenLogprobs | None, ...] | None = None


class LLM:
    def __init__(self, model: str = DEFAULT_MODEL, *, dtype: str = "auto",
                 device: str = "auto", max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 2048, max_model_len: int | None = None,
                 block_size: int = 16, num_blocks: int | None = None,
                 kv_cache_tokens: int | None = None, memory_fraction: float | None = None,
                 enable_prefix_caching: bool = True, seed: int = 0,
                 enforce_eager: bool = False, async_scheduling: bool | None = None,
                 quantization: str | None = None, kv_cache_dtype: str = "auto",
                 kv_admission: str = "optimistic", max_prefill_tokens: int | None = None,
                 tensor_parallel_size: int = 1,
                 nnodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1",
                 master_port: int | None = None) -> None:
        """tensor_parallel_size > 1 starts that many ranks minus this process as worker
        processes; close() (or leaving a `with LLM(...)` block, or the interpreter's exit)
        stops them."""
        if num_blocks is None and kv_cache_tokens is None and memory_fraction is None:
            memory_fraction = 0.9 if _device_is_cuda(device) else None
            kv_cache_tokens = None if memory_fraction else 65536
        self.engine = EngineCore(
            model_config=ModelConfig(model=model, dtype=dtype, device=device,
                                     max_model_len=max_model_len, seed=seed,
                                     enforce_eager=enforce_eager, quantization=quantization,
                                     tensor_parallel_size=tensor_parallel_size,
                                     nnodes=nnodes, node_rank=node_rank,
                                     master_addr=master_addr, master_port=master_port),
            cache_config=CacheConfig(block_size=block_size, num_blocks=num_blocks,
                                     kv_cache_tokens=kv_cache_tokens,
                                     memory_fraction=memory_fraction,
                                     enable_prefix_caching=enable_prefix_caching,
                                     kv_cache_dtype=kv_cache_dtype),
            scheduler_config=SchedulerConfig(max_num_seqs=max_num_seqs,
                                             max_num_batched_tokens=max_num_batched_tokens,
                                             async_scheduling=async_scheduling,
                                             kv_admission=kv_admission,
                                             max_prefill_tokens=max_prefill_tokens))
        weakref.finalize(self, self.engine.close)
        self.tokenizer = _load_tokenizer(self.engine.info.tokenizer_dir)
        self._req_counter = itertools.count()

    def close(self) -> None:
        """Stops the tensor-parallel workers (a no-op without them)."""
        self.engine.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, use_tqdm: bool = False) -> list[Completion]:
        """Runs every prompt to completion, batched by the scheduler; results in order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        token_lists = [self._encode(p) for p in prompts]
        params = _per_prompt(sampling_params, len(token_lists))
        return self._run(token_lists, params, use_tqdm=use_tqdm)

    def chat(self, conversations: Sequence[Message] | Sequence[Sequence[Message]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             *, use_tqdm: bool = False) -> list[Completion]:
        """Applies the model's chat template to each conversation, then generates."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer, so it has no chat template")
        token_lists = [list(self.tokenizer.apply_chat_template(
            list(c), add_generation_prompt=True, tokenize=True, return_dict=False))
            for c in conversations]
        return self._run(token_lists, _per_prompt(sampling_params, len(token_lists)),
                         use_tqdm=use_tqdm)

    def _encode(self, prompt: Prompt) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass token ids, not text")
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    def _run(self, token_lists: list[list[int]], params: list[SamplingParams], *,
             use_tqdm: bool) -> list[Completion]:
        req_ids = [f"offline-{next(self._req_counter)}" for _ in token_lists]
        for req_id, tokens, p in zip(req_ids, token_lists, params):
            self.engine.add_request(req_id, tokens, p)
        produced: dict[str, list[int]] = {req_id: [] for req_id in req_ids}
        logprobs: dict[str, list[TokenLogprobs]] = {req_id: [] for req_id in req_ids}
        prompt_logprobs: dict[str, tuple[TokenLogprobs | None, ...]] = {}
        finals = {}
        with tqdm(total=len(req_ids), disable=not use_tqdm, desc="generating") as bar:
            while self.engine.has_unfinished():
                outputs = self.engine.step()
                _raise_rejections(self.engine, req_ids)
                for out in outputs:
                    produced[out.req_id].extend(out.new_token_ids)
                    logprobs[out.req_id].extend(out.logprobs or ())
                    if out.prompt_logprobs is not None:
                        prompt_logprobs[out.req_id] = (None, *out.prompt_logprobs)
                    if out.finished:
                        finals[out.req_id] = out
                        bar.update(1)
        return [self._completion(tokens, produced[r], finals[r], logprobs[r], p,
                                 prompt_logprobs.get(r))
                for r, tokens, p in zip(req_ids, token_lists, params)]

    def _completion(self, prompt, token_ids, final, logprobs, params,
                    prompt_logprobs) -> Completion:
        text = None
        if self.tokenizer is not None:
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return Completion(prompt_token_ids=tuple(prompt), token_ids=tuple(token_ids),
                          text=text, finish_reason=final.finish_reason,
                          num_cached_tokens=final.num_cached_tokens,
                          logprobs=tuple(logprobs) if params.logprobs is not None else None,
                          prompt_logprobs=prompt_logprobs)


def _raise_rejections(engine, req_ids: list[str]) -> None:
    """A request whose grammar did not compile fails the call (the rest are aborted)."""
    rejected = engine.take_rejections()
    if rejected:
        engine.abort(req_ids)
        engine.step()  # hands the aborts to the runner, so nothing is left over
        raise ValueError(f"request {rejected[0].req_id}: {rejected[0].error}")


def _per_prompt(params: SamplingParams | Sequence[SamplingParams] | None,
                n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * n
    if isinstance(params, SamplingParams):
        return [params] * n
    if len(params) != n:
        raise ValueError(f"got {len(params)} sampling params for {n} prompts")
    return list(params)


def _device_is_cuda(device: str) -> bool:
    if device == "cpu":
        return False
    import torch
    return torch.cuda.is_available()


def _load_tokenizer(tokenizer_dir: str | None):
    if tokenizer_dir is None:
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tokenizer_dir)
