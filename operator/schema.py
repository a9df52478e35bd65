"""Kubernetes structural OpenAPI schemas generated from the typed pydantic specs.

One generator serves the ``DuplexModel`` CRD (``openapi_schema``) and the Helm chart's ``values.schema.json``
(``values_json_schema``), so the CRD, the Helm values and the CLI flags never drift apart.

Field names: Python code uses snake_case (the pydantic models); Kubernetes objects use camelCase, the
aliases of the specs' ``to_camel`` alias generator, so ``camel_case`` just picks pydantic's ``by_alias``.
"""

from __future__ import annotations

import copy
import re
import typing
from typing import Any, Literal

from pydantic import BaseModel

Json = dict[str, Any]

_DROP_KEYS = {"title", "additionalProperties", "$defs", "examples"}


def _models_in(model: type[BaseModel], found: dict[str, type[BaseModel]]) -> dict[str, type[BaseModel]]:
    """All pydantic models reachable from ``model``'s fields, by class name (the JSON schema $def name)."""
    found[model.__name__] = model
    for field in model.model_fields.values():
        for arg in _flatten(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg.__name__ not in found:
                _models_in(arg, found)
    return found


def _flatten(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if not args or typing.get_origin(annotation) is Literal:
        return [annotation]
    out: list[Any] = []
    for a in args:
        out.extend(_flatten(a))
    return out


def _factory_defaults(models: dict[str, type[BaseModel]], by_alias: bool) -> dict[tuple[str, str], Any]:
    """Defaults given by ``default_factory`` (pydantic leaves them out of the JSON schema)."""
    out: dict[tuple[str, str], Any] = {}
    for name, m in models.items():
        for fname, field in m.model_fields.items():
            if field.default_factory is not None:
                value = field.default_factory()  # type: ignore[call-arg]
                if isinstance(value, BaseModel):
                    value = value.model_dump(mode="json", by_alias=by_alias)
                # keyed like the schema's properties: by alias when the schema is
                out[(name, field.alias if by_alias and field.alias else fname)] = value
    return out


def _is_null(s: Json) -> bool:
    return s.get("type") == "null"


def _convert(
    node: Json, defs: Json, model_name: str | None, factory: dict[tuple[str, str], Any], openapi: bool, camel_case: bool
) -> Json:
    """Turn one pydantic JSON-schema node into a structural OpenAPI v3 (or plain JSON-schema) node."""
    node = copy.deepcopy(node)
    ref = node.pop("$ref", None)
    if ref is None and "allOf" in node and len(node["allOf"]) == 1 and "$ref" in node["allOf"][0]:
        ref = node.pop("allOf")[0]["$ref"]
    if ref is not None:
        return _convert_ref(node, ref, defs, factory, openapi, camel_case)
    if "anyOf" in node:
        return _convert_union(node, defs, model_name, factory, openapi, camel_case)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("type") == "object" and "properties" in node:
        node["properties"] = _convert_properties(node["properties"], defs, model_name, factory, openapi, camel_case)
        if not openapi:
            node["additionalProperties"] = False
    if node.get("type") == "array" and "items" in node:
        node["items"] = _convert(node["items"], defs, None, factory, openapi, camel_case)
    return _finish(node, openapi)


def _convert_ref(
    node: Json, ref: str, defs: Json, factory: dict[tuple[str, str], Any], openapi: bool, camel_case: bool
) -> Json:
    """A reference to a nested model: inlined, with the referring field's description and default."""
    target_name = ref.rsplit("/", 1)[-1]
    target = _convert(defs[target_name], defs, target_name, factory, openapi, camel_case)
    description = node.get("description", target.get("description"))
    had_default = "default" in node
    node = {**target, **({"description": description} if description else {})}
    if had_default:
        # A nested object with a default defaults to {}: the API server then fills in its fields' defaults.
        node["default"] = {}
    return node


def _convert_union(
    node: Json, defs: Json, model_name: str | None, factory: dict[tuple[str, str], Any], openapi: bool, camel_case: bool
) -> Json:
    """``X | None`` (nullable X) and ``int | Literal[...]`` (int-or-string); other unions are not structural."""
    branches = [b for b in node["anyOf"] if not _is_null(b)]
    nullable = len(branches) < len(node["anyOf"])
    types_ = {b.get("type") for b in branches}
    base = {k: v for k, v in node.items() if k != "anyOf"}
    if types_ == {"integer", "string"}:
        # int | Literal["auto"]: Kubernetes' int-or-string.
        strings = [v for b in branches if b.get("type") == "string" for v in (b.get("enum") or [b.get("const")])]
        if openapi:
            # Structural schemas allow no typed anyOf branches here: the string choices become a
            # pattern (which integers are not checked against).
            base["x-kubernetes-int-or-string"] = True
            base["pattern"] = "^(" + "|".join(re.escape(v) for v in strings) + ")$"
        else:
            base["oneOf"] = [{"type": "integer"}, {"type": "string", "enum": strings}]
        node = base
    elif len(branches) == 1:
        node = {**_convert(branches[0], defs, model_name, factory, openapi, camel_case), **base}
    else:
        raise ValueError(f"cannot express union {node} in a structural schema")
    if nullable:
        if openapi:
            node["nullable"] = True
        elif "type" in node:
            node["type"] = [node["type"], "null"]
        if node.get("default", 0) is None:
            node.pop("default")
    return _finish(node, openapi)


def _convert_properties(
    properties: Json,
    defs: Json,
    model_name: str | None,
    factory: dict[tuple[str, str], Any],
    openapi: bool,
    camel_case: bool,
) -> Json:
    """An object's properties, with the defaults ``default_factory`` gives (absent from pydantic's schema)."""
    props: Json = {}
    for fname, sub in properties.items():
        conv = _convert(sub, defs, None, factory, openapi, camel_case)
        if model_name is not None and (model_name, fname) in factory and "default" not in conv:
            value = factory[(model_name, fname)]
            if conv.get("type") == "object" and isinstance(value, dict):
                value = {}  # as for plain nested defaults: the server fills in the fields' defaults
            conv["default"] = value
        props[fname] = conv
    return props


def _finish(node: Json, openapi: bool) -> Json:
    if openapi and node.get("default") == "":
        node.pop("default")  # Kubernetes 1.20 reads an empty-string default as null and rejects it
    for k in _DROP_KEYS:
        if k == "additionalProperties" and not openapi:
            continue
        node.pop(k, None)
    if openapi:
        for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if bound in node and not isinstance(node[bound], bool):
                node[plain] = node.pop(bound)
                node[bound] = True
    return node


def openapi_schema(model: type[BaseModel], camel_case: bool = True) -> Json:
    """Structural OpenAPI v3 schema (CRD ``openAPIV3Schema`` flavour) of a pydantic model: $refs inlined,
    ``int | 'auto'`` as ``x-kubernetes-int-or-string``, descriptions, defaults, bounds and enums kept."""
    raw = model.model_json_schema(by_alias=camel_case, mode="validation")
    defs = raw.get("$defs", {})
    factory = _factory_defaults(_models_in(model, {}), by_alias=camel_case)
    return _convert(raw, defs, model.__name__, factory, openapi=True, camel_case=camel_case)


def values_json_schema(model: type[BaseModel], camel_case: bool = True) -> Json:
    """JSON Schema (draft 2020-12 keywords, as Helm's ``values.schema.json`` accepts) of a pydantic model,
    from the same generator as the CRD: unknown keys rejected, defaults and bounds kept."""
    raw = model.model_json_schema(by_alias=camel_case, mode="validation")
    defs = raw.get("$defs", {})
    factory = _factory_defaults(_models_in(model, {}), by_alias=camel_case)
    out = _convert(raw, defs, model.__name__, factory, openapi=False, camel_case=camel_case)
    out.pop("default", None)
    return {"$schema": "https://json-schema.org/draft-07/schema#", **out}


__all__ = ["openapi_schema", "values_json_schema"]
