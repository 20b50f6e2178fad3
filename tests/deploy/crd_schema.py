"""JSON schemas for custom resources, from a vendored CRD's openAPIV3Schema (tests/deploy/crds).

The API server prunes fields a structural schema does not name; here an unknown field is an
error instead, so that a misspelt one fails the test rather than vanishing on apply: every
object schema that lists properties (and does not keep unknown fields) gets
`additionalProperties: false`. The CEL rules (`x-kubernetes-validations`) are not
evaluated; tests check the ones that matter to deploy/ directly.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path(__file__).resolve().parent / "crds"


def crd_schema(file_name: str, *, version: str) -> tuple[str, str, dict[str, Any]]:
    """(apiVersion, kind, strict JSON schema) of one served version of a vendored CRD."""
    crd = yaml.safe_load((CRD_DIR / file_name).read_text())
    spec = crd["spec"]
    [served] = [v for v in spec["versions"] if v["name"] == version and v["served"]]
    schema = _strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    schema["properties"]["apiVersion"] = {"const": f"{spec['group']}/{version}"}
    schema["properties"]["kind"] = {"const": spec["names"]["kind"]}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "spec"})
    return f"{spec['group']}/{version}", spec["names"]["kind"], schema


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    if (schema.get("type") == "object" and "properties" in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        schema.setdefault("additionalProperties", False)
    for child in schema.get("properties", {}).values():
        _strict(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _strict(schema[key])
    return schema
