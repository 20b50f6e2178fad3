"""What `inflightd serve` runs with: the engine's settings plus the api process's own."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.config import CacheConfig, KVEventsConfig, ModelConfig, SchedulerConfig
from server.logging_setup import LOG_FORMATS

DEFAULT_MAX_REQUEST_BODY_BYTES = 4 * 1024 * 1024
API_KEY_ENV = "INFLIGHTD_API_KEY"  # a key given in the environment, beside --api-key
METRICS_COMPATS = ("vllm",)  # --metrics-compat values (server/api/metrics_compat.py)
MAX_API_SERVERS = 64


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    # The names clients may send as the model (OpenAI's `model`, the /v2/models/{name} of
    # Triton and KServe); the first is the one answers carry. None: the --model argument.
    served_model_names: tuple[str, ...] = ()
    grpc_port: int | None = None  # KServe v2 gRPC (server/triton/grpc_server.py); None: off
    health_timeout_s: float = 5.0  # /health fails if the engine does not answer in this time
    engine_startup_timeout_s: float = 1800.0
    log_level: str = "info"
    log_format: str = "text"  # or "json": one JSON object per line
    # Bearer keys; none: no authentication. Kept out of repr so they never reach a log.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    metrics_auth: bool = False  # /metrics needs a key too (when keys are set)
    max_queued_requests: int | None = None  # None: no limit (no 429s)
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    shutdown_timeout_s: float = 30.0  # how long in-flight requests get after SIGTERM
    # A request body must arrive whole within this; one that trickles in or stalls would
    # otherwise hold its connection and task for as long as its client likes (408).
    request_body_timeout_s: float = 30.0
    # After the engine dies the daemon keeps answering (503s, errors for requests in
    # flight) this long, then exits non-zero so that its supervisor restarts it.
    engine_failure_exit_delay_s: float = 5.0
    # How tool calls are read from what the model writes with tool_choice "auto" (the
    # format its chat template asks for); "hermes" is also the format of the fallback that
    # renders tools for templates that know nothing of them.
    tool_call_parser: str = "hermes"
    # /v1/responses with store: true keeps each response (and its conversation, for
    # previous_response_id) in memory: at most this many and this many MiB (as JSON), none
    # older than the age limit.
    responses_store_max: int = 1024
    responses_store_max_mb: float = 256.0
    responses_store_ttl_s: float = 3600.0
    # Connections (server/api/connections.py): a request's headers must arrive whole within
    # header_timeout_s of the connection opening or the previous response ending; an idle
    # keep-alive connection closes after keep_alive_timeout_s; past max_connections open
    # ones, a new connection is closed at once (None: no cap).
    header_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 5.0
    max_connections: int | None = None
    # "vllm": /metrics also serves the engine gauges under vLLM's names, for routers
    # (server/api/metrics_compat.py). None: only the inflightd: names.
    metrics_compat: str | None = None
    # api processes serving the port, sharing one engine process (server/api/scale_out.py)
    api_server_count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {self.port}")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise ValueError(f"--grpc-port must be in 0..65535, got {self.grpc_port}")
        if any(not name.strip() for name in self.served_model_names):
            raise ValueError("--served-model-name must not be empty")
        if self.health_timeout_s <= 0:
            raise ValueError(f"health timeout must be > 0, got {self.health_timeout_s}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, "
                             f"got {self.log_format!r}")
        if any(not key.strip() for key in self.api_keys):
            raise ValueError("an API key (--api-key or INFLIGHTD_API_KEY) must not be empty")
        if self.max_queued_requests is not None and self.max_queued_requests < 1:
            raise ValueError(f"--max-queued-requests must be >= 1 (leave it out for no "
                             f"limit), got {self.max_queued_requests}")
        if self.max_request_body_bytes < 1:
            raise ValueError(f"--max-request-body-bytes must be >= 1, "
                             f"got {self.max_request_body_bytes}")
        if self.request_body_timeout_s <= 0:
            raise ValueError(f"--request-body-timeout must be > 0, "
                             f"got {self.request_body_timeout_s}")
        if self.shutdown_timeout_s < 0:
            raise ValueError(f"--shutdown-timeout must be >= 0, got {self.shutdown_timeout_s}")
        from server.api.tool_calls.registry import TOOL_CALL_PARSERS

        if self.tool_call_parser not in TOOL_CALL_PARSERS:
            raise ValueError(f"--tool-call-parser must be one of "
                             f"{', '.join(TOOL_CALL_PARSERS)}, got {self.tool_call_parser!r}")
        if (self.responses_store_max < 0 or self.responses_store_max_mb < 0
                or self.responses_store_ttl_s <= 0):
            raise ValueError("--responses-store-max and --responses-store-max-mb must be >= 0 "
                             "and --responses-store-ttl > 0, got "
                             f"{self.responses_store_max}, {self.responses_store_max_mb} and "
                             f"{self.responses_store_ttl_s}")
        if self.header_timeout_s <= 0 or self.keep_alive_timeout_s <= 0:
            raise ValueError("--header-timeout and --keep-alive-timeout must be > 0, got "
                             f"{self.header_timeout_s} and {self.keep_alive_timeout_s}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"--max-connections must be >= 1 (leave it out for no cap), "
                             f"got {self.max_connections}")
        if self.metrics_compat not in (None, *METRICS_COMPATS):
            raise ValueError(f"--metrics-compat must be one of {', '.join(METRICS_COMPATS)} "
                             f"(or left out), got {self.metrics_compat!r}")
        if not 1 <= self.api_server_count <= MAX_API_SERVERS:
            raise ValueError(f"--api-server-count must be in 1..{MAX_API_SERVERS}, "
                             f"got {self.api_server_count}")
        if self.engine_failure_exit_delay_s < 0:
            raise ValueError("the exit delay after an engine failure must be >= 0, "
                             f"got {self.engine_failure_exit_delay_s}")


@dataclass(frozen=True)
class ServeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    api: ApiSettings = field(default_factory=ApiSettings)
    kv_events: KVEventsConfig | None = None  # None: no KV-event publishing

    @property
    def served_model_name(self) -> str:
        return self.served_model_names[0]

    @property
    def served_model_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.api.served_model_names)) or (self.model.model,)
