"""A JSON schema for llm-d's EndpointPickerConfig (llm-d.ai/v1alpha1): the endpoint picker's config.

It is a strict subset written from the picker's API types (apix/config/v1alpha1 of
llm-d/llm-d-router) and its plugins' documented parameters: unknown fields are rejected, and
so are plugin types this schema does not know, so that a misspelt name fails here instead of
at the picker's start-up. Add a plugin type (and its parameters) when deploy/ starts using it.
"""

from __future__ import annotations

from typing import Any

_STRING = {"type": "string"}
_REF = {"type": "string", "minLength": 1}

_METRICS_DATA_SOURCE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "scheme": {"enum": ["http", "https"]},
        "path": {"type": "string", "pattern": "^/"},
        "insecureSkipVerify": {"type": "boolean"},
        "caCertPath": _STRING,
        "clientCertPath": _STRING,
        "clientKeyPath": _STRING,
        "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m)$"},
    },
}

_ENGINE_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": _REF,
        **{key: _STRING for key in (
            "queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec", "loraSpec",
            "cacheInfoSpec", "cacheBlockSizeLabelName", "cacheNumBlocksLabelName",
            "cacheBlockSizeSpec", "cacheNumBlocksSpec")},
        "customMetrics": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": False,
                      "required": ["attributeKey", "metricSpec"],
                      "properties": {"attributeKey": _REF, "metricSpec": _REF}},
        },
    },
}

_CORE_METRICS_EXTRACTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "engineLabelKey": _REF,
        "defaultEngine": _REF,
        "engineConfigs": {"type": "array", "items": _ENGINE_CONFIG},
    },
}

# plugin type -> the schema of its parameters (None: it takes none)
PLUGIN_PARAMETERS: dict[str, dict[str, Any] | None] = {
    "metrics-data-source": _METRICS_DATA_SOURCE,
    "core-metrics-extractor": _CORE_METRICS_EXTRACTOR,
    "queue-scorer": None,
    "kv-cache-utilization-scorer": None,
    "prefix-cache-scorer": None,
    "max-score-picker": None,
    "single-profile-handler": None,
}


def _plugin(plugin_type: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    properties: dict[str, Any] = {"type": {"const": plugin_type}, "name": _REF}
    if parameters is not None:
        properties["parameters"] = parameters
    return {"type": "object", "additionalProperties": False, "required": ["type"],
            "properties": properties}


def _object(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    """An object with exactly these properties (none other), some of them required."""
    return {"type": "object", "additionalProperties": False, "required": list(required),
            "properties": properties}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


ENDPOINT_PICKER_CONFIG_SCHEMA: dict[str, Any] = _object(
    ("apiVersion", "kind", "plugins"),
    apiVersion={"const": "llm-d.ai/v1alpha1"},
    kind={"const": "EndpointPickerConfig"},
    featureGates=_array(_STRING),
    plugins={**_array({"oneOf": [_plugin(t, p) for t, p in PLUGIN_PARAMETERS.items()]}),
             "minItems": 1},
    schedulingProfiles=_array(_object(
        ("name", "plugins"), name=_REF,
        plugins=_array(_object(("pluginRef",), pluginRef=_REF,
                               weight={"type": "number", "minimum": 0})))),
    dataLayer=_object(
        injectDefaults={"type": "boolean"},
        sources=_array(_object(("pluginRef", "extractors"), pluginRef=_REF,
                               extractors=_array(_object(("pluginRef",), pluginRef=_REF))))),
)


def plugin_names(config: dict[str, Any]) -> set[str]:
    """The names profiles and data sources refer to plugins by: `name`, else `type`."""
    return {plugin.get("name", plugin["type"]) for plugin in config["plugins"]}
