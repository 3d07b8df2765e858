"""What an event is: model specs, instance snapshots, the JSON envelope, message ids and type patterns."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from django.db import models
from django.db.models.fields.files import FieldFile
from django.utils.duration import duration_iso_string
from django.utils.functional import Promise

from hookpost.exceptions import ConfigurationError, PayloadError

ACTIONS: Final = ("created", "updated", "deleted")
CASCADE_EMIT: Final = "emit"
CASCADE_SKIP: Final = "skip"
CASCADE_CHOICES: Final = (CASCADE_EMIT, CASCADE_SKIP)
ALL_FIELDS: Final = "__all__"
#: Where capture leaves many-to-many pks it read in bulk: ``{field name: [pk, …]}``.
M2M_ATTR: Final = "_hookpost_m2m"

_TYPE_RE = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")
_PATTERN_RE = re.compile(r"[A-Za-z0-9_\-*]+(?:\.[A-Za-z0-9_\-*]+)*")
MAX_TYPE_LENGTH: Final = 200

Serializer = Callable[[models.Model], Any]


# --- event types and patterns -------------------------------------------------------------


def validate_event_type(event_type: object) -> str:
    """Return ``event_type`` if it is a dotted name such as ``library.book.deleted``, else raise."""
    if (
        not isinstance(event_type, str)
        or len(event_type) > MAX_TYPE_LENGTH
        or not _TYPE_RE.fullmatch(event_type)
    ):
        raise ValueError(
            f"invalid event type {event_type!r}: use dot-separated words of letters, digits, "
            f"'_' and '-', at most {MAX_TYPE_LENGTH} characters (e.g. 'library.book.deleted')"
        )
    return event_type


def validate_type_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is an event type that may hold ``*`` wildcards, else raise."""
    if not isinstance(pattern, str) or len(pattern) > MAX_TYPE_LENGTH or not _PATTERN_RE.fullmatch(pattern):
        raise ValueError(
            f"invalid event type pattern {pattern!r}: an event type in which '*' matches any "
            "run of characters (e.g. 'library.book.*', '*.deleted' or '*')"
        )
    return pattern


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


_pattern_cache: dict[str, re.Pattern[str]] = {}


def type_matches(pattern: str, event_type: str) -> bool:
    """Tell whether ``event_type`` matches ``pattern``, where ``*`` matches any run of characters."""
    if pattern == "*":
        return True
    if "*" not in pattern:
        return pattern == event_type
    compiled = _pattern_cache.get(pattern)
    if compiled is None:
        compiled = _pattern_cache.setdefault(pattern, _compile_pattern(pattern))
    return compiled.fullmatch(event_type) is not None


# --- message ids ----------------------------------------------------------------------------

_CROCKFORD: Final = "0123456789abcdefghjkmnpqrstvwxyz"


_id_lock = threading.Lock()
_last_id = 0


def new_message_id() -> str:
    """Return a new ``msg_`` id: 48 bits of milliseconds then 80 random bits, base32, time-sortable.

    Within a process ids only grow (a second id in the same millisecond is the
    previous one plus one), so id order is creation order there. Time order also
    keeps primary-key inserts at the right edge of the index. The alphabet has
    no dots, as Standard Webhooks requires of ``webhook-id``.
    """
    global _last_id
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    with _id_lock:
        if value <= _last_id:
            value = _last_id + 1
        _last_id = value
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "msg_" + "".join(reversed(chars))


# --- JSON encoding ------------------------------------------------------------------------------


class _Unencodable(Exception):
    def __init__(self, value: object) -> None:
        self.value = value


def format_datetime(value: dt.datetime) -> str:
    """ISO 8601, in UTC with a ``Z`` when the value is aware (naive values are written as they are)."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None).isoformat() + "Z"
    return value.isoformat()


def _default(value: object) -> Any:
    # Ordered by how often each type turns up in model fields.
    if isinstance(value, dt.datetime):
        return format_datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        # A string keeps every digit; a float would round money.
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, FieldFile):
        return value.name or None
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return duration_iso_string(value)
    if isinstance(value, Promise):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise _Unencodable(value)


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_default)


def _find_unencodable(value: object, path: str) -> str:
    """Return the path of the first value inside ``value`` that the encoder refuses."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                return f"{path}[{key!r}] (key)"
            found = _find_unencodable(item, f"{path}.{key}")
            if found:
                return found
        return ""
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find_unencodable(item, f"{path}[{index}]")
            if found:
                return found
        return ""
    if isinstance(value, str | int | bool) or value is None:
        return ""
    if isinstance(value, float):
        return "" if value == value and value not in (float("inf"), float("-inf")) else path
    try:
        _default(value)
    except _Unencodable:
        return path
    return ""


def encode(envelope: Mapping[str, Any]) -> str:
    """Encode an envelope as compact JSON, or raise ``PayloadError`` naming the offending path."""
    try:
        return _encoder.encode(envelope)
    except (_Unencodable, TypeError, ValueError) as exc:
        path = _find_unencodable(envelope, "") or "payload"
        offending: object = exc.value if isinstance(exc, _Unencodable) else None
        raise PayloadError(path.lstrip("."), offending) from None


