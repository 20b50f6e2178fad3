"""The api process's checks of grammar specs: what they accept compiles with xgrammar as the
engine compiles it, and each limit and refusal answers with a GrammarSpecError naming the
request field, hostile input included (no timing asserts: each refusal comes before any
expensive step)."""

from __future__ import annotations

import functools
import json

import pytest
import xgrammar

from server.structured_output import schema_check
from server.structured_output.compiler import compile_spec
from server.structured_output.schema_check import (GrammarSpecError, check_choices, check_ebnf,
                                                   check_json_schema, check_regex)
from server.structured_output.spec import GrammarSpec

NODE = {"type": "object", "properties": {"value": {"type": "integer"},
                                         "next": {"anyOf": [{"$ref": "#/$defs/node"},
                                                            {"type": "null"}]}},
        "required": ["value", "next"], "additionalProperties": False}
ACCEPTED = {  # name: (schema, an instance it must let through)
    "nested objects": ({"type": "object", "properties": {"a": {
        "type": "object", "properties": {"b": {"type": "string", "maxLength": 5}},
        "required": ["b"]}}, "required": ["a"]}, '{"a": {"b": "hi"}}'),
    "arrays": ({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
               "[1, 2]"),
    "tuples": ({"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}],
                "items": False}, '["a", 1.5]'),
    "enums": ({"type": "string", "enum": ["red", "green"]}, '"green"'),
    "numbers with bounds": ({"type": "number", "minimum": 0, "exclusiveMaximum": 1}, "0.25"),
    "integers with bounds": ({"type": "integer", "minimum": -5, "maximum": 5, "multipleOf": 5},
                             "-5"),
    "anyOf with null": ({"anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                         "title": "Maybe"}, "null"),
    "$defs and $ref": ({"$defs": {"p": {"type": "object", "properties": {
        "x": {"type": "integer"}}, "required": ["x"]}}, "type": "object",
        "properties": {"p": {"$ref": "#/$defs/p"}}, "required": ["p"]}, '{"p": {"x": 1}}'),
    "definitions and $ref": ({"definitions": {"i": {"type": "integer"}}, "$ref":
                              "#/definitions/i"}, "7"),
    "a recursive node": ({"$defs": {"node": NODE}, "$ref": "#/$defs/node"},
                         '{"value": 1, "next": {"value": 2, "next": null}}'),
    "recursion through the root": ({"type": "object", "properties": {
        "child": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}, "required": ["child"]},
        '{"child": {"child": null}}'),
    "formats": ({"type": "string", "format": "date-time"}, '"2024-01-31T10:00:00Z"'),
    "a non-standard format": ({"type": "integer", "format": "int32"}, "3"),
    "a pattern": ({"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3,5}$"}, '"AB-1234"'),
    "an exactly repeated group": ({"type": "string", "pattern": "^(\\d{3}-){2}\\d{4}$"},
                                  '"555-123-4567"'),
    "oneOf by types": ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, '"x"'),
    "oneOf by enum values": ({"oneOf": [{"enum": ["a", "b"]}, {"const": "c"}]}, '"c"'),
    "annotations and unknown keywords": ({"type": "string", "description": "d", "examples":
                                          ["x"], "nullable": True, "x-order": 1}, '"x"'),
    "an object open to other properties": ({"type": "object", "properties": {
        "a": {"type": "string"}}, "additionalProperties": {"type": "integer"}},
        '{"a": "s", "b": 1}'),
    "propertyNames": ({"type": "object", "additionalProperties": {"type": "integer"},
                       "propertyNames": {"pattern": "^[a-z]+$", "maxLength": 8}}, '{"ab": 1}'),
    "an empty schema": ({}, '[1, {"a": null}]'),
    "the true schema": (True, '"anything"'),
}


@functools.cache
def _compiler() -> xgrammar.GrammarCompiler:
    """A tiny byte-level vocabulary: compiling builds real token masks, in milliseconds."""
    vocab = [bytes([i]) for i in range(256)] + [b"</s>"]
    info = xgrammar.TokenizerInfo(vocab, stop_token_ids=[256])
    return xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)


def _matcher(kind: str, value: str) -> xgrammar.GrammarMatcher:
    compiled = compile_spec(_compiler(), GrammarSpec(kind, value))
    return xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=True)


