"""HTML form fields generated from a wait's decision schema, and the form's values turned back into data.

Flat object schemas (what a pydantic model of scalars and enums emits) become one input per property:
``enum`` → select, ``boolean`` → checkbox, ``integer``/``number`` → number input with its bounds,
``string`` → text input (a textarea past 200 characters). Arrays and nested objects get a JSON textarea.
The data is validated against the schema by the engine afterwards, whatever the form allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from approvals.errors import InvalidPayload
from hitl.infra.jsonsafe import loads

#: Prefix of schema fields in the posted form, so they never clash with ``comment`` or ``action``.
PREFIX = "f."


@dataclass(frozen=True)
class FormField:
    """One input of a decision form."""

    name: str
    label: str
    widget: str  # text | textarea | number | checkbox | select | json
    required: bool
    description: str = ""
    options: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    default: Any = None

    @property
    def input_name(self) -> str:
        """The name of the HTML input."""
        return PREFIX + self.name


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        schema = {
            **root.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {}),
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
    for key in ("anyOf", "oneOf"):  # Optional[X] is anyOf [X, null]: use X
        choices = [c for c in schema.get(key, []) if c.get("type") != "null"]
        if len(choices) == 1:
            schema = {**_resolve(choices[0], root), **{k: v for k, v in schema.items() if k != key}}
    return schema


def fields_of(schema: dict[str, Any] | None) -> list[FormField]:
    """Return the form fields of a decision schema (none for no schema)."""
    if not schema:
        return []
    required = set(schema.get("required", []))
    out = []
    for name, raw in schema.get("properties", {}).items():
        prop = _resolve(raw, schema)
        kind = prop.get("type")
        attrs: dict[str, Any] = {}
        options: list[str] = []
        if "enum" in prop:
            widget, options = "select", [str(v) for v in prop["enum"]]
        elif kind == "boolean":
            widget = "checkbox"
        elif kind in ("integer", "number"):
            widget = "number"
            attrs["step"] = "1" if kind == "integer" else "any"
            for src, dst in (("minimum", "min"), ("maximum", "max")):
                if src in prop:
                    attrs[dst] = prop[src]
        elif kind == "string":
            widget = "textarea" if prop.get("maxLength", 0) > 200 else "text"
            if "maxLength" in prop:
                attrs["maxlength"] = prop["maxLength"]
        else:
            widget = "json"
        out.append(
            FormField(
                name=name,
                label=prop.get("title") or name.replace("_", " ").capitalize(),
                widget=widget,
                required=name in required,
                description=prop.get("description", ""),
                options=options,
                attrs=attrs,
                default=prop.get("default"),
            )
        )
    return out


def data_from_form(schema: dict[str, Any] | None, form: dict[str, str]) -> dict[str, Any]:
    """Turn posted form values into decision data, typed by the schema (empty optional fields are left out).

    Values that do not parse (``NaN`` and infinities included: JSON has none) are passed on as text, so the
    schema check names the field.
    """
    data: dict[str, Any] = {}
    for f in fields_of(schema):
        raw = form.get(f.input_name)
        if f.widget == "checkbox":
            data[f.name] = raw is not None
            continue
        if raw is None or (raw == "" and not f.required):
            continue
        data[f.name] = _parse(f, raw, schema or {})
    return data


def _parse(f: FormField, raw: str, schema: dict[str, Any]) -> Any:
    prop = _resolve(schema.get("properties", {}).get(f.name, {}), schema)
    try:
        if f.widget == "json":
            return loads(raw, f.name)
        if prop.get("type") == "integer" or (f.widget == "select" and all(isinstance(v, int) for v in prop["enum"])):
            return int(raw)
        if prop.get("type") == "number":
            number = float(raw)
            return number if math.isfinite(number) else raw
    except (ValueError, KeyError, InvalidPayload):
        return raw
    return raw
