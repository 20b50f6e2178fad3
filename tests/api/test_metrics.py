"""GET /metrics on a real daemon: promtool's checks, the names dashboards built for vLLM
use (prefix `inflightd:`, label model_name), figures that move with the requests served,
and a real Prometheus server scraping the daemon and answering a query."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.daemon import Daemon, free_port, running_daemon
from tests.api.parent_bound import bound_to_this_process

TINY = "dummy:tiny"
API_KEY = "metrics-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROMETHEUS_SETUP = "install Debian's prometheus package (scripts/setup-system.sh does)"
EXPECTED = {
    "inflightd:num_requests_running": "gauge",
    "inflightd:num_requests_waiting": "gauge",
    "inflightd:kv_cache_usage_perc": "gauge",
    "inflightd:prefix_cache_queries": "counter",
    "inflightd:prefix_cache_hits": "counter",
    "inflightd:num_preemptions": "counter",
    "inflightd:prompt_tokens": "counter",
    "inflightd:generation_tokens": "counter",
    "inflightd:request_success": "counter",
    "inflightd:time_to_first_token_seconds": "histogram",
    "inflightd:inter_token_latency_seconds": "histogram",
    "inflightd:e2e_request_latency_seconds": "histogram",
    "inflightd:request_queue_time_seconds": "histogram",
    "inflightd:request_prefill_time_seconds": "histogram",
    "inflightd:request_decode_time_seconds": "histogram",
    "inflightd:iteration_tokens": "histogram",
}
HISTOGRAMS_PER_REQUEST = ("inflightd:time_to_first_token_seconds",
                          "inflightd:e2e_request_latency_seconds",
                          "inflightd:request_queue_time_seconds",
                          "inflightd:request_prefill_time_seconds",
                          "inflightd:request_decode_time_seconds")
# promtool flags every name with a colon (it reserves them for recording rules), vLLM's own
# included; that naming is what the dashboards query, so it is the one problem allowed.
COLON_RULE = "metric names should not contain ':'"


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    # With an API key set, /metrics stays open (no --metrics-auth): scrapers need no key.
    with running_daemon(model=TINY, kv_cache_tokens=4096,
                        extra_args=("--api-key", API_KEY)) as running:
        yield running


def scrape(daemon: Daemon) -> str:
    response = httpx.get(f"{daemon.base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text_or_samples, name: str, **labels: str) -> float:
    table = samples(text_or_samples) if isinstance(text_or_samples, str) else text_or_samples
    return table[(name, frozenset({"model_name": TINY, **labels}.items()))]


def complete(daemon: Daemon, **body) -> dict:
    response = httpx.post(f"{daemon.base_url}/v1/completions", headers=AUTH, timeout=60,
                          json={"ignore_eos": True, "temperature": 0, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_metrics_pass_promtool_with_vllm_names_and_a_model_label(daemon):
    complete(daemon, prompt="Hello", max_tokens=3)
    text = scrape(daemon)
    promtool = shutil.which("promtool")
    assert promtool, f"promtool is missing: {PROMETHEUS_SETUP}"
    result = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                            capture_output=True, timeout=60)
    # 0: clean, 3: lint problems only; anything else means it could not parse the text.
    assert result.returncode in (0, 3), result.stderr
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and not line.endswith(COLON_RULE)]
    assert problems == []
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {name: families[name].type for name in EXPECTED if name in families} == EXPECTED
    for family in families.values():
        for sample in family.samples:
            assert sample.labels.get("model_name") == TINY, sample
    assert {s.labels["finished_reason"] for s in families["inflightd:request_success"].samples
            if s.name.endswith("_total")} == {"stop", "length", "abort"}


def test_serving_requests_moves_the_counters_and_histograms(daemon):
    before = samples(scrape(daemon))
    prompt = list(range(100, 140))  # 40 tokens: two full blocks of 16 to share
    first = complete(daemon, prompt=prompt, max_tokens=8)
    second = complete(daemon, prompt=prompt, max_tokens=8)
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 32
    after = samples(scrape(daemon))

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("inflightd:generation_tokens_total") == 16
    assert grew("inflightd:prompt_tokens_total") == 80
    assert grew("inflightd:prefix_cache_queries_total") >= 64  # the full blocks, twice
    assert grew("inflightd:prefix_cache_hits_total") == 32
    assert grew("inflightd:request_success_total", finished_reason="length") == 2
    assert grew("inflightd:request_success_total", finished_reason="stop") == 0
    for name in HISTOGRAMS_PER_REQUEST:
        assert grew(f"{name}_count") == 2, name
        assert grew(f"{name}_sum") >= 0, name
    e2e = grew("inflightd:e2e_request_latency_seconds_sum")
    ttft = grew("inflightd:time_to_first_token_seconds_sum")
    assert 0 < ttft < e2e < 30
    # 7 gaps between 8 tokens, per request
    assert grew("inflightd:inter_token_latency_seconds_count") == 14
    # every step of both: 40 + 8 (first prefill, then decodes) and 8 + 8 (cached prefix)
    assert grew("inflightd:iteration_tokens_sum") == (40 + 7) + (8 + 7)
    assert grew("inflightd:iteration_tokens_count") == 16
    assert first["usage"]["completion_tokens"] == 8


def test_gauges_show_a_running_request_and_its_kv_blocks(daemon):
    idle = scrape(daemon)
    assert value(idle, "inflightd:num_requests_running") == 0
    assert value(idle, "inflightd:kv_cache_usage_perc") == 0
    body = {"prompt": "Hi", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{daemon.base_url}/v1/completions", json=body,
                         headers=AUTH) as response:
            assert response.status_code == 200
            events = response.iter_bytes()  # kept: dropping the iterator closes the stream
            next(events)  # a first token: it runs (leaving the block aborts it)
            busy = scrape(daemon)
    assert value(busy, "inflightd:num_requests_running") == 1
    assert value(busy, "inflightd:num_requests_waiting") == 0
    assert 0 < value(busy, "inflightd:kv_cache_usage_perc") <= 1


def test_energy_metrics_are_absent_without_a_gpu(daemon):
    names = {family.name for family in text_string_to_metric_families(scrape(daemon))}
    assert "inflightd:generation_tokens" in names
    assert not {"inflightd:energy_joules", "inflightd:output_tokens_per_joule"} & names


def test_vllm_named_series_are_absent_without_metrics_compat(daemon):
    names = {family.name for family in text_string_to_metric_families(scrape(daemon))}
    assert "inflightd:num_requests_running" in names
    assert not [name for name in names if name.startswith("vllm:")]


@contextmanager
def prometheus_scraping(daemon: Daemon) -> Iterator[str]:
    """A real Prometheus on loopback scraping the daemon every second; killed on exit."""
    binary = shutil.which("prometheus")
    assert binary, f"prometheus is missing: {PROMETHEUS_SETUP}"
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="inflightd-prometheus-") as work:
        config = Path(work) / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: inflightd\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{daemon.port}']\n")
        log = open(Path(work) / "prometheus.log", "wb")
        process = subprocess.Popen(
            bound_to_this_process([binary, f"--config.file={config}",
                                   f"--storage.tsdb.path={work}/data",
                                   f"--web.listen-address=127.0.0.1:{port}"]),
            stdout=log, stderr=subprocess.STDOUT, cwd=work)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while not _answers(f"{url}/-/ready"):
                assert process.poll() is None, (Path(work) / "prometheus.log").read_text()
                assert time.monotonic() < deadline, "Prometheus did not get ready"
                time.sleep(0.2)
            yield url
        finally:
            process.kill()
            process.wait(timeout=30)
            log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def query(prometheus_url: str, promql: str) -> list[dict]:
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql},
                         timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "success"
    return response.json()["data"]["result"]


def test_a_real_prometheus_scrapes_the_daemon_and_answers_queries(daemon):
    with prometheus_scraping(daemon) as prometheus:
        complete(daemon, prompt="Hello", max_tokens=4)
        served = value(scrape(daemon), "inflightd:generation_tokens_total")
        deadline = time.monotonic() + 30
        while True:
            result = query(prometheus, 'inflightd:generation_tokens_total{model_name="%s"}'
                           % TINY)
            if result and float(result[0]["value"][1]) >= served:
                break
            assert time.monotonic() < deadline, f"Prometheus never saw the tokens: {result}"
            time.sleep(0.5)
        assert float(result[0]["value"][1]) > 0
        # the autoscaler's series, as prometheus-adapter would ask for it
        waiting = query(prometheus, "sum(inflightd:num_requests_waiting) by (model_name)")
        assert [r["metric"] for r in waiting] == [{"model_name": TINY}]
        quantile = query(prometheus, "histogram_quantile(0.5, sum by (le) "
                                     "(inflightd:time_to_first_token_seconds_bucket))")
        assert quantile and float(quantile[0]["value"][1]) > 0
