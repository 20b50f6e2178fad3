"""Request-side checks of grammar specs (api process): a schema, regex, choice list or EBNF
grammar that xgrammar would not honour, or would take too long to compile, is refused at once
with a GrammarSpecError naming the request field, before the engine sees it.

A schema is a promise that the output validates, so keywords xgrammar ignores are refused, not
dropped (schema_rules holds the allow-list). Times below: xgrammar 0.2.9, SmolLM2's 49k
vocabulary, the engine's options, 2 CPU cores.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from server.structured_output.compiler import MAX_JSON_WHITESPACE, choice_ebnf
from server.structured_output.schema_rules import (  # noqa: F401 (limits and lists re-exported)
    ANNOTATION_KEYWORDS, ENFORCED_FORMATS, ENFORCED_KEYWORDS, MAX_ENUM_CHARS, MAX_ENUM_VALUES,
    MAX_OPEN_OBJECT_PROPERTIES, MAX_PATTERN_REPEAT, MAX_PROPERTIES, MAX_REGEX_CHARS,
    MAX_SCHEMA_DEPTH, REFUSED_FORMATS, REFUSED_KEYWORDS, SchemaRuleError, check_regex_text,
    check_schema_rules, clean_message, kind_of, xgrammar)

# A 1.2 MB schema took 3.5 s to compile; 64 KiB holds any realistic tool or response schema.
MAX_SCHEMA_BYTES = 64 * 1024
# Raw JSON nesting, checked first: keeps json.dumps and jsonschema clear of Python's recursion
# limit on hostile input (one subschema level is at most two JSON levels).
MAX_JSON_NESTING = 4 * MAX_SCHEMA_DEPTH
# JSON objects and booleans (each may be a subschema), counted before jsonschema checks the
# schema, which costs it ~150 us a subschema: 2000 took 0.3 s, 20,000 (60 KB) 3.0 s.
MAX_SUBSCHEMAS = 2000
# guided_choice: 1000 choices of 60 characters compile in 0.14 s.
MAX_CHOICES = 1000
MAX_CHOICE_CHARS = 64 * 1024
# guided_grammar: 64 KiB parse in 2 ms; an EBNF's compile cost has no cheap bound, so the
# engine's compile timeout answers the rest.
MAX_EBNF_BYTES = 64 * 1024


class GrammarSpecError(ValueError):
    """A grammar spec the daemon refuses; .param names the request field."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param, self.message = param, message


def check_json_schema(schema: object, *, param: str) -> str:
    """Validate a JSON schema; return its compact JSON text (key order kept) for the engine."""
    if isinstance(schema, str):  # vLLM's guided_json may carry JSON text
        _check_bytes(len(schema.encode()), MAX_SCHEMA_BYTES, "the schema", param)
        try:
            schema = json.loads(schema)
        except (ValueError, RecursionError) as error:
            raise GrammarSpecError(param, f"the schema is not valid JSON: {error}") from None
    if schema is not True and not isinstance(schema, dict):
        raise GrammarSpecError(param, f"the schema must be a JSON object, not "
                                      f"{kind_of(schema)}")
    _check_json_size(schema, param)
    text = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    _check_bytes(len(text.encode()), MAX_SCHEMA_BYTES, "the schema", param)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = "#" + "".join(f"/{part}" for part in error.path)
        raise GrammarSpecError(param, f"not a valid JSON Schema (2020-12) at {where}: "
                                      f"{error.message}") from None
    try:
        if isinstance(schema, dict):
            check_schema_rules(schema)
    except SchemaRuleError as error:
        raise GrammarSpecError(param, str(error)) from None
    try:  # what xgrammar refuses itself: a `false` property, bounds beyond int64...
        xgrammar().Grammar.from_json_schema(text, any_whitespace=True, strict_mode=True,
                                            max_whitespace_cnt=MAX_JSON_WHITESPACE)
    except RuntimeError as error:
        raise GrammarSpecError(param, f"xgrammar cannot use the schema: "
                                      f"{clean_message(error)}") from None
    return text


