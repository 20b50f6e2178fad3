"""schema_check's allow-list against xgrammar itself: every keyword it allows is enforced by
xgrammar (compiled as the engine compiles: compiler.compile_spec), every keyword it refuses is
ignored, and so are the combinations it refuses; an xgrammar upgrade that changes any of this
fails here."""

from __future__ import annotations

import functools
import json

import pytest
import xgrammar
from jsonschema import Draft202012Validator

from server.structured_output import schema_check
from server.structured_output.compiler import compile_spec
from server.structured_output.schema_check import GrammarSpecError, check_json_schema
from server.structured_output.spec import GrammarSpec

# keyword: (schema, an instance that validates, an instance that breaks the keyword)
ENFORCED = {
    "type": ({"type": "integer"}, "1", '"a"'),
    "enum": ({"enum": ["a", "b"]}, '"a"', '"c"'),
    "const": ({"const": {"a": 1}}, '{"a":1}', '{"a":2}'),
    "$ref": ({"$defs": {"i": {"type": "integer"}}, "$ref": "#/$defs/i"}, "1", '"a"'),
    "anyOf": ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, "null", '"a"'),
    "oneOf": ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, '"a"', "true"),
    "allOf": ({"allOf": [{"type": "integer"}]}, "1", '"a"'),
    "minLength": ({"type": "string", "minLength": 2}, '"ab"', '"a"'),
    "maxLength": ({"type": "string", "maxLength": 2}, '"ab"', '"abc"'),
    "pattern": ({"type": "string", "pattern": "^[a-c]+$"}, '"abc"', '"abd"'),
    "format": ({"type": "string", "format": "date"}, '"2024-01-31"', '"2024-13-01"'),
    "minimum": ({"type": "number", "minimum": -1.5}, "-1.5", "-1.6"),
    "maximum": ({"type": "integer", "maximum": 5}, "5", "6"),
    "exclusiveMinimum": ({"type": "number", "exclusiveMinimum": 1.5}, "1.6", "1.5"),
    "exclusiveMaximum": ({"type": "integer", "exclusiveMaximum": 5}, "4", "5"),
    "multipleOf": ({"type": "integer", "multipleOf": 3}, "6", "7"),
    "items": ({"type": "array", "items": {"type": "integer"}}, "[1]", '["a"]'),
    "prefixItems": ({"type": "array", "prefixItems": [{"type": "string"}], "items": False},
                    '["a"]', "[1]"),
    "minItems": ({"type": "array", "items": {}, "minItems": 2}, "[1, 2]", "[1]"),
    "maxItems": ({"type": "array", "items": {}, "maxItems": 1}, "[1]", "[1, 2]"),
    "unevaluatedItems": ({"type": "array", "prefixItems": [{}],
                          "unevaluatedItems": {"type": "integer"}}, "[1, 2]", '[1, "x"]'),
    "properties": ({"type": "object", "properties": {"a": {"type": "integer"}}},
                   '{"a": 1}', '{"a": "x"}'),
    "required": ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                 '{"a": 1}', "{}"),
    "additionalProperties": ({"type": "object", "additionalProperties": {"type": "integer"}},
                             '{"b": 1}', '{"b": "x"}'),
    "unevaluatedProperties": ({"type": "object", "properties": {"a": {}},
                               "unevaluatedProperties": {"type": "integer"}},
                              '{"a": 1, "b": 2}', '{"b": "x"}'),
    "propertyNames": ({"type": "object", "additionalProperties": {},
                       "propertyNames": {"pattern": "^[a-z]+$"}}, '{"ab": 1}', '{"A1": 1}'),
    "minProperties": ({"type": "object", "additionalProperties": {}, "minProperties": 2},
                      '{"a": 1, "b": 2}', '{"a": 1}'),
    "maxProperties": ({"type": "object", "additionalProperties": {}, "maxProperties": 1},
                      '{"a": 1}', '{"a": 1, "b": 2}'),
}
IF_THEN_ELSE = {"if": {"type": "integer"}, "then": {"minimum": 5}, "else": {"type": "string"}}
DYNAMIC = {"$dynamicAnchor": "x", "type": "object", "properties": {"a": {"$dynamicRef": "#x"}}}
RECURSIVE = {"$recursiveAnchor": True, "type": "object",
             "properties": {"a": {"$recursiveRef": "#"}}}
