"""`inflightd bench serve` against the real daemon (default model, CPU): every request is
accounted for, token counts agree with the daemon's own counters, latencies are ordered."""

from __future__ import annotations

import json

import pytest

from server.cli import main
from tests.api.daemon import Daemon, free_port
from tests.api.helpers import wait_until_idle

NUM_PROMPTS = 8
OUTPUT_LEN = 8


def generation_tokens_total(daemon: Daemon) -> int:
    stats = wait_until_idle(daemon.base_url, timeout_s=120)
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0, stats
    return stats["generation_tokens_total"]


@pytest.fixture(scope="module")
def bench_run(daemon: Daemon, model_name: str, tmp_path_factory) -> dict:
    """One `inflightd bench serve` through the real CLI; its JSON, the PNG's path, and how many
    tokens the daemon generated meanwhile by its own count."""
    out = tmp_path_factory.mktemp("bench")
    before = generation_tokens_total(daemon)
    exit_code = main(["bench", "serve", "--base-url", daemon.base_url, "--model", model_name,
                      "--num-prompts", str(NUM_PROMPTS), "--input-len", "16:32",
                      "--output-len", str(OUTPUT_LEN), "--seed", "7", "--slo", "ttft=600",
                      "--no-progress", "--json", str(out / "bench.json"),
                      "--plot", str(out / "bench.png")])
    generated = generation_tokens_total(daemon) - before
    return {"exit_code": exit_code, "doc": json.loads((out / "bench.json").read_text()),
            "png": out / "bench.png", "daemon_generated": generated}


def test_bench_serve_accounts_for_every_request(bench_run):
    doc = bench_run["doc"]
    summary = doc["summary"]
    assert bench_run["exit_code"] == 0
    assert (summary["num_requests"], summary["completed"], summary["failed"]) == (NUM_PROMPTS,
                                                                                 NUM_PROMPTS, 0)
    assert summary["errors"] == {}
    assert len(doc["requests"]) == NUM_PROMPTS
    assert all(r["success"] and r["error"] is None for r in doc["requests"])


def test_bench_output_tokens_equal_the_daemons_usage_and_counters(bench_run):
    doc = bench_run["doc"]
    requests = doc["requests"]
    assert all(r["token_source"] == "usage" for r in requests)
    # ignore_eos with max_tokens: every request generates exactly what it asked for.
    assert [r["output_tokens"] for r in requests] == [OUTPUT_LEN] * NUM_PROMPTS
    assert doc["summary"]["total_output_tokens"] == sum(r["output_tokens"] for r in requests)
    # The daemon's own counter saw the benchmark's tokens plus its untimed test request.
    assert bench_run["daemon_generated"] == (doc["summary"]["total_output_tokens"]
                                             + doc["test_request"]["output_tokens"])


def test_random_prompts_reach_the_daemon_at_their_asked_length(bench_run):
    for r in bench_run["doc"]["requests"]:
        assert 16 <= r["prompt_len"] <= 32
        assert r["prompt_tokens"] == r["prompt_len"]  # completions add no special tokens


def test_bench_latencies_are_ordered_and_throughput_positive(bench_run):
    doc = bench_run["doc"]
    summary = doc["summary"]
    for r in doc["requests"]:
        assert 0 < r["ttft"] <= r["e2e"] <= summary["duration"]
        assert r["tpot"] > 0
        # A chunk carries one token or more, so a request has at most OUTPUT_LEN - 1 gaps.
        assert len(r["itls"]) <= OUTPUT_LEN - 1 and all(gap >= 0 for gap in r["itls"])
        assert r["ttft"] + sum(r["itls"]) <= r["e2e"]
    assert summary["itl"] is not None  # tokens were streamed, not sent in one piece
    for metric in ("ttft", "tpot", "itl", "e2e"):
        stats = summary[metric]
        assert stats["median"] <= stats["p90"] <= stats["p99"]
    assert summary["ttft"]["p99"] <= summary["e2e"]["p99"]
    assert summary["request_throughput"] > 0 and summary["output_throughput"] > 0
    assert summary["total_token_throughput"] > summary["output_throughput"]
    assert summary["good_requests"] == NUM_PROMPTS  # a 600 s TTFT limit holds for all
    assert bench_run["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_serve_stops_with_an_error_when_nothing_listens(capsys):
    exit_code = main(["bench", "serve", "--base-url", f"http://127.0.0.1:{free_port()}",
                      "--num-prompts", "2", "--input-len", "4", "--output-len", "2",
                      "--no-progress", "--request-timeout", "10"])
    assert exit_code == 2
    assert "test request to" in capsys.readouterr().err


def test_bench_serve_reports_a_wrong_model_name(daemon: Daemon, capsys):
    exit_code = main(["bench", "serve", "--base-url", daemon.base_url, "--model", "no-such-model",
                      "--tokenizer", _tokenizer_dir(), "--num-prompts", "1", "--input-len", "4",
                      "--output-len", "2", "--no-progress"])
    assert exit_code == 2
    assert "HTTP 404" in capsys.readouterr().err


def _tokenizer_dir() -> str:
    from server.engine.loading.weights import default_model_dir

    return str(default_model_dir())
