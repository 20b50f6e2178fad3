"""The keyword rules of check_json_schema: which JSON Schema keywords xgrammar enforces (the
allow-list, pinned against xgrammar by tests/unit/test_schema_check_xgrammar.py), the limits a
schema's content must keep, and one iterative walk over its subschemas that applies both."""

from __future__ import annotations

import functools
import json
import re
from typing import Any
from urllib.parse import unquote

# Compile times below: xgrammar 0.2.9, SmolLM2's 49k vocabulary, the engine's JSON options
# (compiler.compile_spec), 2 CPU cores.
# Subschemas within subschemas: 32 nested objects compile in 0.016 s (128: 0.3 s).
MAX_SCHEMA_DEPTH = 32
# An enum of 10,000 strings took 1.3 s, 100,000 took 151 s; 1000 values of 60 characters 0.13 s.
MAX_ENUM_VALUES = 1000
# The JSON text of all enum and const values together: 1000 values of 45 characters.
MAX_ENUM_CHARS = 48 * 1024
# OpenAI allows 5000, but jsonschema alone takes 0.7 s to check a schema with 5000 (and they
# compile in 1-2 s); 1000 optional properties compile in 0.09 s.
MAX_PROPERTIES = 1000
# Each property of an object that also takes others (additional or unevaluated properties not
# false) costs ~6 ms to compile: 100 took 0.7 s, 1000 took 3.5 s.
MAX_OPEN_OBJECT_PROPERTIES = 100
# guided_regex and each `pattern`: parsing is instant, the cost lies in compiling.
MAX_REGEX_CHARS = 4096
# A `pattern` is compiled inside a JSON string, where counted repetitions cost far more than
# in guided_regex: .{0,4000} took 6.3 s, .{0,1000} 0.29 s.
MAX_PATTERN_REPEAT = 1000

ANNOTATION_KEYWORDS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly"})
# The type each type-specific keyword constrains: xgrammar ignores string and number keywords
# (and `required`) under no `type`, so all of them need `type` naming theirs beside them.
TYPED_KEYWORDS = {
    **dict.fromkeys(("minLength", "maxLength", "pattern", "format"), "string"),
    **dict.fromkeys(("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"), "number"),
    "multipleOf": "integer",  # xgrammar ignores it for numbers and for fractional values
    **dict.fromkeys(("items", "prefixItems", "minItems", "maxItems", "unevaluatedItems"),
                    "array"),
    **dict.fromkeys(("properties", "required", "additionalProperties", "unevaluatedProperties",
                     "propertyNames", "minProperties", "maxProperties"), "object")}
VALUE_KEYWORDS = ("enum", "const")  # beside them xgrammar enforces nothing else
# Compiled alone: keywords beside one are ignored, so only annotations may stand there.
# allOf is enforced with one entry only, oneOf as anyOf (so only with disjoint branches).
APPLICATOR_KEYWORDS = ("$ref", "anyOf", "oneOf", "allOf")
ENFORCED_KEYWORDS = frozenset({"type", *VALUE_KEYWORDS, *APPLICATOR_KEYWORDS, *TYPED_KEYWORDS})
_IGNORED = "xgrammar does not enforce it, so the output could break the schema"
# Other keywords (nullable, x-*) are annotations to a 2020-12 validator and pass.
REFUSED_KEYWORDS = {
    **dict.fromkeys(("not", "if", "then", "else", "uniqueItems", "contains", "minContains",
                     "maxContains", "dependentRequired", "dependentSchemas", "$dynamicRef",
                     "$dynamicAnchor", "contentEncoding", "contentMediaType", "contentSchema"),
                    _IGNORED),
    "patternProperties": "xgrammar enforces it only in part",
    "$anchor": "$ref may only name #, #/$defs/NAME or #/definitions/NAME",
    "dependencies": "it is draft-07's, and xgrammar ignores it",
    "$recursiveRef": "it is draft 2019-09's, and xgrammar ignores it",
    "$recursiveAnchor": "it is draft 2019-09's, and xgrammar ignores it"}
