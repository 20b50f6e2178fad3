"""The body of POST /v1/responses (pydantic), with a 400 naming the field for everything
this server cannot do: built-in tools, images, files, background runs, conversations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from server.api.errors import invalid_param
from server.api.protocol_base import StrictModel
from server.api.protocol_structured import (FUNCTION_NAME_PATTERN, MAX_TOOLS,
                                           FunctionDefinition, JsonSchemaFormat)

# OpenAI's tool types other than "function": they run on OpenAI's side (search, a computer,
# a code sandbox, MCP servers), which a model server has no way to do.
HOSTED_TOOL_HINT = "this server runs function tools only (type \"function\")"


class FunctionToolIn(FunctionDefinition):
    """Chat's function definition, flattened into the tool as the Responses API has it."""

    type: Literal["function"]


class ToolChoiceFunctionIn(StrictModel):
    type: Literal["function"]
    name: str


class TextFormatIn(JsonSchemaFormat):
    """Chat's json_schema format with its type beside it; name only for json_schema."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=FUNCTION_NAME_PATTERN)

    @model_validator(mode="after")
    def _schema_given(self) -> "TextFormatIn":
        if self.type == "json_schema" and (self.json_schema is None or self.name is None):
            raise invalid_param("text.format", "text.format of type json_schema needs name "
                                               "and schema")
        return self


class TextIn(StrictModel):
    format: TextFormatIn | None = None


class ResponsesRequest(StrictModel):
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[dict[str, Any]] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    text: TextIn | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: Literal["disabled", "auto"] | None = None
    top_logprobs: int | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    include: list[str] | None = None

    @field_validator("parallel_tool_calls", "store", "stream", mode="before")
    @classmethod
    def _null_means_the_default(cls, value: Any, info: ValidationInfo) -> Any:
        # agent frameworks send null for settings they leave to the server
        return cls.model_fields[info.field_name].default if value is None else value

    @model_validator(mode="after")
    def _check_supported(self) -> "ResponsesRequest":
        unsupported = (("background", bool(self.background), "background responses are not "
                        "supported; leave background out and wait for the answer or stream it"),
                       ("conversation", self.conversation is not None, "conversation objects "
                        "are not supported; chain turns with previous_response_id"),
                       ("prompt", self.prompt is not None, "prompt templates are not supported; "
                        "send input and instructions"),
                       ("truncation", self.truncation == "auto", "truncation \"auto\" is not "
                        "supported: an input too long for the context window is a 400"),
                       ("top_logprobs", bool(self.top_logprobs), "logprobs are not supported "
                        "on /v1/responses; use /v1/chat/completions"),
                       ("include", bool(self.include), "include is not supported: this "
                        "server has no extra output data to include"))
        for param, refused, message in unsupported:
            if refused:
                raise invalid_param(param, message, code="unsupported_parameter")
        if isinstance(self.input, list) and not self.input and self.previous_response_id is None:
            raise invalid_param("input", "input must not be empty")
        if self.metadata is not None and len(self.metadata) > 16:
            raise invalid_param("metadata", "metadata may have at most 16 keys")
        return self

    def function_tools(self) -> list[FunctionToolIn]:
        """The tools, every one a function tool (a 400 names the first that is not)."""
        tools = []
        for index, tool in enumerate(self.tools or []):
            kind = tool.get("type")
            if kind != "function":
                raise invalid_param(f"tools.{index}.type", f"tool type {kind!r} is not "
                                                           f"supported: {HOSTED_TOOL_HINT}",
                                    code="unsupported_tool")
            tools.append(_validated(FunctionToolIn, tool, f"tools.{index}"))
        return tools

    def chat_tool_choice(self) -> str | dict[str, Any] | None:
        """tool_choice in chat's shape."""
        choice = self.tool_choice
        if choice is None or isinstance(choice, str):
            return choice
        if choice.get("type") != "function":
            raise invalid_param("tool_choice", f"tool_choice of type {choice.get('type')!r} "
                                               f"is not supported: {HOSTED_TOOL_HINT}",
                                code="unsupported_tool")
        named = _validated(ToolChoiceFunctionIn, choice, "tool_choice")
        return {"type": "function", "function": {"name": named.name}}


def _validated(model: type[StrictModel], value: dict[str, Any], param: str):
    """model.model_validate with its first error named from `param` on."""
    from pydantic import ValidationError

    from server.api.errors import from_validation_errors

    try:
        return model.model_validate(value)
    except ValidationError as exc:
        error = from_validation_errors(exc.errors())
        inner = error.param
        error.param = f"{param}.{inner}" if inner else param
        error.message = f"{param}.{error.message}" if inner else f"{param}: {error.message}"
        raise error from exc
