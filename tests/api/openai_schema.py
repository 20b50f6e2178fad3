"""Validate responses against OpenAI's published OpenAPI description, vendored unchanged in
tests/api/openai_openapi/ (INFLIGHTD_OPENAPI_SPEC names another copy to use instead).

The file is OpenAPI 3.1, i.e. JSON Schema 2020-12, with leftovers of OpenAPI 3.0's
`nullable: true`, which 2020-12 ignores; those are rewritten into real null alternatives so
that OpenAI's own null fields (a chunk's finish_reason) validate.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parent / "openai_openapi" / "openapi.json"
SPEC_URI = "urn:openai-openapi"
# OpenAI streams completions chunks in CreateCompletionResponse's shape, with finish_reason
# null until the last one (and usage null but in the last, with include_usage); the
# published schema, shared by both, allows neither null.
COMPLETION_CHUNK = "InflightdCompletionChunk"
# OpenAI's legacy completions answered echo with logprobs with null for the first prompt
# token's logprob and top_logprobs (no context predicts it), as lm-eval and vLLM expect;
# the published schema, written after echo was retired, allows numbers and objects only.
# These are CreateCompletionResponse and the chunk above with those two nulls allowed, and
# nothing else changed.
ECHO_COMPLETION = "InflightdEchoCompletion"
ECHO_COMPLETION_CHUNK = "InflightdEchoCompletionChunk"


def spec_path() -> Path:
    """The vendored copy, or the file INFLIGHTD_OPENAPI_SPEC names (which must exist)."""
    override = os.environ.get("INFLIGHTD_OPENAPI_SPEC")
    path = Path(override) if override else SPEC_PATH
    if not path.is_file():
        raise FileNotFoundError(f"OpenAI's openapi.json is not at {path}"
                                + (" (from INFLIGHTD_OPENAPI_SPEC)" if override else ""))
    return path


def _with_real_nulls(node: Any) -> Any:
    if isinstance(node, list):
        return [_with_real_nulls(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _with_real_nulls(value) for key, value in node.items()}
    if node.pop("nullable", False) is not True:
        return node
    if "enum" in node and None not in node["enum"]:
        node["enum"] = [*node["enum"], None]
    if isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
        return node
    return {"anyOf": [node, {"type": "null"}]}


@functools.cache
def _registry() -> Registry:
    spec = _with_real_nulls(json.loads(spec_path().read_text()))
    schemas = spec["components"]["schemas"]
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    finish = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    finish["type"] = ["string", "null"]
    finish["enum"] = [*finish["enum"], None]
    chunk["properties"]["usage"] = {"anyOf": [chunk["properties"]["usage"], {"type": "null"}]}
    schemas[COMPLETION_CHUNK] = chunk
    schemas[ECHO_COMPLETION] = _with_null_first_logprobs(schemas["CreateCompletionResponse"])
    schemas[ECHO_COMPLETION_CHUNK] = _with_null_first_logprobs(chunk)
    return Registry().with_resource(
        SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012))


def _with_null_first_logprobs(schema: dict[str, Any]) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    logprobs = schema["properties"]["choices"]["items"]["properties"]["logprobs"]["anyOf"][0]
    for name in ("token_logprobs", "top_logprobs"):
        items = logprobs["properties"][name]["items"]
        logprobs["properties"][name]["items"] = {"anyOf": [items, {"type": "null"}]}
    return schema


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{SPEC_URI}#/components/schemas/{name}"},
                                registry=_registry())


def assert_matches(instance: Any, schema_name: str) -> None:
    """Raise AssertionError listing every way `instance` breaks OpenAI's schema."""
    errors = sorted(_validator(schema_name).iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        lines = [f"  at {'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]
        raise AssertionError(f"response does not match {schema_name}:\n" + "\n".join(lines))