def encode_lossy(envelope: Mapping[str, Any]) -> str:
    """Encode an envelope with ``repr()`` standing in for what JSON cannot hold (for invalid events)."""
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), default=_lossy_default)


def _lossy_default(value: object) -> Any:
    try:
        return _default(value)
    except _Unencodable:
        return repr(value)


def build_envelope(
    event_type: str,
    occurred_at: dt.datetime,
    data: Any,
    origin: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the Standard Webhooks envelope: ``type``, ``timestamp``, ``data`` (+ ``origin`` for deletes)."""
    envelope: dict[str, Any] = {
        "type": event_type,
        "timestamp": format_datetime(occurred_at),
        "data": data,
    }
    if origin is not None:
        envelope["origin"] = origin
    return envelope


# --- model specs and snapshots ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A validated model registration: which actions of which model emit which fields."""

    model: type[models.Model]
    actions: frozenset[str]
    fields: tuple[str, ...] | Literal["__all__"]
    serializer: Serializer | None = None
    when_changed: tuple[str, ...] = ()
    cascade: str = CASCADE_EMIT
    type_prefix: str = ""
    include_raw: bool = False
    # Resolved once from ``fields``: (payload key, model field) pairs.
    concrete: tuple[tuple[str, models.Field[Any, Any]], ...] = field(default=(), repr=False)
    many_to_many: tuple[str, ...] = field(default=(), repr=False)
    when_changed_attnames: tuple[str, ...] = field(default=(), repr=False)
    file_fields: tuple[str, ...] = field(default=(), repr=False)

    @property
    def label(self) -> str:
        """The model's lower-case label, as it appears in payloads (``library.book``)."""
        return self.model._meta.label_lower

    def event_type(self, action: str) -> str:
        """The event type this spec emits for ``action``, such as ``library.book.deleted``."""
        return f"{self.type_prefix}.{action}"

    @property
    def event_types(self) -> list[str]:
        """Every event type this spec can emit, in action order."""
        return [self.event_type(action) for action in ACTIONS if action in self.actions]

    def deferred_attnames(self, instance: models.Model) -> set[str]:
        """The payload fields that ``instance`` has not loaded (from ``only()``/``defer()``)."""
        if not self.concrete:
            return set()
        loaded = instance.__dict__
        return {f.attname for _, f in self.concrete if f.attname not in loaded}


def make_model_spec(
    model: type[models.Model],
    *,
    actions: object = ACTIONS,
    fields: object = None,
    serializer: object = None,
    when_changed: object = (),
    cascade: object = CASCADE_EMIT,
    type_prefix: object = None,
    include_raw: object = False,
) -> ModelSpec:
    """Validate registration options and return a spec, or raise ``ConfigurationError`` with a check id."""
    problems = model_spec_problems(
        model,
        actions=actions,
        fields=fields,
        serializer=serializer,
        when_changed=when_changed,
        cascade=cascade,
        type_prefix=type_prefix,
    )
    if problems:
        check_id, message = problems[0]
        raise ConfigurationError(check_id, message)
    # Validated above: the options have the shapes the checks demand.
    action_list = cast("Iterable[str]", actions)
    field_list = cast("Sequence[str]", fields)
    watched = cast("Sequence[str]", when_changed)
    opts = model._meta
    concrete_fields: list[models.Field[Any, Any]] = []
    m2m: list[str] = []
    if fields == ALL_FIELDS:
        concrete_fields = list(opts.concrete_fields)
    else:
        for name in field_list:
            f = opts.get_field(name)
            if f.many_to_many:
                m2m.append(f.name)
            else:
                concrete_fields.append(cast("models.Field[Any, Any]", f))
    changed = tuple(cast("models.Field[Any, Any]", opts.get_field(name)).attname for name in watched)
    return ModelSpec(
        model=model,
        actions=frozenset(action_list),
        fields=ALL_FIELDS if fields == ALL_FIELDS else tuple(field_list),
        serializer=cast("Serializer | None", serializer),
        when_changed=tuple(watched),
        cascade=str(cascade),
        type_prefix=str(type_prefix or opts.label_lower),
        include_raw=bool(include_raw),
        concrete=tuple((f.name, f) for f in concrete_fields),
        many_to_many=tuple(m2m),
        when_changed_attnames=changed,
        file_fields=tuple(f.name for f in concrete_fields if isinstance(f, models.FileField)),
    )


def model_spec_problems(
    model: type[models.Model],
    *,
    actions: object,
    fields: object,
    serializer: object,
    when_changed: object,
    cascade: object,
    type_prefix: object,
) -> list[tuple[str, str]]:
    """Return ``(check id, message)`` for every problem of a registration; empty when valid."""
    label = model._meta.label
    problems: list[tuple[str, str]] = []
    if (
        not isinstance(actions, list | tuple | set | frozenset)
        or not actions
        or any(a not in ACTIONS for a in actions)
    ):
        problems.append(
            (
                "hookpost.E005",
                f"{label}: actions must be a non-empty list drawn from {ACTIONS}, got {actions!r}",
            )
        )
    field_names: object = fields
    if fields is None:
        problems.append(
            (
                "hookpost.E008",
                f"{label}: say which fields to send: a list of field names or "
                f"'{ALL_FIELDS}' (hookpost never sends every column by default)",
            )
        )
        field_names = ()
    elif fields == ALL_FIELDS:
        field_names = ()
    elif not isinstance(fields, list | tuple) or not all(isinstance(f, str) for f in fields):
        problems.append(
            (
                "hookpost.E008",
                f"{label}: fields must be a list of field names or '{ALL_FIELDS}', got {fields!r}",
            )
        )
        field_names = ()
    if not isinstance(when_changed, list | tuple) or not all(isinstance(f, str) for f in when_changed):
        problems.append(
            ("hookpost.E002", f"{label}: when_changed must be a list of field names, got {when_changed!r}")
        )
        when_changed = ()
    for name in [*field_names, *when_changed]:  # type: ignore[misc]
        try:
            f = model._meta.get_field(name)
        except Exception:
            problems.append(("hookpost.E002", f"{label} has no field {name!r}"))
            continue
        if not f.concrete and not f.many_to_many:
            problems.append(
                (
                    "hookpost.E002",
                    f"{label}.{name} is a reverse relation; list fields the model itself declares",
                )
            )
        elif name in when_changed and f.many_to_many:
            problems.append(
                (
                    "hookpost.E002",
                    f"{label}.{name}: when_changed cannot watch a many-to-many "
                    "field (saving the object does not change it)",
                )
            )
    if when_changed and isinstance(actions, list | tuple | set | frozenset) and ("updated" not in actions):
        problems.append(
            (
                "hookpost.E002",
                f"{label}: when_changed only applies to 'updated', which is not among the actions",
            )
        )
    if serializer is not None and not callable(serializer):
        problems.append(
            (
                "hookpost.E003",
                f"{label}: serializer must be callable (a function taking the "
                f"instance, or a serializer class), got {serializer!r}",
            )
        )
    if cascade not in CASCADE_CHOICES:
        problems.append(
            ("hookpost.E006", f"{label}: cascade must be one of {CASCADE_CHOICES}, got {cascade!r}")
        )
    if type_prefix is not None:
        try:
            validate_event_type(type_prefix)
        except ValueError as exc:
            problems.append(("hookpost.E009", f"{label}: type_prefix: {exc}"))
    return problems


def snapshot(instance: models.Model, spec: ModelSpec) -> dict[str, Any]:
    """Return the ``data`` of an event for ``instance``: its model label, pk and registered fields.

    Fields are read as stored (foreign keys as their raw id); the caller has
    loaded any deferred ones. A serializer, when given, replaces ``fields``.
    """
    if spec.serializer is not None:
        serializer = spec.serializer
        # A serializer class (DRF-style) is instantiated and its ``.data`` read.
        fields = serializer(instance).data if isinstance(serializer, type) else serializer(instance)
    else:
        values = instance.__dict__
        fields = {}
        for name, f in spec.concrete:
            fields[name] = values[f.attname]
        for name in spec.file_fields:
            # A FieldFile once saved, the raw name when read from the database: send the name.
            value = fields[name]
            fields[name] = getattr(value, "name", value) or None
        for name in spec.many_to_many:
            fields[name] = _many_to_many_pks(instance, name)
    return {"model": spec.label, "pk": instance.pk, "fields": fields}


def _many_to_many_pks(instance: models.Model, name: str) -> list[Any]:
    """The related pks of a many-to-many field, from the prefetch cache when there is one."""
    if instance.pk is None:
        return []
    preloaded = instance.__dict__.get(M2M_ATTR)
    if preloaded is not None and name in preloaded:
        return cast("list[Any]", preloaded[name])
    prefetched = getattr(instance, "_prefetched_objects_cache", {})
    if name in prefetched:
        return [obj.pk for obj in prefetched[name]]
    return list(getattr(instance, name).values_list("pk", flat=True))


def describe_origin(origin: object, instance: models.Model) -> dict[str, Any] | None:
    """Describe what a delete started from: model label, pk (None for a queryset) and ``cascade``."""
    if isinstance(origin, models.Model):
        model: type[models.Model] = type(origin)
        pk = origin.pk
        cascade = model._meta.concrete_model is not type(instance)._meta.concrete_model or (pk != instance.pk)
    elif isinstance(origin, models.QuerySet):
        model = origin.model
        pk = None
        cascade = model._meta.concrete_model is not type(instance)._meta.concrete_model
    else:
        return None
    return {"model": model._meta.label_lower, "pk": pk, "cascade": cascade}
