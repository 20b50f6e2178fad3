"""bench/serving_figures.py, the helpers of scripts/serving_figures.sh: the timed offline burst
on a tiny model, the sweep's plan, and the summary of a run's files."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from bench.serving_figures import _timed_burst, main, plan_rates
from server.bench.metrics import RequestResult, summarize
from server.engine.llm import LLM


def test_timed_burst_counts_every_token_and_gives_the_engine_its_step_back():
    llm = LLM("dummy:tiny", device="cpu", max_num_seqs=8, max_model_len=64)
    prompts = [[5 + i] * (4 + i) for i in range(6)]
    burst = _timed_burst(llm, prompts, [7] * 6)
    assert burst["output_tokens"] == 6 * 7 and burst["requests"] == 6
    assert burst["output_tokens_per_s"] > 0 and burst["preemptions"] == 0
    steps = burst["step_wall_ms"]
    assert steps["count"] == burst["num_steps"] >= 7
    assert 0 < steps["p50"] <= steps["p99"] <= steps["max"]
    # one gap per output after a request's first: 6 gaps for each of the 6 requests at most
    assert 0 < burst["output_gap_ms"]["count"] <= 6 * 6
    assert burst["step_gpu_ms"] is None  # no CUDA events on the CPU
    assert "step" not in vars(llm.engine)  # the class's method again


def test_plan_spreads_the_time_left_over_equal_arrival_windows():
    plan = plan_rates(output_throughput=8192.0, itl_median_s=0.04, output_len=256,
                      fractions=[0.25, 0.5, 1.0, 1.25], seconds=300.0, overhead_s=5.0,
                      min_prompts=16, max_prompts=5000)
    assert plan["capacity_rps"] == pytest.approx(32.0)
    assert plan["drain_s"] == pytest.approx(256 * 0.04)
    rates = [p["rate"] for p in plan["points"]]
    assert rates == pytest.approx([8.0, 16.0, 32.0, 40.0])
    windows = [p["num_prompts"] / p["rate"] for p in plan["points"]]
    assert max(windows) - min(windows) < 0.1
    assert sum(p["expected_seconds"] for p in plan["points"]) == pytest.approx(300.0, abs=1.0)


def test_plan_keeps_the_prompt_counts_within_bounds():
    plan = plan_rates(output_throughput=100.0, itl_median_s=None, output_len=10,
                      fractions=[0.25, 1.0], seconds=5.0, overhead_s=5.0,
                      min_prompts=16, max_prompts=20)
    assert [p["num_prompts"] for p in plan["points"]] == [16, 16]
    plan = plan_rates(output_throughput=1e6, itl_median_s=0.01, output_len=10,
                      fractions=[1.0], seconds=600.0, overhead_s=5.0,
                      min_prompts=16, max_prompts=20)
    assert plan["points"][0]["num_prompts"] == 20


def _serve_document(num: int, seconds_per_token: float) -> dict:
    results = [RequestResult(success=True, prompt_len=10, output_len=4, start=0.0,
                             output_tokens=4, ttft=0.1, itls=(seconds_per_token,) * 3,
                             e2e=0.1 + 3 * seconds_per_token) for _ in range(num)]
    summary = summarize(results, duration=2.0, slo={"ttft": 1.0, "tpot": 0.05})
    return {"config": {"num_prompts": num}, "summary": asdict(summary),
            "requests": [asdict(r) for r in results]}


def test_summary_puts_offline_daemon_aiperf_and_the_sweep_side_by_side(tmp_path, capsys):
    (tmp_path / "offline.json").write_text(json.dumps({
        "model": "dummy:tiny", "machine": "CPU", "kv_cache_tokens": 64, "max_num_seqs": 8,
        "prefix_caching": False,
        "bursts": [{"requests": 8, "output_tokens_per_s": 20.0,
                    "step_wall_ms": {"p50": 20.0, "p99": 40.0},
                    "step_gpu_ms": None, "output_gap_ms": {"p50": 20.0, "p99": 30.0}}]}))
    (tmp_path / "serve_8.json").write_text(json.dumps(_serve_document(8, 0.02)))
    (tmp_path / "aiperf").mkdir()
    (tmp_path / "aiperf" / "profile_export_aiperf.json").write_text(json.dumps({
        "aiperf_version": "0.13.0", "request_count": {"avg": 8},
        "output_token_throughput": {"avg": 15.5}, "inter_token_latency": {"p50": 20.0}}))
    for index, rate in enumerate(("inf", 2.0, 1.0)):
        document = _serve_document(4, 0.01 * (index + 1))
        point = {"label": f"rate={rate}", "request_rate": rate, "max_concurrency": None,
                 "summary": document["summary"], "requests": document["requests"],
                 "test_request": document["requests"][0]}
        (tmp_path / f"sweep_rate_{index}.json").write_text(
            json.dumps({"config": {"dataset": "sharegpt"}, "points": [point]}))
    assert main(["summary", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    burst = summary["bursts"][0]
    assert burst["daemon_tok_s"] == pytest.approx(16.0)  # 8 x 4 tokens in 2 s
    assert burst["ratio"] == pytest.approx(0.8)
    assert burst["itl_p99_over_step_p99"] == pytest.approx(20.0 / 40.0)
    assert summary["aiperf"]["ratio"] == pytest.approx(15.5 / 16.0)
    assert [r["rate"] for r in summary["sweep"]] == [1.0, 2.0, "inf"]  # as bench writes it
    assert summary["sweep"][0]["goodput"] == pytest.approx(2.0)
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert [p["label"] for p in sweep["points"]] == ["rate=1.0", "rate=2.0", "rate=inf"]
    assert all("requests" not in p for p in sweep["points"])
    assert "0.800" in printed and "0.969" in printed
    pytest.importorskip("matplotlib")
    assert (tmp_path / "sweep_latency.png").stat().st_size > 0
    assert (tmp_path / "sweep.png").stat().st_size > 0