JSON_TEXT = {"type": "string", "contentMediaType": "application/json"}
# keyword: (schema, an instance that breaks the keyword, yet xgrammar accepts)
IGNORED = {
    "not": ({"not": {"type": "integer"}}, "1"),
    "if": (IF_THEN_ELSE, "4"),
    "then": (IF_THEN_ELSE, "4"),
    "else": (IF_THEN_ELSE, "true"),
    "uniqueItems": ({"type": "array", "items": {}, "uniqueItems": True}, "[1, 1]"),
    "contains": ({"type": "array", "items": {}, "contains": {"const": 1}}, "[2]"),
    "minContains": ({"type": "array", "items": {}, "contains": {"const": 1}, "minContains": 2},
                    "[1, 2]"),
    "maxContains": ({"type": "array", "items": {}, "contains": {"const": 1}, "maxContains": 1},
                    "[1, 1]"),
    "dependentRequired": ({"type": "object", "properties": {"a": {}, "b": {}},
                           "dependentRequired": {"a": ["b"]}}, '{"a": 1}'),
    "dependentSchemas": ({"type": "object", "properties": {"a": {}, "b": {}},
                          "dependentSchemas": {"a": {"required": ["b"]}}}, '{"a": 1}'),
    # a name that is in `properties` too escapes the pattern's schema
    "patternProperties": ({"type": "object", "properties": {"xa": {"type": "string"}},
                           "patternProperties": {"x.*": {"type": "integer"}}}, '{"xa": "s"}'),
    "$anchor": ({"$defs": {"i": {"$anchor": "i", "type": "integer"}}, "$ref": "#i"}, '"a"'),
    "$dynamicRef": (DYNAMIC, '{"a": 1}'),
    "$dynamicAnchor": (DYNAMIC, '{"a": 1}'),
    "contentEncoding": ({"type": "string", "contentEncoding": "base64"}, '"!!"'),
    "contentMediaType": (JSON_TEXT, '"{"'),
    "contentSchema": ({**JSON_TEXT, "contentSchema": {"type": "integer"}}, '"\\"a\\""'),
    "dependencies": ({"type": "object", "properties": {"a": {}, "b": {}},
                      "dependencies": {"a": ["b"]}}, '{"a": 1}'),
    "$recursiveRef": (RECURSIVE, '{"a": 1}'),
    "$recursiveAnchor": (RECURSIVE, '{"a": 1}'),
}
# Annotations to a 2020-12 validator (content*) or keywords of older drafts: refused because the
# schema's author meant them as constraints, not because 2020-12 output would break.
NOT_ASSERTED_BY_2020_12 = {"contentEncoding", "contentMediaType", "contentSchema",
                           "dependencies", "$recursiveRef", "$recursiveAnchor"}


@functools.cache
def _compiler() -> xgrammar.GrammarCompiler:
    return xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([]), cache_enabled=False)


def accepts(schema: object, text: str) -> bool:
    compiled = compile_spec(_compiler(), GrammarSpec("json_schema", json.dumps(schema)))
    matcher = xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=True)
    return matcher.accept_string(text) and matcher.is_terminated()


def is_valid(schema: object, text: str) -> bool:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER
                                ).is_valid(json.loads(text))


def test_the_probes_cover_exactly_the_allowed_and_the_refused_keywords():
    assert set(ENFORCED) == schema_check.ENFORCED_KEYWORDS
    assert set(IGNORED) == set(schema_check.REFUSED_KEYWORDS)


@pytest.mark.parametrize("keyword", list(ENFORCED))
def test_xgrammar_enforces_each_allowed_keyword(keyword):
    schema, good, bad = ENFORCED[keyword]
    assert is_valid(schema, good) and not is_valid(schema, bad)  # the probe itself is right
    assert accepts(schema, good) and not accepts(schema, bad)
    check_json_schema(schema, param="p")


@pytest.mark.parametrize("keyword", list(IGNORED))
def test_xgrammar_ignores_each_refused_keyword(keyword):
    schema, bad = IGNORED[keyword]
    if keyword not in NOT_ASSERTED_BY_2020_12:
        assert not is_valid(schema, bad)
    assert accepts(schema, bad)
    with pytest.raises(GrammarSpecError, match="is not supported|not a valid JSON Schema"):
        check_json_schema(schema, param="p")


UNTYPED = {"minLength": ({"minLength": 2}, '"a"'), "maxLength": ({"maxLength": 1}, '"ab"'),
           "pattern": ({"pattern": "^a+$"}, '"b"'), "format": ({"format": "date"}, '"x"'),
           "minimum": ({"minimum": 5}, "4"), "maximum": ({"maximum": 5}, "6"),
           "exclusiveMinimum": ({"exclusiveMinimum": 5}, "5"),
           "exclusiveMaximum": ({"exclusiveMaximum": 5}, "5"),
           "multipleOf": ({"multipleOf": 3}, "7"), "required": ({"required": ["a"]}, "{}")}
BESIDE_APPLICATOR = {
    "$ref": {"$defs": {"i": {"type": "integer"}}, "$ref": "#/$defs/i", "minimum": 5},
    "anyOf": {"anyOf": [{"type": "integer"}, {"type": "string"}], "minimum": 5},
    "oneOf": {"oneOf": [{"type": "integer"}, {"type": "string"}], "minimum": 5},
    "allOf": {"allOf": [{"type": "integer"}], "minimum": 5}}