def check_regex(pattern: object, *, param: str) -> str:
    """A regex in xgrammar's dialect (ECMAScript-like; no lookaround, backreferences or \\b)."""
    try:
        return check_regex_text(pattern, "the pattern")
    except SchemaRuleError as error:
        raise GrammarSpecError(param, str(error)) from None


def check_choices(choices: object, *, param: str) -> list[str]:
    """A non-empty list of strings, bounded in number and in total length."""
    if not isinstance(choices, list) or not choices:
        raise GrammarSpecError(param, "the choices must be a non-empty list of strings")
    if len(choices) > MAX_CHOICES:
        raise GrammarSpecError(param, f"{len(choices)} choices; at most {MAX_CHOICES} allowed")
    for index, choice in enumerate(choices):
        if not isinstance(choice, str):
            raise GrammarSpecError(param, f"choice {index} is {kind_of(choice)}, not a string")
    total = sum(map(len, choices))
    if total > MAX_CHOICE_CHARS:
        raise GrammarSpecError(param, f"the choices hold {total} characters; at most "
                                      f"{MAX_CHOICE_CHARS} allowed")
    _parse_ebnf(choice_ebnf(choices), "the choices' grammar", param)  # as the engine builds it
    return list(choices)


def check_ebnf(grammar: object, *, param: str) -> str:
    """An EBNF grammar in xgrammar's dialect (GBNF-like) whose start rule is `root`."""
    if not isinstance(grammar, str):
        raise GrammarSpecError(param, f"the grammar must be a string, not {kind_of(grammar)}")
    _check_bytes(len(grammar.encode()), MAX_EBNF_BYTES, "the grammar", param)
    _parse_ebnf(grammar, "the grammar", param)
    return grammar


def _parse_ebnf(grammar: str, what: str, param: str) -> None:
    try:
        xgrammar().Grammar.from_ebnf(grammar, root_rule_name="root")
    except RuntimeError as error:
        raise GrammarSpecError(param, f"{what} does not parse as EBNF: "
                                      f"{clean_message(error)}") from None


def _check_bytes(size: int, limit: int, what: str, param: str) -> None:
    if size > limit:
        raise GrammarSpecError(param, f"{what} is {size} bytes; at most {limit} allowed")


def _check_json_size(value: Any, param: str) -> None:
    """Iterative and stopping early, before anything recursive or slow (json.dumps,
    jsonschema) sees a hostile value; `size` never exceeds the length of the JSON text."""
    stack, size, objects = [(value, 1)], 0, 0
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_NESTING:
            raise GrammarSpecError(param, f"the schema's JSON nests more than "
                                          f"{MAX_JSON_NESTING} levels deep")
        objects += isinstance(item, (dict, bool))
        if objects > MAX_SUBSCHEMAS:
            raise GrammarSpecError(param, f"the schema holds more than {MAX_SUBSCHEMAS} JSON "
                                          f"objects and booleans (subschemas)")
        if isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                raise GrammarSpecError(param, "the schema's object keys must be strings")
            size += sum(len(key) + 3 for key in item)
            stack += [(child, depth + 1) for child in item.values()]
        elif isinstance(item, list):
            stack += [(child, depth + 1) for child in item]
        elif isinstance(item, float) and not abs(item) < float("inf"):
            raise GrammarSpecError(param, "the schema holds a number JSON cannot represent")
        elif item is not None and not isinstance(item, (str, int, float)):
            raise GrammarSpecError(param, f"the schema holds {kind_of(item)}, not JSON")
        size += len(item) + 2 if isinstance(item, str) else 1
        if size > MAX_SCHEMA_BYTES:
            raise GrammarSpecError(param, f"the schema is over {MAX_SCHEMA_BYTES} bytes")