def refusal(check, value, match: str | None = None) -> GrammarSpecError:
    with pytest.raises(GrammarSpecError, match=match) as caught:
        check(value, param="response_format")
    assert caught.value.param == "response_format" and isinstance(caught.value, ValueError)
    assert str(caught.value) == caught.value.message and "/project/cpp" not in str(caught.value)
    return caught.value


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_accepted_schema_text_compiles_and_lets_a_valid_instance_through(name):
    schema, instance = ACCEPTED[name]
    text = check_json_schema(schema, param="p")
    assert json.loads(text) == schema
    matcher = _matcher("json_schema", text)
    assert matcher.accept_string(instance) and matcher.is_terminated()


def test_schema_text_is_compact_and_keeps_key_order():
    schema = {"type": "object", "required": ["b"], "properties": {"b": {"type": "string"}}}
    assert check_json_schema(schema, param="p") == json.dumps(schema, separators=(",", ":"))


def test_schema_given_as_json_text_is_parsed_first():
    assert check_json_schema('{"type": "integer"}', param="p") == '{"type":"integer"}'
    refusal(check_json_schema, '{"type": ', "not valid JSON")


@pytest.mark.parametrize("schema", [[{"type": "integer"}], 5, None, False])
def test_schema_that_is_not_an_object_is_refused(schema):
    refusal(check_json_schema, schema, "must be a JSON object")


def test_schema_that_is_not_valid_json_schema_is_refused_naming_where():
    refusal(check_json_schema, {"type": "object", "properties": {"a": {"type": "foo"}}},
            "not a valid JSON Schema .* at #/properties/a/type")


def test_schema_over_the_byte_limit_is_refused():
    props = {f"p{i}": {"type": "string", "description": "x" * 100} for i in range(9000)}
    refusal(check_json_schema, {"type": "object", "properties": props}, "over 65536 bytes")
    refusal(check_json_schema, json.dumps({"description": "x" * 70_000}), "bytes")


def _nested(levels: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    return schema


def test_schema_at_the_depth_limit_is_accepted_and_one_deeper_refused():
    check_json_schema(_nested(schema_check.MAX_SCHEMA_DEPTH - 1), param="p")
    refusal(check_json_schema, _nested(schema_check.MAX_SCHEMA_DEPTH), "nest more than 32")


def test_hostile_ten_thousand_deep_nesting_is_refused_without_recursing():
    schema: dict = {"type": "string"}
    for _ in range(10_000):
        schema = {"type": "array", "items": schema}
    refusal(check_json_schema, schema, "nests more than 128 levels")
    values: list = []
    for _ in range(10_000):
        values = [values]
    refusal(check_json_schema, {"const": values}, "nests more than 128 levels")


def test_hostile_hundred_thousand_entry_enum_is_refused():
    refusal(check_json_schema, {"enum": [f"v{i}" for i in range(100_000)]}, "over 65536 bytes")


def test_enum_values_over_the_limit_are_refused_across_the_schema():
    check_json_schema({"enum": list(range(1000))}, param="p")
    schema = {"type": "array", "prefixItems": [{"enum": list(range(600))},
                                               {"enum": list(range(400))}, {"const": 1}]}
    refusal(check_json_schema, schema, "enum and const values number more than 1000")


def test_enum_values_over_the_character_limit_are_refused():
    refusal(check_json_schema, {"enum": ["x" * 500 for _ in range(100)]},
            "more than 49152 characters")


def test_enum_value_of_another_type_than_the_schema_is_refused():
    refusal(check_json_schema, {"type": "string", "enum": ["a", 1]}, "not of the schema's type")


def test_properties_over_the_limit_are_refused_across_the_schema():
    half = {"type": "object", "properties": {f"{i}": {} for i in range(500)}}
    check_json_schema(half, param="p")
    refusal(check_json_schema, {"type": "object", "properties": {"a": half, "b": half, "c": {}}},
            "more than 1000 properties")


@pytest.mark.parametrize("schema", [{"anyOf": [{}] * 2001}, {"anyOf": [True] * 2001},
                                    {"anyOf": [{}] * 20_000}])
def test_schemas_with_more_subschemas_than_jsonschema_checks_quickly_are_refused(schema):
    refusal(check_json_schema, schema, "more than 2000 JSON objects and booleans")


def _ref_chain(links: int) -> dict:
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(links)}
    return {"$defs": {**defs, f"d{links}": {"type": "integer"}}, "type": "array",
            "prefixItems": [{"$ref": f"#/$defs/d{i}"} for i in range(0, links, 2)],
            "items": False}