# Standard formats xgrammar enforces; it ignores the others. Non-standard names (int32,
# password) are annotations to any validator and pass.
ENFORCED_FORMATS = frozenset({
    "date", "date-time", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uri",
    "uri-reference", "uri-template", "uuid", "json-pointer", "relative-json-pointer"})
REFUSED_FORMATS = frozenset({"idn-email", "idn-hostname", "iri", "iri-reference", "regex"})
_LOCAL_REF = re.compile(r"#(?:/(?:\$defs|definitions)/[^/]+)?")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties", "unevaluatedProperties", "unevaluatedItems",
               "propertyNames")


class SchemaRuleError(ValueError):
    """A schema breaks a rule; check_json_schema names the request field."""


def check_schema_rules(schema: dict) -> None:
    """Raise SchemaRuleError at the first rule the schema (already valid 2020-12) breaks."""
    _SchemaWalk(schema).run()


class _SchemaWalk:
    """Every subschema once, iteratively (depth is bounded by MAX_SCHEMA_DEPTH, not by
    Python's stack); then the $ref chains and oneOf branches, which need the whole schema."""

    def __init__(self, root: dict):
        self.root = root
        self.enum_values = self.enum_chars = self.properties = self.open_properties = 0
        self.refs: list[tuple[dict, str]] = []
        self.one_ofs: list[tuple[list, str]] = []
        self.to_content: dict[int, int] = {}  # node id: $ref links from it to content

    def run(self) -> None:
        stack: list[tuple[Any, str, int, bool]] = [(self.root, "#", 1, False)]
        while stack:
            node, where, depth, is_name = stack.pop()
            if depth > MAX_SCHEMA_DEPTH:
                raise SchemaRuleError(f"subschemas nest more than {MAX_SCHEMA_DEPTH} deep")
            if isinstance(node, dict):
                self.check_node(node, where, is_name)
                stack += [(child, at, depth + 1, key == "propertyNames")
                          for key, child, at in _subschemas(node, where)]
        for node, where in self.refs:
            self.check_ref_chain(node, where)
        for branches, where in self.one_ofs:
            _check_disjoint(self, branches, where)

    def check_node(self, node: dict, where: str, is_name: bool) -> None:
        for keyword in node:
            if keyword in REFUSED_KEYWORDS:
                raise SchemaRuleError(f"`{keyword}` (at {where}) is not supported: "
                                      f"{REFUSED_KEYWORDS[keyword]}")
        if "$id" in node and where != "#":
            raise SchemaRuleError(f"`$id` is only supported at the root (found at {where}): "
                                  f"xgrammar resolves every $ref against the root")
        applied = [keyword for keyword in APPLICATOR_KEYWORDS if keyword in node]
        if applied:
            self.check_applicator(node, where, applied)
        elif "enum" in node or "const" in node:
            self.check_values(node, where)
        types = _types(node) if "type" in node else {"string"} if is_name else set()
        for keyword in node.keys() & TYPED_KEYWORDS.keys() - _annotation_format(node):
            self.check_typed(node, where, keyword, types)
        if "properties" in node:
            self.count_properties(node, where)

    def check_applicator(self, node: dict, where: str, applied: list[str]) -> None:
        keyword = applied[0]
        beside = [k for k in node if k in ENFORCED_KEYWORDS and k != keyword]
        if beside:
            raise SchemaRuleError(f"`{beside[0]}` beside `{keyword}` (at {where}) is not "
                                  f"supported: xgrammar ignores it; move it into the "
                                  f"{keyword} target or branches")
        if keyword == "$ref":
            self.refs.append((node, where))
            self.resolve(node["$ref"], where)
        elif keyword == "allOf" and len(node["allOf"]) > 1:
            raise SchemaRuleError(f"`allOf` with {len(node['allOf'])} entries (at {where}) is "
                                  f"not supported: xgrammar enforces only one; merge them")
        elif keyword == "oneOf" and len(node["oneOf"]) > 1:
            self.one_ofs.append((node["oneOf"], where))

    def check_values(self, node: dict, where: str) -> None:
        keyword = "enum" if "enum" in node else "const"
        values = node["enum"] if keyword == "enum" else [node["const"]]
        beside = [k for k in node if k in ENFORCED_KEYWORDS and k not in (keyword, "type")]
        if beside:
            raise SchemaRuleError(f"`{beside[0]}` beside `{keyword}` (at {where}) is not "
                                  f"supported: xgrammar enforces only the {keyword}")
        for value in values if "type" in node else ():
            if not _json_types(value) & _types(node):
                raise SchemaRuleError(f"{keyword} value {json.dumps(value)[:60]} (at {where}) "
                                      f"is not of the schema's type {node['type']!r}")
        self.enum_values += len(values)
        self.enum_chars += len(json.dumps(values, ensure_ascii=False))
        if self.enum_values > MAX_ENUM_VALUES or self.enum_chars > MAX_ENUM_CHARS:
            raise SchemaRuleError(f"the schema's enum and const values number more than "
                                  f"{MAX_ENUM_VALUES}, or hold more than {MAX_ENUM_CHARS} "
                                  f"characters of JSON")

    def check_typed(self, node: dict, where: str, keyword: str, types: set[str]) -> None:
        needed = TYPED_KEYWORDS[keyword]
        if needed == "integer" and not ("integer" in types and "number" not in types
                                        and _is_whole(node[keyword])):
            raise SchemaRuleError(f"`multipleOf` (at {where}) is supported only as a whole "
                                  f"number under `\"type\": \"integer\"`: xgrammar ignores it "
                                  f"otherwise")
        if needed not in types and not (needed == "number" and "integer" in types):
            raise SchemaRuleError(f"`{keyword}` (at {where}) needs `\"type\": \"{needed}\"` "
                                  f"beside it: xgrammar ignores it otherwise")
        if keyword == "format" and node["format"] in REFUSED_FORMATS:
            supported = ", ".join(sorted(ENFORCED_FORMATS))
            raise SchemaRuleError(f"format {node['format']!r} (at {where}) is not supported: "
                                  f"xgrammar ignores it; it enforces {supported}")
        if keyword == "pattern":
            _check_pattern(node["pattern"], where)

    def count_properties(self, node: dict, where: str) -> None:
        self.properties += len(node["properties"])
        if self.properties > MAX_PROPERTIES:
            raise SchemaRuleError(f"the schema declares more than {MAX_PROPERTIES} properties")
        if any(node.get(k, False) is not False
               for k in ("additionalProperties", "unevaluatedProperties")):
            self.open_properties += len(node["properties"])
            if self.open_properties > MAX_OPEN_OBJECT_PROPERTIES:
                raise SchemaRuleError(f"objects that take other properties besides their own "
                                      f"may declare {MAX_OPEN_OBJECT_PROPERTIES} in all "
                                      f"(exceeded at {where}); set additionalProperties to "
                                      f"false, or declare fewer")

    def resolve(self, ref: str, where: str) -> Any:
        if not _LOCAL_REF.fullmatch(ref):
            raise SchemaRuleError(f"$ref {ref!r} (at {where}) is not supported: only the local "
                                  f"#, #/$defs/NAME and #/definitions/NAME are")
        if ref == "#":
            return self.root
        _, section, name = ref.split("/")
        name = unquote(name).replace("~1", "/").replace("~0", "~")
        if name not in (self.root.get(section) or {}):
            raise SchemaRuleError(f"$ref {ref!r} (at {where}) refers to nothing in the schema")
        return self.root[section][name]

    def check_ref_chain(self, node: Any, where: str) -> None:
        """Follow $refs and one-entry applicators to content. Coming back means a cycle with
        no content (xgrammar refuses it, or accepts nothing); a long chain took xgrammar
        1.5 s for 1900 links. Each node's distance to content is kept: linear overall."""
        path: dict[int, None] = {}  # ordered, and a set
        while isinstance(node, dict) and id(node) not in self.to_content:
            single = [node[k][0] for k in ("allOf", "anyOf", "oneOf")
                      if len(node.get(k) or ()) == 1]
            if "$ref" not in node and not single:
                break
            if id(node) in path:
                raise SchemaRuleError(f"a $ref cycle (from {where}) that refers only to itself: "
                                      f"give the recursion content, e.g. anyOf with null")
            path[id(node)] = None
            node = self.resolve(node["$ref"], where) if "$ref" in node else single[0]
        distance = self.to_content.get(id(node), 0)
        for step, node_id in enumerate(reversed(path), 1):
            self.to_content[node_id] = distance + step
        if distance + len(path) > MAX_SCHEMA_DEPTH:
            raise SchemaRuleError(f"a chain of more than {MAX_SCHEMA_DEPTH} $refs (from "
                                  f"{where}) before any content")


