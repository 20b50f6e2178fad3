"""Percentiles, TPOT, goodput and the summary the serving benchmark reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.bench.metrics import (LatencyStats, RequestResult, SloError, meets_slo, parse_slo,
                                  percentile, summarize)


def make_result(*, ttft: float = 0.1, e2e: float = 1.0, output_tokens: int = 10,
                success: bool = True, error: str | None = None, prompt_len: int = 20,
                prompt_tokens: int | None = None, itls: tuple[float, ...] = ()) -> RequestResult:
    if not success:
        return RequestResult(success=False, prompt_len=prompt_len, output_len=output_tokens,
                             start=0.0, error=error)
    return RequestResult(success=True, prompt_len=prompt_len, output_len=output_tokens, start=0.0,
                         prompt_tokens=prompt_tokens, output_tokens=output_tokens, ttft=ttft,
                         itls=itls, e2e=e2e)


def test_percentile_interpolates_between_closest_ranks():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0


@given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1, max_size=60),
       st.floats(min_value=0, max_value=100))
def test_percentile_matches_numpy_linear_method(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-9)


def test_percentile_rejects_empty_input_and_out_of_range_q():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_stats_reports_mean_median_p90_p99():
    stats = LatencyStats.of([float(v) for v in range(1, 101)])
    assert stats.count == 100
    assert stats.mean == pytest.approx(50.5)
    assert stats.median == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p99 == pytest.approx(99.01)
    assert LatencyStats.of([]) is None


def test_tpot_spreads_decode_time_over_tokens_after_the_first():
    assert make_result(ttft=0.2, e2e=1.1, output_tokens=10).tpot == pytest.approx(0.1)
    assert make_result(ttft=0.2, e2e=0.2, output_tokens=1).tpot is None
    assert make_result(success=False, error="boom").tpot is None


def test_parse_slo_reads_seconds_and_milliseconds():
    assert parse_slo("ttft=0.5,tpot=50ms") == {"ttft": 0.5, "tpot": pytest.approx(0.05)}
    assert parse_slo("e2e=2s") == {"e2e": 2.0}
    assert parse_slo(None) == {}


@pytest.mark.parametrize("text", ["ttft", "latency=1", "ttft=fast", "tpot=0", "e2e=-1", "ttft=inf"])
def test_parse_slo_rejects_what_it_cannot_read(text):
    with pytest.raises(SloError):
        parse_slo(text)


def test_goodput_counts_only_successful_requests_within_every_limit():
    slo = {"ttft": 0.5, "tpot": 0.05}
    good = make_result(ttft=0.4, e2e=0.4 + 9 * 0.04, output_tokens=10)
    slow_first_token = make_result(ttft=0.6, e2e=0.6 + 9 * 0.01, output_tokens=10)
    slow_decode = make_result(ttft=0.1, e2e=0.1 + 9 * 0.06, output_tokens=10)
    single_token = make_result(ttft=0.3, e2e=0.3, output_tokens=1)  # no TPOT to hold it to
    failed = make_result(success=False, error="HTTP 500: overloaded")
    results = [good, slow_first_token, slow_decode, single_token, failed]
    assert [meets_slo(r, slo) for r in results] == [True, False, False, True, False]
    summary = summarize(results, duration=4.0, slo=slo)
    assert summary.good_requests == 2
    assert summary.goodput == pytest.approx(0.5)


def test_goodput_limit_is_inclusive():
    exactly = make_result(ttft=0.5, e2e=1.0, output_tokens=2)
    assert meets_slo(exactly, {"ttft": 0.5, "e2e": 1.0})


def test_summary_without_slo_has_no_goodput():
    summary = summarize([make_result()], duration=1.0)
    assert summary.goodput is None and summary.good_requests is None


def test_summary_throughputs_count_completed_requests_and_server_prompt_tokens():
    results = [make_result(output_tokens=10, prompt_len=20, prompt_tokens=25, itls=(0.1, 0.2)),
               make_result(output_tokens=30, prompt_len=40, itls=(0.3,)),
               make_result(success=False, error="HTTP 500: overloaded"),
               make_result(success=False, error="HTTP 500: overloaded"),
               make_result(success=False, error="ReadTimeout")]
    summary = summarize(results, duration=2.0)
    assert (summary.num_requests, summary.completed, summary.failed) == (5, 2, 3)
    assert summary.total_output_tokens == 40
    assert summary.total_input_tokens == 25 + 40  # the server's figure wins over the client's
    assert summary.request_throughput == pytest.approx(1.0)
    assert summary.output_throughput == pytest.approx(20.0)
    assert summary.total_token_throughput == pytest.approx(52.5)
    assert summary.errors == {"HTTP 500: overloaded": 2, "ReadTimeout": 1}
    assert summary.itl.count == 3 and summary.itl.mean == pytest.approx(0.2)
    assert summary.ttft.count == 2


def test_summary_of_all_failed_requests_has_no_latency_stats():
    summary = summarize([make_result(success=False, error="refused")], duration=1.0)
    assert summary.completed == 0
    assert summary.ttft is None and summary.e2e is None
    assert math.isclose(summary.output_throughput, 0.0)


def test_summary_rejects_non_positive_duration():
    with pytest.raises(ValueError):
        summarize([make_result()], duration=0.0)
