"""How one chat request uses its tools: what the chat template sees, which grammar (if any)
forces the calls, and which parser reads them back from the output.

    tool_choice   grammar                                    output read by
    none          -                                          (plain text; tools not shown)
    auto          - (or, with a strict tool, a structural    the --tool-call-parser format
                  tag: free text or valid calls)
    required      a JSON array of {"name", "parameters"}     RequiredCallsParser
    named f       f's parameters schema                      NamedCallParser(f)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from server.api.errors import invalid_param
from server.api.protocol_structured import ChatTool, NamedToolChoice, ToolFields
from server.api.structured import RequestGrammar, grammar_spec
from server.api.tool_calls.base import ToolCallParser
from server.api.tool_calls.forced import NamedCallParser, RequiredCallsParser
from server.api.tool_calls.registry import make_parser
from server.structured_output.schema_check import GrammarSpecError
from server.structured_output.spec import GrammarSpec

ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class ToolPlan:
    mode: str  # "none", "auto", "required" or "named"
    template_tools: list[dict[str, Any]] | None  # what the chat template is given
    grammar: RequestGrammar | None
    parser: ToolCallParser | None  # None: the output is plain text
    calls_finish_reason: str  # a choice that made calls ends with this ("stop": named)
    parallel: bool  # False: at most one call per choice


NO_TOOLS = ToolPlan(mode="none", template_tools=None, grammar=None, parser=None,
                    calls_finish_reason="stop", parallel=True)


def plan_tools(body: ToolFields, *, parser_name: str) -> ToolPlan:
    tools = body.tools or []
    choice = body.tool_choice or ("auto" if tools else "none")
    if not tools or choice == "none":
        return NO_TOOLS
    template_tools = [tool.model_dump(exclude_none=True) for tool in tools]
    parallel = body.parallel_tool_calls
    if isinstance(choice, NamedToolChoice):
        index, tool = next((i, t) for i, t in enumerate(tools)
                           if t.function.name == choice.function.name)
        grammar = _grammar("json_schema", _parameters(tool),
                           f"tools.{index}.function.parameters")
        return ToolPlan("named", template_tools, grammar, NamedCallParser(tool.function.name),
                        "stop", parallel)
    if choice == "required":
        for index, tool in enumerate(tools):  # each schema's own errors name its tool
            _grammar("json_schema", _parameters(tool), f"tools.{index}.function.parameters")
        grammar = _grammar("json_schema", required_calls_schema(tools, parallel=parallel),
                           "tools")
        return ToolPlan("required", template_tools, grammar, RequiredCallsParser(),
                        "tool_calls", parallel)
    parser = make_parser(parser_name)
    return ToolPlan("auto", template_tools, _strict_auto_grammar(tools, parser, parallel),
                    parser, "tool_calls", parallel)


def required_calls_schema(tools: list[ChatTool], *, parallel: bool) -> dict[str, Any]:
    """At least one call (exactly one without parallel calls), each a known function with
    arguments that follow its parameters."""
    calls = [{"type": "object",
              "properties": {"name": {"const": tool.function.name},
                             "parameters": _parameters(tool)},
              "required": ["name", "parameters"], "additionalProperties": False}
             for tool in tools]
    schema: dict[str, Any] = {"type": "array", "minItems": 1,
                              "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def _strict_auto_grammar(tools: list[ChatTool], parser: ToolCallParser,
                         parallel: bool) -> RequestGrammar | None:
    """With a strict tool, auto is constrained too: free text, or calls in the parser's
    format whose arguments follow their schemas (non-strict tools: any object)."""
    call_format = parser.call_format()
    if call_format is None or not any(tool.function.strict for tool in tools):
        return None
    tags = []
    for index, tool in enumerate(tools):
        schema = _parameters(tool) if tool.function.strict else ANY_OBJECT
        checked = _grammar("json_schema", schema, f"tools.{index}.function.parameters")
        tags.append({"begin": call_format.begin(tool.function.name),
                     "content": {"type": "json_schema",
                                 "json_schema": json.loads(checked.spec.value)},
                     "end": call_format.end})
    tag = {"type": "structural_tag",
           "format": {"type": "triggered_tags", "triggers": [call_format.trigger],
                      "tags": tags, "at_least_one": False, "stop_after_first": not parallel}}
    return RequestGrammar(GrammarSpec("structural_tag", json.dumps(tag, ensure_ascii=False)),
                          "tools")


def _parameters(tool: ChatTool) -> dict[str, Any]:
    return tool.function.parameters or ANY_OBJECT


def _grammar(kind: str, value: Any, param: str) -> RequestGrammar:
    try:
        return RequestGrammar(grammar_spec(kind, value, param=param), param)
    except GrammarSpecError as exc:
        raise invalid_param(exc.param, str(exc), code="invalid_grammar") from exc
