"""`--metrics-compat vllm`: the engine gauges again under vLLM's names, for routers that read them.

Routers that pick a replica from its Prometheus metrics (the Gateway API Inference
Extension's endpoint picker, llm-d's scorers, vLLM's production-stack router) look for the
series a vLLM server exposes. With the flag set, /metrics adds, beside the `inflightd:`
series:

    vllm:num_requests_waiting{model_name, engine}   requests waiting for a batch slot
    vllm:num_requests_running{model_name, engine}   requests in the running batch
    vllm:kv_cache_usage_perc{model_name, engine}    KV blocks in use, 0..1 (1 = full)
    vllm:cache_config_info{engine, block_size, num_gpu_blocks, ...} = 1

labelled as vLLM's V1 engine labels them: the gauges carry model_name (the served name) and
engine (the engine's index, "0": one engine a daemon); the info gauge carries the cache
settings as string labels and engine, and no model_name (vLLM's has none either).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.engine.service.info import EngineInfo, EngineStats

ENGINE_INDEX = "0"  # vLLM numbers its engines (data-parallel ranks); a daemon has one


class VllmCompatCollector(Collector):
    """vLLM-named samples from the engine's latest stats and its start-up info; nothing
    before the engine has answered (as the `inflightd:` gauges)."""

    def __init__(self, *, model_name: str, prefix_caching: bool,
                 latest_stats: Callable[[], EngineStats | None],
                 engine_info: Callable[[], EngineInfo | None]) -> None:
        self._model_name = model_name
        self._prefix_caching = prefix_caching
        self._latest_stats = latest_stats
        self._engine_info = engine_info

    def collect(self) -> Iterator[Metric]:
        stats = self._latest_stats()
        if stats is not None:
            yield from self._gauges(stats)
        info = self._engine_info()
        if info is not None:
            yield self._cache_config_info(info)

    def _gauges(self, stats: EngineStats) -> Iterator[Metric]:
        labels = ["model_name", "engine"]
        values = [self._model_name, ENGINE_INDEX]
        for name, documentation, value in (
                ("vllm:num_requests_waiting", "Requests waiting for a batch slot.",
                 stats.num_waiting),
                ("vllm:num_requests_running", "Requests in the running batch.",
                 stats.num_running),
                ("vllm:kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).",
                 stats.kv_cache_usage)):
            family = GaugeMetricFamily(name, documentation, labels=labels)
            family.add_metric(values, value)
            yield family

    def _cache_config_info(self, info: EngineInfo) -> Metric:
        """An info-style gauge (always 1) whose labels carry the KV cache's settings."""
        settings = {
            "engine": ENGINE_INDEX,
            "block_size": str(info.block_size),
            "num_gpu_blocks": str(info.num_kv_blocks),
            "cache_dtype": info.kv_cache_dtype or info.dtype,
            "enable_prefix_caching": str(self._prefix_caching),
            "kv_cache_size_tokens": str(info.kv_cache_tokens),
        }
        family = GaugeMetricFamily("vllm:cache_config_info",
                                   "The KV cache's settings, as labels (the value is always 1).",
                                   labels=list(settings))
        family.add_metric(list(settings.values()), 1.0)
        return family