def _check_disjoint(walk: _SchemaWalk, branches: list, where: str) -> None:
    """xgrammar compiles oneOf as anyOf: sound only if no value matches two branches. Provable
    here: different JSON types, disjoint enum/const values, or a required property with
    different const/enum values in each branch (a discriminator)."""
    by_type: dict[str, list[Any]] = {}
    for index, branch in enumerate(_deref(walk, b, where) for b in branches):
        kinds = _branch_types(branch)
        if kinds is None:
            raise SchemaRuleError(f"`oneOf` branch {index} (at {where}) names no type, so it "
                                  f"may overlap another: give each a type, or use anyOf")
        for kind in kinds:
            by_type.setdefault(kind, []).append(branch)
    for kind, members in by_type.items():
        if len(members) > 1 and not _disjoint([_value_set(m) for m in members]) and not any(
                _disjoint([_value_set(_deref(walk, _property(m, name), where)) for m in members])
                for name in (members[0].get("properties") or {})):
            raise SchemaRuleError(f"`oneOf` (at {where}) has branches that may both match a "
                                  f"{kind}, and xgrammar enforces oneOf as anyOf: use anyOf, or "
                                  f"tell them apart by a required property with different "
                                  f"const values")


def _annotation_format(node: dict) -> set[str]:
    """A non-standard format (int32 beside an integer) is an annotation: no type needed."""
    standard = ENFORCED_FORMATS | REFUSED_FORMATS
    return {"format"} if "format" in node and node["format"] not in standard else set()


