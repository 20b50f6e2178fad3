"""The grammar a request asks for, from whichever field it used (response_format, vLLM's
structured_outputs or guided_*), checked here before the engine sees it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from server.api.errors import invalid_param
from server.api.protocol_structured import GuidedFields
from server.structured_output.schema_check import (GrammarSpecError, check_choices,
                                                   check_ebnf, check_json_schema, check_regex)
from server.structured_output.spec import GrammarSpec


@dataclass(frozen=True)
class RequestGrammar:
    spec: GrammarSpec
    param: str  # the request field it came from, named in errors


def requested_grammar(body: GuidedFields) -> RequestGrammar | None:
    """The one grammar the body asks for, or None. Raises APIError (400) naming the field
    when a grammar is invalid, too large, or given in two fields at once."""
    found = [grammar for grammar in _candidates(body) if grammar is not None]
    if len(found) > 1:
        raise invalid_param(found[1].param, f"give one grammar: {found[0].param} and "
                                            f"{found[1].param} were both set")
    return found[0] if found else None


def _candidates(body: GuidedFields):
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        yield _checked("json_object", "", "response_format")
    elif fmt is not None and fmt.type == "json_schema":
        schema = fmt.json_schema.json_schema
        yield (_checked("json_object", "", "response_format") if schema is None
               else _checked("json_schema", schema, "response_format.json_schema.schema"))
    outputs = body.structured_outputs
    if outputs is not None:
        given = [(kind, value) for kind, value in (
            ("json_schema", outputs.json_schema), ("regex", outputs.regex),
            ("choice", outputs.choice), ("ebnf", outputs.grammar),
            ("json_object", "" if outputs.json_object else None)) if value is not None]
        if len(given) > 1:
            raise invalid_param("structured_outputs", "structured_outputs takes one of json, "
                                                      "regex, choice, grammar, json_object")
        for kind, value in given:
            yield _checked(kind, value, "structured_outputs")
    for kind, field in (("json_schema", "guided_json"), ("regex", "guided_regex"),
                        ("choice", "guided_choice"), ("ebnf", "guided_grammar")):
        value = getattr(body, field)
        if value is not None:
            yield _checked(kind, value, field)


def _checked(kind: str, value: Any, param: str) -> RequestGrammar:
    try:
        return RequestGrammar(spec=grammar_spec(kind, value, param=param), param=param)
    except GrammarSpecError as exc:
        raise invalid_param(exc.param, str(exc), code="invalid_grammar") from exc


def grammar_spec(kind: str, value: Any, *, param: str) -> GrammarSpec:
    """A checked GrammarSpec; raises GrammarSpecError."""
    if kind == "json_schema":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise GrammarSpecError(param, f"the JSON schema is not valid JSON: {exc}")
        return GrammarSpec("json_schema", check_json_schema(value, param=param))
    if kind == "regex":
        return GrammarSpec("regex", check_regex(value, param=param))
    if kind == "choice":
        return GrammarSpec("choice", json.dumps(check_choices(value, param=param),
                                                ensure_ascii=False))
    if kind == "ebnf":
        return GrammarSpec("ebnf", check_ebnf(value, param=param))
    return GrammarSpec("json_object")
