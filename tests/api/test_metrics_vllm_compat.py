"""`--metrics-compat vllm` on a real daemon: the series routers built for vLLM scrape
(vllm:num_requests_waiting / _running, vllm:kv_cache_usage_perc, vllm:cache_config_info),
with vLLM's labels, following the engine as requests queue and run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.daemon import Daemon, running_daemon

TINY = "dummy:tiny"
KV_CACHE_TOKENS = 4096
BLOCK_SIZE = 16
GAUGES = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    # One request at a time, so a second one waits and the waiting gauge has something to show.
    with running_daemon(model=TINY, kv_cache_tokens=KV_CACHE_TOKENS, max_num_seqs=1,
                        extra_args=("--metrics-compat", "vllm",
                                    "--block-size", str(BLOCK_SIZE))) as running:
        yield running


def families(daemon: Daemon) -> dict:
    response = httpx.get(f"{daemon.base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def only_sample(family):
    assert len(family.samples) == 1, family.samples
    return family.samples[0]


def test_vllm_gauges_carry_model_name_and_engine_labels(daemon):
    scraped = families(daemon)
    for name in GAUGES:
        assert scraped[name].type == "gauge", name
        sample = only_sample(scraped[name])
        assert sample.labels == {"model_name": TINY, "engine": "0"}, name
        assert sample.value == 0, name  # idle


def test_cache_config_info_names_block_size_and_block_count(daemon):
    family = families(daemon)["vllm:cache_config_info"]
    assert family.type == "gauge"
    sample = only_sample(family)
    assert sample.value == 1
    assert sample.labels["block_size"] == str(BLOCK_SIZE)
    assert sample.labels["num_gpu_blocks"] == str(KV_CACHE_TOKENS // BLOCK_SIZE)
    assert sample.labels["engine"] == "0"
    assert sample.labels["enable_prefix_caching"] == "True"
    assert int(sample.labels["kv_cache_size_tokens"]) == KV_CACHE_TOKENS


def test_vllm_gauges_follow_a_running_and_a_waiting_request(daemon):
    body = {"prompt": "Hi", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as http, ExitStack() as streams:
        first = streams.enter_context(
            http.stream("POST", f"{daemon.base_url}/v1/completions", json=body))
        events = first.iter_bytes()  # kept: dropping the iterator closes the stream
        next(events)  # it runs; with --max-num-seqs 1 the next one has to wait
        second = streams.enter_context(
            http.stream("POST", f"{daemon.base_url}/v1/completions", json=body))
        assert second.status_code == 200
        busy = families(daemon)
    assert only_sample(busy["vllm:num_requests_running"]).value == 1
    assert only_sample(busy["vllm:num_requests_waiting"]).value == 1
    usage = only_sample(busy["vllm:kv_cache_usage_perc"]).value
    assert 0 < usage < 1  # a fraction, as vLLM's, not a percentage
    assert usage == only_sample(busy["inflightd:kv_cache_usage_perc"]).value
