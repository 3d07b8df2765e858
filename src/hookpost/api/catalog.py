"""The event-type catalog: every type the registry can emit, each with a JSON Schema of its webhook body."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Final, Literal

from django.db import models

from hookpost.events import ACTIONS, ModelSpec
from hookpost.outbox import TEST_EVENT_TYPE
from hookpost.registry import Registry, SignalSpec, registry

#: The JSON Schema dialect of every schema in the catalog.
DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

Kind = Literal["model", "signal", "builtin"]

# What each kind of model field is sent as (see hookpost.events: decimals, dates, UUIDs and
# durations become strings, files their name). Order matters: subclasses come first.
_FIELD_SCHEMAS: Final[tuple[tuple[type[models.Field[Any, Any]], dict[str, Any]], ...]] = (
    (models.BooleanField, {"type": "boolean"}),
    (models.IntegerField, {"type": "integer"}),  # every auto, small, big and positive kind too
    (models.FloatField, {"type": "number"}),
    (models.DecimalField, {"type": "string", "format": "decimal", "description": "every digit kept"}),
    (models.DateTimeField, {"type": "string", "format": "date-time"}),
    (models.DateField, {"type": "string", "format": "date"}),
    (models.TimeField, {"type": "string", "description": "ISO 8601 time"}),
    (models.DurationField, {"type": "string", "description": "ISO 8601 duration"}),
    (models.UUIDField, {"type": "string", "format": "uuid"}),
    (models.BinaryField, {"type": "string", "contentEncoding": "base64"}),
    (models.JSONField, {}),
    (models.CharField, {"type": "string"}),
    (models.TextField, {"type": "string"}),
    (models.GenericIPAddressField, {"type": "string"}),
)

_ORIGIN: Final = {
    "type": "object",
    "description": "Where the delete started: this row, another row (a cascade) or a queryset (pk null).",
    "properties": {
        "model": {"type": "string"},
        "pk": {"description": "The pk of the row the delete started from; null for a queryset."},
        "cascade": {"type": "boolean"},
    },
    "required": ["model", "pk", "cascade"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class CatalogEntry:
    """One event type: where it comes from, and the JSON Schema of the webhook body that carries it."""

    type: str
    kind: Kind
    model: str | None
    action: str | None
    description: str
    schema: dict[str, Any]


def event_catalog(source: Registry = registry) -> list[CatalogEntry]:
    """Every event type ``source`` can emit, plus hookpost's own test event, sorted by type."""
    entries = [_model_entry(spec, action) for spec in source.model_specs for action in _actions(spec)]
    entries.extend(_signal_entry(spec) for spec in source.signal_specs)
    entries.append(_test_entry())
    return sorted(entries, key=lambda entry: entry.type)


def field_schema(field: models.Field[Any, Any]) -> dict[str, Any]:
    """The JSON Schema of a model field's value in a payload: foreign keys as their target's type."""
    if isinstance(field, models.FileField):
        # Sent as the file's name, or null when there is none.
        return {"type": ["string", "null"]}
    schema = _value_schema(field)
    if field.null and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    return schema


def _value_schema(field: models.Field[Any, Any]) -> dict[str, Any]:
    if isinstance(field, models.ForeignKey):  # OneToOneField too
        return _value_schema(field.target_field)
    for kind, schema in _FIELD_SCHEMAS:
        if isinstance(field, kind):
            return dict(schema)
    # A custom field: whatever it stores, as the encoder writes it.
    return {}


def _actions(spec: ModelSpec) -> list[str]:
    return [action for action in ACTIONS if action in spec.actions]


def _model_entry(spec: ModelSpec, action: str) -> CatalogEntry:
    event_type = spec.event_type(action)
    description = f"A {spec.label} was {action}."
    return CatalogEntry(
        type=event_type,
        kind="model",
        model=spec.label,
        action=action,
        description=description,
        schema=envelope_schema(event_type, description, _model_data_schema(spec), origin=action == "deleted"),
    )


def _model_data_schema(spec: ModelSpec) -> dict[str, Any]:
    opts = spec.model._meta
    fields: dict[str, Any]
    if spec.serializer is not None:
        fields = {"type": "object", "description": "Built by the registration's serializer."}
    else:
        properties = {name: field_schema(field) for name, field in spec.concrete}
        for name in spec.many_to_many:
            related = opts.get_field(name).related_model
            assert isinstance(related, type)  # a many-to-many field always has its model resolved
            properties[name] = {"type": "array", "items": _value_schema(related._meta.pk)}
        fields = {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }
    return {
        "type": "object",
        "properties": {
            "model": {"const": spec.label},
            "pk": _value_schema(opts.pk),
            "fields": fields,
        },
        "required": ["model", "pk", "fields"],
        "additionalProperties": False,
    }


def _signal_entry(spec: SignalSpec) -> CatalogEntry:
    doc = inspect.getdoc(spec.payload) or ""
    # The payload function's docstring says what the event means, when it has one.
    description = doc.splitlines()[0] if doc else "Sent by a registered signal."
    data = {"description": "What the registration's payload function returns."}
    return CatalogEntry(
        type=spec.event_type,
        kind="signal",
        model=None,
        action=None,
        description=description,
        schema=envelope_schema(spec.event_type, description, data),
    )


def _test_entry() -> CatalogEntry:
    description = "A test event, sent to one endpoint on request (API, admin or command)."
    data = {
        "type": "object",
        "properties": {"endpoint": {"type": "integer"}, "message": {"type": "string"}},
        "required": ["endpoint", "message"],
        "additionalProperties": False,
    }
    return CatalogEntry(
        type=TEST_EVENT_TYPE,
        kind="builtin",
        model=None,
        action=None,
        description=description,
        schema=envelope_schema(TEST_EVENT_TYPE, description, data),
    )


def envelope_schema(
    event_type: str, description: str, data: dict[str, Any], *, origin: bool = False
) -> dict[str, Any]:
    """The JSON Schema of a webhook body of ``event_type``: the envelope around ``data``."""
    properties: dict[str, Any] = {
        "type": {"const": event_type},
        "timestamp": {"type": "string", "format": "date-time"},
        "data": data,
    }
    if origin:
        properties["origin"] = _ORIGIN
    return {
        "$schema": DIALECT,
        "title": event_type,
        "description": description,
        "type": "object",
        "properties": properties,
        "required": ["type", "timestamp", "data"],
        "additionalProperties": False,
    }
