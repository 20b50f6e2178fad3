"""The base of every request body: strict types, unknown fields ignored (OpenAI's SDKs send
fields a server may not know), no NaN or infinity."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)
