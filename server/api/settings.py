"""What `inflightd serve` runs with: the engine's settings plus the api process's own."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.config import CacheConfig, ModelConfig, SchedulerConfig


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None  # None: the --model argument
    health_timeout_s: float = 5.0  # /health fails if the engine does not answer in this time
    engine_startup_timeout_s: float = 1800.0
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {self.port}")
        if self.health_timeout_s <= 0:
            raise ValueError(f"health timeout must be > 0, got {self.health_timeout_s}")


@dataclass(frozen=True)
class ServeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    api: ApiSettings = field(default_factory=ApiSettings)

    @property
    def served_model_name(self) -> str:
        return self.api.served_model_name or self.model.model
