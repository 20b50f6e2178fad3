"""Benchmark workloads: exact random-prompt lengths, ShareGPT (the packaged sample, or any file
given with --dataset-path) and JSONL files."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from server.bench.datasets import (SHAREGPT_PATH, DatasetError, LengthRange, load_requests,
                                   random_prompt, random_requests, read_sharegpt_prompts,
                                   sharegpt_requests)
from server.bench.tokenizer import BenchTokenizer, load_tokenizer

CORPUS = ("Serving benchmarks measure the latency and throughput of language models under load. "
          "A scheduler batches requests; the quick brown fox jumps over the lazy dog. 0123456789 "
          "Überprüfung, café, naïve — ünïcödé text keeps byte-level merges honest.")


@pytest.fixture(scope="module")
def small_tokenizer() -> BenchTokenizer:
    """A byte-level BPE trained here in milliseconds, the same kind of tokenizer as Llama 3's or
    SmolLM2's, so decode/re-encode merges happen as they do with real models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([CORPUS] * 20, trainer)
    return BenchTokenizer(backend=tokenizer, source="trained-in-test")


@pytest.fixture(scope="module")
def default_tokenizer() -> BenchTokenizer:
    return load_tokenizer()


def test_special_tokens_never_appear_in_random_prompt_vocabulary(small_tokenizer):
    vocab = small_tokenizer.ordinary_token_ids()
    assert small_tokenizer.special_ids == {0}
    assert 0 not in vocab and len(vocab) > 100


def test_length_range_parses_fixed_and_inclusive_ranges():
    assert LengthRange.parse("128") == LengthRange(128, 128)
    assert LengthRange.parse("128:1024") == LengthRange(128, 1024)
    assert str(LengthRange.parse("16:32")) == "16:32"
    rng = random.Random(0)
    draws = {LengthRange(3, 5).sample(rng) for _ in range(200)}
    assert draws == {3, 4, 5}


@pytest.mark.parametrize("text", ["", "abc", "0", "5:2", "1:2:3", "-4"])
def test_length_range_rejects_bad_text(text):
    with pytest.raises(DatasetError):
        LengthRange.parse(text)


@pytest.mark.parametrize("num_tokens", [1, 2, 3, 7, 16, 31, 64, 257])
def test_random_prompt_reencodes_to_exactly_the_asked_length(small_tokenizer, num_tokens):
    vocab = small_tokenizer.ordinary_token_ids()
    for seed in range(5):
        text = random_prompt(tokenizer=small_tokenizer, num_tokens=num_tokens,
                             rng=random.Random(seed), vocab=vocab)
        assert len(small_tokenizer.encode(text)) == num_tokens


def test_random_requests_with_default_model_tokenizer_have_exact_lengths(default_tokenizer):
    requests = random_requests(tokenizer=default_tokenizer, num_prompts=24,
                               input_len=LengthRange(16, 512), output_len=LengthRange(8, 8),
                               seed=3)
    for request in requests:
        assert 16 <= request.prompt_len <= 512
        assert len(default_tokenizer.encode(request.prompt)) == request.prompt_len
        assert request.output_len == 8


def test_random_requests_are_reproducible_distinct_and_within_ranges(small_tokenizer):
    kwargs = dict(tokenizer=small_tokenizer, num_prompts=40, input_len=LengthRange(16, 32),
                  output_len=LengthRange(4, 9), seed=11)
    first, again = random_requests(**kwargs), random_requests(**kwargs)
    assert first == again
    assert random_requests(**{**kwargs, "seed": 12}) != first
    assert len({r.prompt for r in first}) == 40  # no shared prefixes for a prefix cache to reuse
    assert all(16 <= r.prompt_len <= 32 and 4 <= r.output_len <= 9 for r in first)
    assert len({r.prompt_len for r in first}) > 5
    assert all(len(small_tokenizer.encode(r.prompt)) == r.prompt_len for r in first)


def test_sharegpt_requests_use_first_human_turns_with_their_token_counts(small_tokenizer):
    requests = sharegpt_requests(tokenizer=small_tokenizer, num_prompts=20,
                                 output_len=LengthRange(32, 64), seed=0)
    assert len(requests) == 20 and len({r.prompt for r in requests}) == 20
    for request in requests:
        assert request.prompt.strip()
        assert request.prompt_len == len(small_tokenizer.encode(request.prompt))
        assert 32 <= request.output_len <= 64


def test_sharegpt_uses_every_prompt_once_before_repeating(tmp_path, small_tokenizer):
    path = tmp_path / "tiny_sharegpt.json"
    conversations = [{"id": str(i), "conversations": [{"from": "human", "value": f"question {i}"},
                                                      {"from": "gpt", "value": "answer"}]}
                     for i in range(3)]
    conversations.append({"id": "bot-first", "conversations": [{"from": "gpt", "value": "hi"}]})
    path.write_text(json.dumps(conversations))
    requests = sharegpt_requests(tokenizer=small_tokenizer, num_prompts=7,
                                 output_len=LengthRange(8, 8), seed=1, path=path)
    counts = Counter(r.prompt for r in requests)
    assert set(counts) == {"question 0", "question 1", "question 2"}
    assert sorted(counts.values()) == [2, 2, 3]
    assert len(set(r.prompt for r in requests[:3])) == 3


