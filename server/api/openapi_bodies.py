"""Request bodies for /openapi.json. The routes parse their bodies themselves (so that every
failure is an OpenAI-shaped 400), which hides the bodies from FastAPI's generated document;
`request_body(Model)` puts them back as `openapi_extra` for a route.

pydantic writes nested models as `$ref: #/$defs/...`, which would point at the root of the
OpenAPI document; the bodies here are self-contained, with every such reference inlined.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": _inline(schema, definitions)}}}}


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    """`node` with each `#/$defs/Name` reference replaced by that definition (the request
    models nest, but none refers to itself, so this ends)."""
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        rest = {key: value for key, value in node.items() if key != "$ref"}
        return {**_inline(definitions[ref.removeprefix("#/$defs/")], definitions), **rest}
    return {key: _inline(value, definitions) for key, value in node.items()}