def _deref(walk: _SchemaWalk, node: Any, where: str) -> Any:
    for _ in range(MAX_SCHEMA_DEPTH):  # the chains end: cycles were refused before
        if not (isinstance(node, dict) and "$ref" in node):
            break
        node = walk.resolve(node["$ref"], where)
    return node


def _property(branch: Any, name: str) -> Any:
    if not isinstance(branch, dict) or name not in (branch.get("required") or ()):
        return None
    return (branch.get("properties") or {}).get(name)


def _branch_types(branch: Any) -> set[str] | None:
    if not isinstance(branch, dict):
        return set() if branch is False else None
    if "type" in branch:
        kinds = _types(branch)
    elif "enum" in branch or "const" in branch:
        kinds = {t for v in branch.get("enum", [branch.get("const")]) for t in _json_types(v)}
    else:
        return None
    return {"number" if kind == "integer" else kind for kind in kinds}


def _value_set(schema: Any) -> set[str] | None:
    if not isinstance(schema, dict) or not ("enum" in schema or "const" in schema):
        return None
    values = schema["enum"] if "enum" in schema else [schema["const"]]
    return {json.dumps(int(v) if isinstance(v, float) and v.is_integer() else v,
                       sort_keys=True) for v in values}


def _disjoint(sets: list[set[str] | None]) -> bool:
    return None not in sets and len(set().union(*sets)) == sum(map(len, sets))