def test_jsonl_dataset_reads_prompts_and_per_line_output_lengths(tmp_path, small_tokenizer):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "the quick brown fox", "output_len": 5}\n\n'
                    '{"prompt": "serving benchmarks"}\n')
    requests = load_requests(dataset=str(path), tokenizer=small_tokenizer, num_prompts=2,
                             input_len=LengthRange(1, 1), output_len=LengthRange(9, 9), seed=0)
    by_prompt = {r.prompt: r for r in requests}
    assert by_prompt["the quick brown fox"].output_len == 5
    assert by_prompt["serving benchmarks"].output_len == 9
    assert by_prompt["serving benchmarks"].prompt_len == len(
        small_tokenizer.encode("serving benchmarks"))


@pytest.mark.parametrize("line", ['{"text": "no prompt key"}', "not json",
                                  '{"prompt": "x", "output_len": 0}'])
def test_jsonl_dataset_names_the_bad_line(tmp_path, small_tokenizer, line):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(DatasetError, match="bad.jsonl:2"):
        load_requests(dataset=str(path), tokenizer=small_tokenizer, num_prompts=1,
                      input_len=LengthRange(1, 1), output_len=LengthRange(1, 1), seed=0)


def test_unknown_dataset_and_empty_run_are_rejected(small_tokenizer):
    common = dict(tokenizer=small_tokenizer, input_len=LengthRange(4, 4),
                  output_len=LengthRange(4, 4), seed=0)
    with pytest.raises(DatasetError, match="--dataset"):
        load_requests(dataset="no-such-dataset", num_prompts=1, **common)
    with pytest.raises(DatasetError, match="--num-prompts"):
        load_requests(dataset="random", num_prompts=0, **common)


def test_the_packaged_sharegpt_sample_has_500_prompts_with_its_licence_beside_it():
    assert len(read_sharegpt_prompts(SHAREGPT_PATH)) == 500
    licence = (SHAREGPT_PATH.parent / "LICENSE-sharegpt_500").read_text()
    assert "Apache License" in licence and "Version 2.0" in licence
    source = (SHAREGPT_PATH.parent / "README.md").read_text()
    assert "ml-energy/leaderboard-v2" in source and "Apache License 2.0" in source


def write_sharegpt(path, conversations) -> str:
    path.write_text(json.dumps([{"id": str(i), "conversations": turns}
                                for i, turns in enumerate(conversations)]))
    return str(path)


def test_dataset_path_reads_another_sharegpt_file(tmp_path, small_tokenizer):
    path = write_sharegpt(tmp_path / "mine.json", [
        [{"from": "system", "value": "be brief"}, {"from": "human", "value": "first question"},
         {"from": "gpt", "value": "an answer"}],
        [{"from": "human", "value": "second question"}],
        [{"from": "gpt", "value": "a bot speaks first: skipped"}],
    ])
    requests = load_requests(dataset="sharegpt", dataset_path=Path(path),
                             tokenizer=small_tokenizer, num_prompts=4,
                             input_len=LengthRange(1, 1), output_len=LengthRange(6, 6), seed=0)
    assert Counter(r.prompt for r in requests) == {"first question": 2, "second question": 2}
    assert all(r.output_len == 6 for r in requests)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "cannot read ShareGPT file"),
    ('{"conversations": []}', "is not a ShareGPT file: a JSON list of"),
    ('[{"conversations": [{"from": "human", "value": "ok"}]}, {"id": "x"}]',
     "entry 1 is not a ShareGPT conversation"),
    ('[{"conversations": [{"from": "human", "value": 7}]}]',
     "entry 0 is not a ShareGPT conversation"),
    ('[{"conversations": [{"from": "gpt", "value": "hello"}]}]',
     "no conversation that opens with a human turn"),
])
def test_a_missing_or_malformed_sharegpt_file_is_named_in_the_error(tmp_path, small_tokenizer,
                                                                    content, message):
    path = tmp_path / "sharegpt.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=message) as raised:
        load_requests(dataset="sharegpt", dataset_path=path, tokenizer=small_tokenizer,
                      num_prompts=1, input_len=LengthRange(1, 1),
                      output_len=LengthRange(1, 1), seed=0)
    assert str(path) in str(raised.value)


def test_dataset_path_goes_only_with_sharegpt(tmp_path, small_tokenizer):
    with pytest.raises(DatasetError, match="--dataset-path .* --dataset sharegpt"):
        load_requests(dataset="random", dataset_path=tmp_path / "x.json",
                      tokenizer=small_tokenizer, num_prompts=1, input_len=LengthRange(4, 4),
                      output_len=LengthRange(4, 4), seed=0)


def test_bench_cli_reports_a_missing_dataset_path_and_exits_2(tmp_path, capsys):
    from server.cli import main

    missing = tmp_path / "nowhere.json"
    exit_code = main(["bench", "serve", "--dataset", "sharegpt", "--dataset-path", str(missing),
                      "--base-url", "http://127.0.0.1:9", "--num-prompts", "2"])
    assert exit_code == 2
    assert f"ShareGPT file {missing} does not exist" in capsys.readouterr().err
