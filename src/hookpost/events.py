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

# Two base32 digits per 10 bits, in an alphabet in ASCII order (Crockford's, lower case),
# so equal-length ids sort as their numbers do.
_CROCKFORD: Final = "0123456789abcdefghjkmnpqrstvwxyz"
_DIGIT_PAIRS: Final = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_SHIFTS: Final = tuple(range(120, -1, -10))
_id_lock = threading.Lock()
_last_id = 0


def new_message_ids(count: int) -> list[str]:
    """Return ``count`` new ``msg_`` ids: 48 bits of milliseconds then 80 random bits, in base32.

    Within a process ids only grow (an id drawn lower than the previous one in the
    same millisecond becomes the previous one plus one), so id order is creation
    order there. Time order also keeps primary-key inserts at the right edge of the
    index. The alphabet has no dots, as Standard Webhooks requires of ``webhook-id``.
    """
    global _last_id
    base = (time.time_ns() // 1_000_000) << 80
    noise = os.urandom(10 * count)
    pairs = _DIGIT_PAIRS
    ids = []
    with _id_lock:
        last = _last_id
        for start in range(0, 10 * count, 10):
            value = base | int.from_bytes(noise[start : start + 10], "big")
            if value <= last:
                value = last + 1
            last = value
            # 128 bits, shifted to 130, make 26 digits: 13 pairs of 10 bits.
            shifted = value << 2
            ids.append("msg_" + "".join([pairs[(shifted >> shift) & 1023] for shift in _SHIFTS]))
        _last_id = last
    return ids


def new_message_id() -> str:
    """Return one new ``msg_`` id (see ``new_message_ids``)."""
    return new_message_ids(1)[0]


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


_JSON_NATIVE: Final = frozenset({str, int, float, bool, type(None)})


def _lenient(value: object) -> Any:
    """Convert what the encoder can take; leave the rest for the encoder to name in its error."""
    try:
        return _default(value)
    except _Unencodable:
        return value


def _typed(kind: type, convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def converter(value: Any) -> Any:
        return convert(value) if isinstance(value, kind) else _lenient(value)

    return converter


def _converter_for(model_field: models.Field[Any, Any]) -> Callable[[Any], Any]:
    """The converter for values of ``model_field``: a direct one for common types, else lenient."""
    if isinstance(model_field, models.DecimalField):
        return _typed(decimal.Decimal, str)
    if isinstance(model_field, models.UUIDField):
        return _typed(uuid.UUID, str)
    if isinstance(model_field, models.DateTimeField):
        return _typed(dt.datetime, format_datetime)
    if isinstance(model_field, models.DateField):
        return _typed(dt.date, dt.date.isoformat)
    return _lenient


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_default)


def _find_unencodable(value: object, path: str, depth: int = 0) -> str:
    """Return the path of the first value inside ``value`` that the encoder refuses."""
    if depth > 100:
        return f"{path} (nested too deep, or circular)"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                return f"{path}[{key!r}] (key)"
            found = _find_unencodable(item, f"{path}.{key}", depth + 1)
            if found:
                return found
        return ""
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find_unencodable(item, f"{path}[{index}]", depth + 1)
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


# The C encoder, made once: ``JSONEncoder.encode`` builds a new one on every call, which
# costs as much as encoding a small object. No circular-reference markers: a cycle ends in
# RecursionError, reported like any other unencodable payload.
_c_encoder = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)


def _encode_compact(value: Any) -> str:
    if _c_encoder is None:  # pragma: no cover - CPython always has the C encoder
        return _encoder.encode(value)
    return "".join(_c_encoder(value, 0))


def encode_data(data: Any) -> str:
    """Encode an event's ``data`` as compact JSON, or raise ``PayloadError`` naming the path."""
    try:
        return _encode_compact(data)
    except (_Unencodable, TypeError, ValueError, RecursionError) as exc:
        path = _find_unencodable(data, "data") or "data"
        offending: object = exc.value if isinstance(exc, _Unencodable) else None
        raise PayloadError(path, offending) from None


@dataclass(frozen=True, slots=True)
class Frame:
    """Everything in an envelope but ``data``, encoded once and shared by the events of a batch."""

    event_type: str
    occurred_at: dt.datetime
    origin: dict[str, Any] | None
    origin_json: str | None
    head: str
    tail: str

    @classmethod
    def build(cls, event_type: str, occurred_at: dt.datetime, origin: dict[str, Any] | None = None) -> Frame:
        """Pre-encode the parts around ``data``, in the key order of ``build_envelope``."""
        origin_json = None if origin is None else encode(origin)
        head = (
            f'{{"type":{json.dumps(event_type)},'
            f'"timestamp":{json.dumps(format_datetime(occurred_at))},"data":'
        )
        tail = "}" if origin_json is None else f',"origin":{origin_json}}}'
        return cls(event_type, occurred_at, origin, origin_json, head, tail)

    def encode(self, data: Any) -> str:
        """The envelope around ``data``, as compact JSON (``PayloadError`` if ``data`` cannot be)."""
        return self.head + encode_data(data) + self.tail

    def envelope(self, data: Any) -> dict[str, Any]:
        """The envelope around ``data``, as a dict."""
        return build_envelope(self.event_type, self.occurred_at, data, self.origin)


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
    concrete_attnames: frozenset[str] = field(default=frozenset(), repr=False)
    # (payload key, attname, converter to a JSON type) per concrete field.
    readers: tuple[tuple[str, str, Callable[[Any], Any]], ...] = field(default=(), repr=False)

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
        loaded = instance.__dict__
        if loaded.keys() >= self.concrete_attnames:
            return set()
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
        concrete_attnames=frozenset(f.attname for f in concrete_fields),
        readers=tuple((f.name, f.attname, _converter_for(f)) for f in concrete_fields),
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
        for name, attname, convert in spec.readers:
            value = values[attname]
            if value.__class__ not in _JSON_NATIVE:
                # Converting here, with a converter picked for the field, is cheaper than the
                # encoder's ``default`` hook trying each type in turn.
                value = convert(value)
            fields[name] = value
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


def is_cascade(origin: object, instance: models.Model) -> bool:
    """Whether a delete of ``instance`` started elsewhere: at another model, or another row."""
    if isinstance(origin, models.QuerySet):
        return origin.model._meta.concrete_model is not type(instance)._meta.concrete_model
    if isinstance(origin, models.Model):
        return (
            type(origin)._meta.concrete_model is not type(instance)._meta.concrete_model
            or origin.pk != instance.pk
        )
    return False


def describe_origin(origin: object, instance: models.Model) -> dict[str, Any] | None:
    """Describe what a delete started from: model label, pk (None for a queryset) and ``cascade``."""
    if isinstance(origin, models.Model):
        return {
            "model": type(origin)._meta.label_lower,
            "pk": origin.pk,
            "cascade": is_cascade(origin, instance),
        }
    if isinstance(origin, models.QuerySet):
        return {
            "model": origin.model._meta.label_lower,
            "pk": None,
            "cascade": is_cascade(origin, instance),
        }
    return None