REFUSED_COMBINATIONS = {
    "multipleOf of a number": ({"type": "number", "multipleOf": 0.5}, "1.3"),
    "multipleOf with a whole value of a number": ({"type": "number", "multipleOf": 2}, "3"),
    "fractional multipleOf of an integer": ({"type": "integer", "multipleOf": 1.5}, "2"),
    "keywords beside an enum": ({"type": "string", "enum": ["a", "bb"], "maxLength": 1},
                                '"bb"'),
    "oneOf with overlapping branches": ({"oneOf": [{"type": "integer"}, {"type": "number"}]},
                                        "1"),
    "allOf with several entries": (
        {"allOf": [{"type": "object", "properties": {"a": {}}, "required": ["a"]},
                   {"type": "object", "properties": {"b": {}}, "required": ["b"]}]},
        '{"a": 1}'),
    "a $ref under a nested $id": (
        {"$defs": {"r": {"$id": "urn:x", "$defs": {"i": {"type": "string"}},
                         "$ref": "#/$defs/i"}, "i": {"type": "integer"}}, "$ref": "#/$defs/r"},
        "1"),
    **{f"{keyword} without a type": UNTYPED[keyword] for keyword in UNTYPED},
    **{f"minimum beside {keyword}": (BESIDE_APPLICATOR[keyword], "4")
       for keyword in BESIDE_APPLICATOR},
}


@pytest.mark.parametrize("case", list(REFUSED_COMBINATIONS))
def test_xgrammar_ignores_what_each_refused_combination_asks(case):
    schema, bad = REFUSED_COMBINATIONS[case]
    assert not is_valid(schema, bad) and accepts(schema, bad)
    with pytest.raises(GrammarSpecError):
        check_json_schema(schema, param="p")


FORMAT_EXAMPLES = {  # format: (a valid string, an invalid one)
    "date": ("2024-01-31", "2024-13-01"), "date-time": ("2024-01-31T10:00:00Z", "2024-01-31"),
    "time": ("10:00:00Z", "25:00"), "duration": ("P1D", "1D"), "email": ("a@b.co", "ab"),
    "hostname": ("example.com", "-x-"), "ipv4": ("1.2.3.4", "1.2.3"), "ipv6": ("::1", "x"),
    "uri": ("http://a.b/c", "::"), "uri-reference": ("/a", "\\\\"),
    "uri-template": ("/{a}", "{"), "uuid": ("123e4567-e89b-12d3-a456-426614174000", "123"),
    "json-pointer": ("/a", "a"), "relative-json-pointer": ("0/a", "/a"),
    "idn-email": ("a@b.co", "ab"), "idn-hostname": ("example.com", "-x-"),
    "iri": ("http://a.b", "::"), "iri-reference": ("/a", "\\\\"), "regex": ("a+", "(")}


def test_every_format_probed_is_either_allowed_or_refused():
    assert set(FORMAT_EXAMPLES) == schema_check.ENFORCED_FORMATS | schema_check.REFUSED_FORMATS


@pytest.mark.parametrize("name", sorted(FORMAT_EXAMPLES))
def test_xgrammar_enforces_the_allowed_formats_and_ignores_the_refused(name):
    schema = {"type": "string", "format": name}
    good, bad = (json.dumps(text) for text in FORMAT_EXAMPLES[name])
    assert accepts(schema, good)
    assert accepts(schema, bad) is (name in schema_check.REFUSED_FORMATS)
    if name in schema_check.REFUSED_FORMATS:
        with pytest.raises(GrammarSpecError, match=name):
            check_json_schema(schema, param="p")
    else:
        check_json_schema(schema, param="p")


def test_xgrammar_matches_a_pattern_against_the_whole_string_which_is_stricter_so_sound():
    # JSON Schema searches ("bab" matches "a"); xgrammar anchors: output still validates
    assert not accepts({"type": "string", "pattern": "a"}, '"bab"')
    assert accepts({"type": "string", "pattern": "a"}, '"a"')


def test_xgrammar_enforces_a_oneOf_told_apart_by_a_required_const_property():
    branch = {"type": "object", "required": ["kind", "x"]}
    schema = {"oneOf": [{**branch, "properties": {"kind": {"const": "a"},
                                                  "x": {"type": "integer"}}},
                        {**branch, "properties": {"kind": {"const": "b"},
                                                  "x": {"type": "string"}}}]}
    check_json_schema(schema, param="p")
    assert accepts(schema, '{"kind": "a", "x": 1}') and accepts(schema, '{"kind": "b", "x": "s"}')
    assert not accepts(schema, '{"kind": "a", "x": "s"}')
