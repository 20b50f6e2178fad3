"""The lm-eval tasks of this folder scored by transformers directly, no daemon: the figures
lm-eval reports through the daemon should come out the same.

    python bench/lm_eval_tasks/transformers_check.py [MODEL_DIR]

MODEL_DIR: a Hugging Face directory (default: the default model, converted in the cache).
Scores as lm-eval does: each prose text after the tokenizer's BOS token (else EOS), all of
it in one window (the texts are far shorter than lm-eval's 2048 tokens); each choice after
the question's context and a space, acc_norm dividing by the choice's bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def continuation_logprob(model, context_ids: list[int], continuation_ids: list[int]) -> float:
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = model(ids).logits[0].float().log_softmax(dim=-1)
    start = len(context_ids) - 1
    return sum(logprobs[start + i, token].item() for i, token in enumerate(continuation_ids))


def prose_metrics(model, tokenizer) -> dict[str, float]:
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
        else tokenizer.eos_token_id
    total, words, num_bytes = 0.0, 0, 0
    for line in (HERE / "prose.jsonl").read_text().splitlines():
        text = json.loads(line)["text"]
        total += continuation_logprob(model, [prefix], tokenizer.encode(text))
        words += len(re.split(r"\s+", text))
        num_bytes += len(text.encode())
    return {"word_perplexity": math.exp(-total / words),
            "byte_perplexity": math.exp(-total / num_bytes),
            "bits_per_byte": -total / num_bytes / math.log(2)}


def facts_metrics(model, tokenizer) -> dict[str, float]:
    correct = correct_norm = 0
    docs = [json.loads(line) for line in (HERE / "facts.jsonl").read_text().splitlines()]
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        context_ids = tokenizer.encode(context)
        scores = []
        for choice in doc["choices"]:
            whole = tokenizer.encode(f"{context} {choice}")
            scores.append(continuation_logprob(model, whole[:len(context_ids)],
                                               whole[len(context_ids):]))
        normed = [s / len(f" {c}".encode()) for s, c in zip(scores, doc["choices"])]
        correct += max(range(len(scores)), key=scores.__getitem__) == doc["answer"]
        correct_norm += max(range(len(normed)), key=normed.__getitem__) == doc["answer"]
    return {"acc": correct / len(docs), "acc_norm": correct_norm / len(docs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", help="a Hugging Face directory")
    args = parser.parse_args()
    model_dir = args.model_dir
    if model_dir is None:
        from server.engine.loading.weights import default_model_dir

        model_dir = str(default_model_dir())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for task, metrics in (("inflightd_facts", facts_metrics(model, tokenizer)),
                          ("inflightd_prose", prose_metrics(model, tokenizer))):
        for name, value in metrics.items():
            print(f"{task}\t{name}\t{value:.4f}")


if __name__ == "__main__":
    main()
