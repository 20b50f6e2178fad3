"""Request fields for structured outputs and tool calling (pydantic), as OpenAI defines them,
plus the guided_* / structured_outputs fields vLLM users send."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from server.api.errors import invalid_param
from server.api.protocol_base import StrictModel

FUNCTION_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_TOOLS = 128  # OpenAI's own limit on tools per request


class JsonSchemaFormat(StrictModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False,
                              populate_by_name=True)
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    json_schema: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise invalid_param("response_format.json_schema",
                                "response_format of type json_schema needs json_schema")
        return self


class FunctionDefinition(StrictModel):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(StrictModel):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: ToolChoiceFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ToolCallFunction(StrictModel):
    name: str
    arguments: str


class ToolCallIn(StrictModel):
    """A call an earlier assistant turn made, sent back in a later request."""

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class StructuredOutputsParams(StrictModel):
    """vLLM's `structured_outputs` object: one of these."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False,
                              populate_by_name=True)
    json_schema: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


class GuidedFields(StrictModel):
    """The grammar fields shared by chat and completions."""

    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsParams | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None


class ToolFields(StrictModel):
    tools: list[ChatTool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _check_tool_choice(self) -> "ToolFields":
        choice = self.tool_choice
        if choice is None or choice == "none":
            return self
        if not self.tools:
            raise invalid_param("tool_choice", "tool_choice needs tools")
        if isinstance(choice, NamedToolChoice):
            names = [tool.function.name for tool in self.tools]
            if choice.function.name not in names:
                raise invalid_param("tool_choice", f"tool_choice names the function "
                                                   f"{choice.function.name!r}, which is not "
                                                   f"among the tools ({', '.join(names)})")
        names = [tool.function.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise invalid_param("tools", "function names must be unique")
        return self
