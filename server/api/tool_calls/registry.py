"""The `--tool-call-parser` names and the parser each one selects."""

from __future__ import annotations

from server.api.tool_calls.base import ToolCallParser
from server.api.tool_calls.hermes import HermesToolCallParser
from server.api.tool_calls.llama3_json import Llama3JsonToolCallParser
from server.api.tool_calls.mistral import MistralToolCallParser
from server.api.tool_calls.pythonic import PythonicToolCallParser

TOOL_CALL_PARSERS: dict[str, type[ToolCallParser]] = {
    "hermes": HermesToolCallParser,
    "llama3_json": Llama3JsonToolCallParser,
    "mistral": MistralToolCallParser,
    "pythonic": PythonicToolCallParser,
}


def make_parser(name: str) -> ToolCallParser:
    """A parser for the format called `name`; ValueError naming the valid ones otherwise."""
    parser_class = TOOL_CALL_PARSERS.get(name)
    if parser_class is None:
        valid = ", ".join(sorted(TOOL_CALL_PARSERS))
        raise ValueError(f"unknown tool-call parser {name!r}; valid names: {valid}")
    return parser_class()
