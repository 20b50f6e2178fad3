"""The default model through the whole engine (scheduler, runner, sampler) against
transformers' own greedy `generate` on the same converted weights."""

from __future__ import annotations

import pytest
import torch

from server.engine.llm import LLM
from server.scheduler.request import SamplingParams

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Name three primary colours."}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
]
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def default_llm(converted_default_model) -> LLM:
    return LLM(str(converted_default_model), device="cpu", kv_cache_tokens=4096)


def test_default_model_greedy_chat_equals_transformers_generate(default_llm,
                                                                converted_default_model):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(converted_default_model, dtype=torch.float32)
    hf.eval()
    ours = default_llm.chat(CHATS, SamplingParams(temperature=0, max_tokens=MAX_NEW_TOKENS))
    for chat, completion in zip(CHATS, ours):
        prompt = default_llm.tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert list(completion.prompt_token_ids) == list(prompt)
        with torch.inference_mode():
            generated = hf.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW_TOKENS,
                                    do_sample=False, pad_token_id=hf.config.eos_token_id)
        expected = generated[0, len(prompt):].tolist()
        # transformers keeps the EOS token it stopped on; so do we.
        assert list(completion.token_ids) == expected, (completion.text,)
    assert "Paris" in ours[0].text


def test_seeded_request_gives_same_tokens_alone_and_in_batch_of_8():
    llm = LLM("dummy:tiny", device="cpu", kv_cache_tokens=4096)
    seeded = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=12,
                            ignore_eos=True)
    prompt = [11, 22, 33, 44, 55, 66]
    alone = llm.generate([prompt], seeded)[0].token_ids

    others = [SamplingParams(temperature=t, max_tokens=m, ignore_eos=True, seed=s)
              for t, m, s in [(1.0, 5, None), (0.0, 9, None), (0.7, 12, 7), (1.3, 3, None),
                              (0.5, 20, 99), (1.0, 12, None), (0.2, 7, None)]]
    batch_prompts = [[5 + i, 6 + i, 7 + i] * (i + 1) for i in range(7)]
    batch_prompts.insert(3, prompt)
    others.insert(3, seeded)
    together = llm.generate(batch_prompts, others)
    assert together[3].token_ids == alone
    assert len(set(c.token_ids for c in together)) > 1