def test_a_ref_chain_up_to_the_depth_limit_is_accepted_and_a_longer_refused():
    check_json_schema(_ref_chain(schema_check.MAX_SCHEMA_DEPTH - 1), param="p")
    refusal(check_json_schema, _ref_chain(schema_check.MAX_SCHEMA_DEPTH),
            "a chain of more than 32 \\$refs")
    refusal(check_json_schema, _ref_chain(1200), "a chain of more than 32")


def test_properties_of_objects_open_to_others_are_bounded():
    open_object = {"type": "object", "additionalProperties": {"type": "integer"},
                   "properties": {f"p{i}": {"type": "integer"} for i in range(60)}}
    check_json_schema(open_object, param="p")
    two = {"type": "object", "properties": {"a": open_object, "b": open_object},
           "required": ["a", "b"]}
    refusal(check_json_schema, two, "may declare 100 in all")
    closed = {**open_object, "additionalProperties": False}
    check_json_schema({**two, "properties": {"a": closed, "b": closed}}, param="p")


@pytest.mark.parametrize("ref", ["https://example.com/s.json", "other.json#/$defs/a",
                                 "#/properties/a", "#a"])
def test_a_ref_that_is_not_local_to_defs_is_refused(ref):
    refusal(check_json_schema, {"$defs": {"a": {"type": "integer"}}, "type": "object",
                                "properties": {"a": {"type": "integer"}, "b": {"$ref": ref}}},
            "only the local #, #/\\$defs/NAME")


def test_a_ref_that_resolves_to_nothing_is_refused():
    refusal(check_json_schema, {"$defs": {"a": {"type": "integer"}}, "$ref": "#/$defs/b"},
            "refers to nothing")


def test_a_ref_with_escaped_names_resolves():
    check_json_schema({"$defs": {"a/b c": {"type": "integer"}}, "$ref": "#/$defs/a~1b%20c"},
                      param="p")


