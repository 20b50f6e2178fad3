"""The `inflightd` command.

`inflightd serve [MODEL]` runs the OpenAI-compatible daemon. Other subcommands live in their
own packages and join through a `register(subparsers)` function that sets `func(args) -> int`
on its parser; they are imported only when named (or for --help), so `serve` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from server.config import (DEFAULT_MODEL, KV_ADMISSIONS, KV_CACHE_DTYPES, QUANTIZATIONS,
                           CacheConfig, KVEventsConfig, ModelConfig, SchedulerConfig)
from server.api.settings import API_KEY_ENV, DEFAULT_MAX_REQUEST_BODY_BYTES, METRICS_COMPATS
from server.api.tool_calls.registry import TOOL_CALL_PARSERS
from server.logging_setup import configure_logging

# subcommand -> module with register(subparsers)
PLUGIN_COMMANDS = {"bench": "server.bench.cli", "build": "server.engine.loading.build",
                   "quantize": "server.quantize.cli"}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="run the OpenAI-compatible daemon",
        description="Serve a model over an OpenAI-compatible HTTP API.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    serve.add_argument("model_dir", nargs="?", metavar="MODEL",
                       help="a model or engine directory (same as --model)")
    serve.add_argument("--model", default=DEFAULT_MODEL,
                       help="HF directory, engine directory, dummy:<shape>, or the default")
    serve.add_argument("--served-model-name", action="append", default=None, metavar="NAME",
                       help="a name clients use for the model (default: --model); repeat it "
                            "for aliases, e.g. ensemble and tensorrt_llm for Triton clients")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=None,
                       help="also serve KServe v2 / Triton gRPC on this port (default: off)")
    serve.add_argument("--max-num-seqs", type=int, default=SchedulerConfig.max_num_seqs,
                       help="most requests in a batch")
    serve.add_argument("--max-num-batched-tokens", type=int,
                       default=SchedulerConfig.max_num_batched_tokens,
                       help="most tokens computed in one step")
    serve.add_argument("--max-prefill-tokens", type=int, default=None,
                       help="most prompt tokens one step computes beside its decodes (which "
                            "always go first): lower gives steadier inter-token latency, "
                            "higher a shorter time to first token (default: "
                            "--max-num-batched-tokens); see docs/scheduling.md")
    serve.add_argument("--max-model-len", type=int, default=None,
                       help="context window (default: the model's, capped by the scheduler)")
    serve.add_argument("--policy", choices=("fcfs", "priority"), default="fcfs")
    serve.add_argument("--kv-admission", choices=KV_ADMISSIONS,
                       default=SchedulerConfig.kv_admission,
                       help="guaranteed: admit a request only while every running one can "
                            "reach its max_tokens, so none is preempted (TensorRT-LLM's "
                            "GUARANTEED_NO_EVICT); optimistic: admit while the next chunk "
                            "fits and preempt when the KV cache runs out")
    serve.add_argument("--block-size", type=int, default=CacheConfig.block_size)
    size = serve.add_mutually_exclusive_group()
    size.add_argument("--kv-cache-tokens", type=int,
                      help="KV cache size in tokens (default on CPU: 32768)")
    size.add_argument("--memory-fraction", type=float,
                      help="share of free GPU memory for the KV cache")
    serve.add_argument("--disable-prefix-caching", action="store_true")
    serve.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                       help="fp8: K and V stored in e4m3, half the bytes of a 16-bit cache "
                            "(twice the tokens, less to read per decode step); auto: the "
                            "model's dtype")
    serve.add_argument("--dtype", default="auto",
                       choices=("auto", "float32", "float16", "bfloat16"))
    serve.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    serve.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    serve.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                       help="split the model over N ranks, one process each (default 1)")
    serve.add_argument("--nnodes", type=int, default=1,
                       help="nodes the ranks are spread over, the same number on each")
    serve.add_argument("--node-rank", type=int, default=0,
                       help="this node's index (0: the node that serves HTTP and runs rank 0)")
    serve.add_argument("--master-addr", default="127.0.0.1",
                       help="node 0's address, where the ranks meet")
    serve.add_argument("--master-port", type=int, default=None,
                       help="node 0's port for the ranks to meet (needed with --nnodes > 1)")
    serve.add_argument("--headless", action="store_true",
                       help="run only this node's ranks (--node-rank > 0), no HTTP")
    serve.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                       help="fp8: linear layers in FP8 with per-channel weight and per-token "
                            "activation scales; int8_wo: weights in int8, one scale per "
                            "channel; int4_wo: weights in 4 bits, groups of 128 (64 or 32 "
                            "where 128 does not divide a layer); w8a8: int8 weights per channel "
                            "and int8 activations per token, without SmoothQuant's smoothing "
                            "(inflightd quantize --method w8a8_sq calibrates it); all quantized "
                            "at load "
                            "(default: none, what the engine directory was built with, or "
                            "what a GPTQ/AWQ/compressed-tensors checkpoint holds)")
    serve.add_argument("--async-scheduling", choices=("auto", "on", "off"), default="auto",
                       help="schedule the next step while the device runs this one "
                            "(auto: on with a GPU)")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--health-timeout", type=float, default=5.0,
                       help="seconds the engine has to answer a /health ping")
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    serve.add_argument("--log-format", default="text", choices=("text", "json"),
                       help="json: one JSON object per line (start-up, one per request)")
    serve.add_argument("--api-key", action="append", default=None, metavar="KEY",
                       help="require 'Authorization: Bearer KEY' (repeat for several keys; "
                            "also INFLIGHTD_API_KEY); /health and /ready stay open")
    serve.add_argument("--metrics-auth", action="store_true",
                       help="/metrics needs an API key too")
    serve.add_argument("--metrics-compat", choices=METRICS_COMPATS, default=None,
                       help="vllm: /metrics also serves vllm:num_requests_waiting, "
                            "vllm:num_requests_running, vllm:kv_cache_usage_perc and "
                            "vllm:cache_config_info, the series routers built for vLLM read")
    serve.add_argument("--kv-events-endpoint", metavar="ADDRESS", default=None,
                       help="publish KV-cache events in vLLM's format on this ZeroMQ PUB "
                            "address (tcp://*:5557 binds; tcp://HOST:PORT connects to a "
                            "subscriber that binds); unset: no events")
    serve.add_argument("--kv-events-replay-endpoint", metavar="ADDRESS", default=None,
                       help="a ROUTER address (bound) that resends the buffered event "
                            "batches from a sequence number, for late subscribers")
    serve.add_argument("--kv-events-topic", default="",
                       help="the topic frame of every event message (llm-d reads "
                            "kv@POD@MODEL)")
    serve.add_argument("--max-queued-requests", type=int, default=None,
                       help="refuse new requests with 429 once this many are queued "
                            "(not yet scheduled); unset: no limit")
    serve.add_argument("--max-request-body-bytes", type=int,
                       default=DEFAULT_MAX_REQUEST_BODY_BYTES,
                       help="refuse larger request bodies with 413")
    serve.add_argument("--shutdown-timeout", type=float, default=30.0,
                       help="seconds requests in flight get to finish after SIGTERM before "
                            "they are aborted")
    serve.add_argument("--request-body-timeout", type=float, default=30.0,
                       help="seconds a request body has to arrive whole (else 408)")
    serve.add_argument("--tool-call-parser", default="hermes", choices=tuple(TOOL_CALL_PARSERS),
                       help="the format tool calls are read in with tool_choice auto: the "
                            "one the model's chat template asks for (hermes: Qwen2.5, "
                            "Hermes, and models whose template knows no tools)")
    serve.add_argument("--responses-store-max", type=int, default=1024,
                       help="most responses /v1/responses keeps in memory (store: true) for "
                            "GET, DELETE and previous_response_id; the oldest goes first")
    serve.add_argument("--responses-store-max-mb", type=float, default=256.0,
                       help="most MiB (as JSON) of stored responses and their "
                            "conversations; the oldest go first")
    serve.add_argument("--responses-store-ttl", type=float, default=3600.0,
                       help="seconds a stored response is kept")
    serve.add_argument("--header-timeout", type=float, default=10.0,
                       help="seconds a request's headers have to arrive whole (from the "
                            "connection opening or the previous response), else the "
                            "connection is closed")
    serve.add_argument("--keep-alive-timeout", type=float, default=5.0,
                       help="seconds an idle keep-alive connection stays open")
    serve.add_argument("--max-connections", type=int, default=None,
                       help="most open client connections; past it a new one is closed at "
                            "once (unset: no cap), per api process")
    serve.add_argument("--api-server-count", type=int, default=1, metavar="N",
                       help="N api processes serve the port (SO_REUSEPORT), sharing the one "
                            "engine process; for more streams than one process keeps up with")
    serve.set_defaults(func=run_serve)


def api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """--api-key values, plus INFLIGHTD_API_KEY if set."""
    keys = list(args.api_key or [])
    from_env = os.environ.get(API_KEY_ENV)
    if from_env:
        keys.append(from_env)
    return tuple(dict.fromkeys(keys))


def serve_config(args: argparse.Namespace):
    """The ServeConfig for parsed `serve` arguments; raises ValueError for bad values."""
    from server.api.settings import ApiSettings, ServeConfig

    model = args.model_dir or args.model
    scheduler_kwargs = {} if args.max_model_len is None else {"max_model_len": args.max_model_len}
    return ServeConfig(
        model=ModelConfig(model=model, dtype=args.dtype, device=args.device,
                          max_model_len=args.max_model_len, seed=args.seed,
                          enforce_eager=args.enforce_eager, quantization=args.quantization,
                          tensor_parallel_size=args.tensor_parallel_size, nnodes=args.nnodes,
                          node_rank=args.node_rank, master_addr=args.master_addr,
                          master_port=args.master_port),
        cache=CacheConfig(block_size=args.block_size, kv_cache_tokens=args.kv_cache_tokens,
                          memory_fraction=args.memory_fraction,
                          enable_prefix_caching=not args.disable_prefix_caching,
                          kv_cache_dtype=args.kv_cache_dtype),
        scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs,
                                  max_num_batched_tokens=args.max_num_batched_tokens,
                                  max_prefill_tokens=args.max_prefill_tokens,
                                  policy=args.policy, kv_admission=args.kv_admission,
                                  async_scheduling={"auto": None, "on": True,
                                                    "off": False}[args.async_scheduling],
                                  **scheduler_kwargs),
        api=ApiSettings(host=args.host, port=args.port,
                        served_model_names=tuple(args.served_model_name or ()),
                        grpc_port=args.grpc_port,
                        health_timeout_s=args.health_timeout, log_level=args.log_level,
                        log_format=args.log_format, api_keys=api_keys(args),
                        metrics_auth=args.metrics_auth, metrics_compat=args.metrics_compat,
                        max_queued_requests=args.max_queued_requests,
                        max_request_body_bytes=args.max_request_body_bytes,
                        shutdown_timeout_s=args.shutdown_timeout,
                        request_body_timeout_s=args.request_body_timeout,
                        tool_call_parser=args.tool_call_parser,
                        responses_store_max=args.responses_store_max,
                        responses_store_max_mb=args.responses_store_max_mb,
                        responses_store_ttl_s=args.responses_store_ttl,
                        header_timeout_s=args.header_timeout,
                        keep_alive_timeout_s=args.keep_alive_timeout,
                        max_connections=args.max_connections,
                        api_server_count=args.api_server_count),
        kv_events=kv_events_config(args))


def kv_events_config(args: argparse.Namespace) -> KVEventsConfig | None:
    """None without --kv-events-endpoint (the replay address and topic need it)."""
    if args.kv_events_endpoint is None:
        if args.kv_events_replay_endpoint is not None:
            raise ValueError("--kv-events-replay-endpoint needs --kv-events-endpoint")
        return None
    return KVEventsConfig(endpoint=args.kv_events_endpoint,
                          replay_endpoint=args.kv_events_replay_endpoint,
                          topic=args.kv_events_topic)


def run_serve(args: argparse.Namespace) -> int:
    try:
        config = serve_config(args)
        if args.headless != (config.model.node_rank > 0):
            raise ValueError("--headless is for the nodes other than node 0 (--node-rank > 0), "
                             "and those run headless")
    except ValueError as exc:
        print(f"inflightd serve: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(level=args.log_level, log_format=args.log_format)
    if args.headless:
        return run_headless_node(config.model)
    if config.api.api_server_count > 1:
        from server.api.scale_out import run_api_servers

        return run_api_servers(config)
    from server.api.app import create_app
    from server.api.http_server import run_app

    return run_app(create_app(config), config)


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inflightd",
                                     description="OpenAI-compatible LLM serving daemon")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_serve_parser(subparsers)
    wanted = [name for name in PLUGIN_COMMANDS if name in argv]
    if not wanted and not any(a in ("-h", "--help") for a in argv[:1]) and argv:
        return parser
    for name in wanted or PLUGIN_COMMANDS:
        register = _plugin_register(PLUGIN_COMMANDS[name])
        if register is not None:
            register(subparsers)
    return parser


def _plugin_register(module_name: str):
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            return None  # that subcommand is not part of this install
        raise
    return getattr(module, "register", None)


def run_headless_node(model_config: ModelConfig) -> int:
    """A node other than 0: its tensor-parallel ranks, joined to node 0's engine."""
    from server.engine.gpu.ops_choice import resolve_device
    from server.engine.service.workers import placement_of, run_headless

    return run_headless(placement_of(model_config),
                        device_type=resolve_device(model_config.device).type)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
