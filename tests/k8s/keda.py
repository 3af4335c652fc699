"""KEDA's custom resources for the test API server, generated from the pydantic models of PyPI
`cloudcoil-models-keda`, and a strict check of an object against those models.

The CRDs' `openAPIV3Schema` is the models' JSON schema made structural (as apiextensions.k8s.io/v1
requires): `$ref`s inlined, `Optional[X]` as X, int-or-string unions as
`x-kubernetes-int-or-string`, titles and defaults dropped. The API server then prunes any field
the models do not know, so reading an object back shows whether it had unknown fields.
"""

from __future__ import annotations

from typing import Any

from cloudcoil.models.keda import v1alpha1
from pydantic import BaseModel

KINDS: dict[str, tuple[type[BaseModel], str]] = {
    "ScaledObject": (v1alpha1.ScaledObject, "scaledobjects"),
    "TriggerAuthentication": (v1alpha1.TriggerAuthentication, "triggerauthentications"),
}
_DROPPED = {"title", "default", "const", "examples", "$schema", "discriminator"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _structural(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = [o for o in node[key] if o.get("type") != "null"]
            rest = {k: v for k, v in node.items() if k != key}
            if len(options) == 1:
                return _structural({**rest, **options[0]}, defs)
            types = {o.get("type") for o in options}
            if types <= {"integer", "string"}:
                return {"x-kubernetes-int-or-string": True}
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or key == "$defs":
            continue
        if key == "properties":
            out[key] = {name: _structural(v, defs) for name, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
        else:
            out[key] = value
    if "type" not in out and "x-kubernetes-int-or-string" not in out:
        out["type"] = "object"
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of one KEDA kind, from its model."""
    model, plural = KINDS[kind]
    schema = model.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})
    props = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": _structural(schema["properties"]["spec"], defs),
    }
    if "status" in schema["properties"]:
        props["status"] = _structural(schema["properties"]["status"], defs)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.keda.sh"},
        "spec": {
            "group": "keda.sh",
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": kind.lower(),
                "listKind": f"{kind}List",
            },
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": props}},
                    "subresources": {"status": {}},
                }
            ],
        },
    }


def strictly_valid(obj: dict[str, Any]) -> BaseModel:
    """Validate a KEDA object with its model; AssertionError if the model drops a field of it
    (an unknown field: the models themselves ignore extras)."""
    model, _ = KINDS[obj["kind"]]
    parsed = model.model_validate(obj)
    dumped = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    meta_keys = {"name", "namespace", "labels", "annotations"}
    given = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k in meta_keys}}
    dumped["metadata"] = {k: v for k, v in dumped.get("metadata", {}).items() if k in meta_keys}
    assert _without_defaults(dumped, given) == given, f"fields unknown to the KEDA models: {obj}"
    return parsed


def _without_defaults(dumped: Any, given: Any) -> Any:
    """`dumped` restricted to the keys `given` has (the models add defaults such as apiVersion);
    a key of `given` missing from `dumped` stays missing, so the comparison fails."""
    if isinstance(dumped, dict) and isinstance(given, dict):
        return {k: _without_defaults(dumped[k], given[k]) for k in given if k in dumped}
    if isinstance(dumped, list) and isinstance(given, list):
        return [_without_defaults(d, g) for d, g in zip(dumped, given, strict=False)]
    return dumped