def test_schema_with_a_self_referencing_ref_chain_is_refused():
    refusal(check_json_schema, {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
            "a \\$ref cycle")


def test_schema_with_a_mutual_ref_chain_is_refused():
    refusal(check_json_schema, {"$defs": {"a": {"$ref": "#/$defs/b"},
                                          "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
            "a \\$ref cycle")


@pytest.mark.parametrize("schema", [{"$ref": "#"}, {"allOf": [{"$ref": "#"}]},
                                    {"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}]}},
                                     "$ref": "#/$defs/a"}])
def test_a_cycle_through_one_entry_applicators_is_refused(schema):
    refusal(check_json_schema, schema, "a \\$ref cycle")


@pytest.mark.parametrize("keyword", sorted(schema_check.REFUSED_KEYWORDS))
def test_each_refused_keyword_is_refused_naming_it(keyword):
    schema = {"type": "object", "properties": {"a": {"type": "string", keyword: "x"}}}
    error = refusal(check_json_schema, schema)
    assert keyword in str(error) or "not a valid JSON Schema" in str(error)


@pytest.mark.parametrize("name", sorted(schema_check.REFUSED_FORMATS))
def test_formats_xgrammar_ignores_are_refused(name):
    refusal(check_json_schema, {"type": "string", "format": name}, f"format '{name}'")


@pytest.mark.parametrize("keyword, value, needed", [
    ("maxLength", 3, "string"), ("pattern", "^a$", "string"), ("minimum", 1, "number"),
    ("items", {}, "array"), ("required", ["a"], "object")])
def test_a_type_specific_keyword_without_its_type_is_refused(keyword, value, needed):
    refusal(check_json_schema, {keyword: value}, f'needs `"type": "{needed}"`')
    refusal(check_json_schema, {"type": "boolean", keyword: value}, needed)


@pytest.mark.parametrize("schema", [{"type": "number", "multipleOf": 2},
                                    {"type": "integer", "multipleOf": 0.5},
                                    {"type": ["integer", "number"], "multipleOf": 2}])
def test_multiple_of_is_refused_unless_a_whole_number_of_integers(schema):
    refusal(check_json_schema, schema, "multipleOf")


@pytest.mark.parametrize("schema", [
    {"$defs": {"i": {"type": "integer"}}, "$ref": "#/$defs/i", "minimum": 1},
    {"anyOf": [{"type": "integer"}, {"type": "null"}], "type": "integer"},
    {"oneOf": [{"type": "integer"}, {"type": "string"}], "maxLength": 3},
    {"anyOf": [{"type": "integer"}], "oneOf": [{"type": "integer"}]},
    {"enum": ["a", "bb"], "type": "string", "maxLength": 1},
    {"enum": ["a"], "const": "a"}])
def test_keywords_beside_an_applicator_or_an_enum_are_refused(schema):
    refusal(check_json_schema, schema, "beside")


def test_annotation_keywords_may_stand_beside_a_ref():
    annotations = {"title": "t", "description": "d", "default": 1, "examples": [1],
                   "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:x",
                   "$comment": "c", "deprecated": False, "readOnly": False, "writeOnly": False}
    assert set(annotations) == schema_check.ANNOTATION_KEYWORDS
    text = check_json_schema({"$defs": {"i": {"type": "integer"}}, "$ref": "#/$defs/i",
                              **annotations}, param="p")
    assert _matcher("json_schema", text).accept_string("12")


def test_all_of_with_several_entries_is_refused_and_with_one_accepted():
    check_json_schema({"allOf": [{"type": "integer"}], "description": "one"}, param="p")
    refusal(check_json_schema, {"allOf": [{"type": "integer"}, {"type": "integer",
                                                                "minimum": 1}]}, "allOf")


@pytest.mark.parametrize("branches", [
    [{"type": "integer"}, {"type": "number"}], [{"type": "string"}, {}],
    [{"enum": ["a", "b"]}, {"enum": ["b", "c"]}],
    [{"type": "object", "properties": {"k": {"const": "a"}}, "required": ["k"]},
     {"type": "object", "properties": {"k": {"const": "a"}}, "required": ["k"]}],
    [{"type": "object", "properties": {"k": {"const": "a"}}},
     {"type": "object", "properties": {"k": {"const": "b"}}}]])
def test_one_of_whose_branches_may_overlap_is_refused(branches):
    refusal(check_json_schema, {"oneOf": branches}, "oneOf")


def test_one_of_told_apart_by_a_required_const_property_through_refs_is_accepted():
    pet = {"type": "object", "required": ["kind"]}
    schema = {"$defs": {"cat": {**pet, "properties": {"kind": {"const": "cat"}}},
                        "dog": {**pet, "properties": {"kind": {"enum": ["dog", "puppy"]}}}},
              "oneOf": [{"$ref": "#/$defs/cat"}, {"$ref": "#/$defs/dog"}]}
    text = check_json_schema(schema, param="p")
    assert _matcher("json_schema", text).accept_string('{"kind": "puppy"}')


def test_an_id_below_the_root_is_refused_and_at_the_root_accepted():
    check_json_schema({"$id": "urn:x", "type": "integer"}, param="p")
    refusal(check_json_schema, {"type": "object", "properties": {
        "a": {"$id": "urn:y", "type": "integer"}}}, "\\$id")


@pytest.mark.parametrize("pattern, match", [
    ("(?=a)b", "Lookahead is not supported"), ("(a)\\1", "Backreference"),
    ("a{1001}", "more than 1000"), ("x{2,5000}", "more than 1000"),
    ("(.{0,10}){0,50}", "repeats a group"), ("(a?){2,5}", "repeats a group"),
    ("((ab)+c){1,3}", "repeats a group"), ("a" * 4097, "4097 characters")])
def test_a_pattern_xgrammar_cannot_parse_or_compile_in_time_is_refused(pattern, match):
    refusal(check_json_schema, {"type": "string", "pattern": pattern}, match)


@pytest.mark.parametrize("pattern", ["(ab)+c{1,3}", "(a?)*", "(ab){2,5}", "[(]{2,5}",
                                     "\\({2,5}", "(a{3}){1,3}x?"])
def test_patterns_that_repeat_only_fixed_groups_by_a_range_are_accepted(pattern):
    check_json_schema({"type": "string", "pattern": pattern}, param="p")


def test_what_xgrammar_itself_refuses_is_a_refusal_with_its_message_cleaned():
    refusal(check_json_schema, {"type": "object", "properties": {"a": False}},
            "xgrammar cannot use the schema: Schema 'false' cannot accept any value")
    refusal(check_json_schema, {"type": "integer", "minimum": 1.5}, "whole number")


def test_a_regex_in_xgrammars_dialect_is_returned_and_compiles():
    assert check_regex("[0-9]{3}-[a-z]{2}", param="p") == "[0-9]{3}-[a-z]{2}"
    matcher = _matcher("regex", "[0-9]{3}-[a-z]{2}")
    assert matcher.accept_string("123-ab") and matcher.is_terminated()


@pytest.mark.parametrize("pattern, match", [
    ("((", "The parenthesis is not closed"), ("\\bword", "Word boundary"),
    (5, "must be a string"), ("a" * 5000, "at most 4096")])
def test_a_regex_that_is_not_a_bounded_string_in_xgrammars_dialect_is_refused(pattern, match):
    error = refusal(check_regex, pattern, match)
    assert not str(error).startswith("[")


def test_choices_are_returned_as_a_list_and_compile_as_the_engine_builds_them():
    choices = ["yes", "no", 'say "hi"', "back\\slash", "é", ""]
    assert check_choices(choices, param="p") == choices
    matcher = _matcher("choice", json.dumps(choices))
    assert matcher.accept_string('say "hi"') and matcher.is_terminated()


@pytest.mark.parametrize("choices, match", [
    ([], "non-empty list"), ("yes", "non-empty list"), (["a", 1], "choice 1 is a number"),
    ([f"c{i}" for i in range(1001)], "at most 1000"),
    (["x" * 40_000, "y" * 40_000], "at most 65536")])
def test_choices_that_are_not_a_bounded_list_of_strings_are_refused(choices, match):
    refusal(check_choices, choices, match)


def test_an_ebnf_grammar_with_a_root_rule_is_returned_and_compiles():
    grammar = 'root ::= "yes" | "no" | item ("," item)*\nitem ::= [a-z]+'
    assert check_ebnf(grammar, param="p") == grammar
    assert _matcher("ebnf", grammar).accept_string("ab,c")


@pytest.mark.parametrize("grammar, match", [
    ('start ::= "a"', 'The root rule with name "root" is not found'),
    ("root ::= item", 'Rule "item" is not defined'), ('root ::= "a', "Expect \""),
    (["root"], "must be a string"), ('root ::= "' + "a" * 70_000 + '"', "at most 65536")])
def test_an_ebnf_grammar_that_does_not_parse_is_refused_with_xgrammars_clean_message(grammar,
                                                                                    match):
    error = refusal(check_ebnf, grammar, match)
    assert not str(error).startswith("[")