def _subschemas(node: dict, where: str):
    """(keyword, subschema, its location) for each subschema of a keyword allowed here."""
    for keyword in _SUBSCHEMA_MAPS:
        for name, child in (node.get(keyword) or {}).items():
            yield keyword, child, f"{where}/{keyword}/{_escape(name)}"
    for keyword in _SUBSCHEMA_LISTS:
        for index, child in enumerate(node.get(keyword) or ()):
            yield keyword, child, f"{where}/{keyword}/{index}"
    for keyword in _SUBSCHEMAS:
        if keyword in node:
            yield keyword, node[keyword], f"{where}/{keyword}"


# An escape, a character class, a counted repetition {m}, {m,}, {m,n}, a group's start, or
# any other single character.
_PATTERN_TOKEN = re.compile(r"\\.|\[\^?\]?(?:\\.|[^\]\\])*\]|\{(\d+)(,(\d*))?\}|\(\??|.", re.S)


def _check_pattern(pattern: Any, where: str) -> None:
    """Counted repetitions are unrolled inside a JSON string: bound each, and refuse a counted
    range over a group that repeats inside, e.g. (.{0,10}){0,50} took 452 s to compile,
    (.?){0,50} 5.1 s. Flat ones still cost (.{0,100}.{0,100}.{0,100}: 10 s); the engine's
    compile timeout answers those."""
    what = f"`pattern` (at {where})"
    check_regex_text(pattern, what)
    repeats = [False]  # per open group: does something repeat inside it?
    closed_repeating = False  # the token before is a group that repeats inside
    for match in _PATTERN_TOKEN.finditer(pattern):
        token, low, comma, high = match.group(0, 1, 2, 3)
        if token.startswith("("):
            repeats.append(False)
        elif token == ")" and len(repeats) > 1:
            inner = repeats.pop()
            repeats[-1] |= inner
            closed_repeating = inner
            continue
        elif token in ("?", "*", "+") or low is not None:
            repeats[-1] |= low is None or comma is not None and high != low  # not {m} or {m,m}
            if low is not None and max(int(low), int(high or 0)) > MAX_PATTERN_REPEAT:
                raise SchemaRuleError(f"{what} repeats more than {MAX_PATTERN_REPEAT} times")
            if low is not None and comma and high and int(high) > max(int(low), 1) \
                    and closed_repeating:
                raise SchemaRuleError(f"{what} repeats a group a counted range of times while "
                                      f"something inside it repeats too: xgrammar cannot "
                                      f"compile that in reasonable time; simplify it")
        closed_repeating = False


def check_regex_text(pattern: Any, what: str) -> str:
    """A string of bounded length that xgrammar parses as a regex."""
    if not isinstance(pattern, str):
        raise SchemaRuleError(f"{what} must be a string, not {kind_of(pattern)}")
    if len(pattern) > MAX_REGEX_CHARS:
        raise SchemaRuleError(f"{what} is {len(pattern)} characters long; at most "
                              f"{MAX_REGEX_CHARS} allowed")
    try:
        xgrammar().Grammar.from_regex(pattern)
    except RuntimeError as error:
        raise SchemaRuleError(f"{what} is not a regex xgrammar supports: "
                              f"{clean_message(error)}") from None
    return pattern


def _types(node: dict) -> set[str]:
    return {node["type"]} if isinstance(node["type"], str) else set(node["type"])


def _json_types(value: Any) -> set[str]:
    if isinstance(value, bool) or value is None:
        return {"boolean" if value is not None else "null"}
    if isinstance(value, (int, float)):
        return {"number", "integer"} if _is_whole(value) else {"number"}
    return {{str: "string", list: "array", dict: "object"}[type(value)]}


def _is_whole(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            or isinstance(value, float) and value.is_integer())


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def kind_of(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             type(None): "null", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def clean_message(error: BaseException) -> str:
    """xgrammar's messages start with `[time] /project/cpp/file.cc:NN: `; keep what follows."""
    return re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", str(error).strip())


@functools.cache
def xgrammar():
    import xgrammar as module  # it brings torch in (1.3 s), paid by the first grammar only

    return module
