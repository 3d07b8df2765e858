"""What the API reads and writes: endpoints (secrets as summaries), REST Hooks, deliveries, the catalog."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, ClassVar, Final

from django.core.validators import URLValidator
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from hookpost.events import MAX_TYPE_LENGTH, validate_type_pattern
from hookpost.models import (
    Attempt,
    Delivery,
    Endpoint,
    validate_endpoint_url,
    validate_headers,
    validate_retry_schedule,
)
from hookpost.retry import DelayTooLarge, parse_delay

#: The longest grace period a rotation accepts, in seconds (90 days).
MAX_GRACE: Final = 90 * 24 * 3600
#: The longest delay a retry schedule entry may name, in seconds (30 days).
MAX_DELAY: Final = 30 * 24 * 3600
MAX_HEADERS: Final = 50
MAX_EVENT_TYPES: Final = 100
MAX_SCHEDULE: Final = 50

# RFC 9110: a header name is a token; a value is visible ASCII, spaces and tabs (no CR or LF,
# which would let a value start a header of its own).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]{0,4096}")


# --- shared fields ----------------------------------------------------------------------------------


def _pattern(value: str) -> None:
    try:
        validate_type_pattern(value)
    except ValueError as exc:
        raise serializers.ValidationError(str(exc)) from None


@extend_schema_field(
    {
        "type": "string",
        "maxLength": MAX_TYPE_LENGTH,
        "pattern": r"^[A-Za-z0-9_\-*]+(\.[A-Za-z0-9_\-*]+)*$",
        "example": "library.book.*",
    }
)
class TypePatternField(serializers.CharField):
    """An event type in which ``*`` matches any run of characters, such as ``library.book.*``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=MAX_TYPE_LENGTH, validators=[_pattern], **kwargs)


def _url_field(**kwargs: Any) -> serializers.URLField:
    # Explicit: a ModelSerializer drops the model's URLValidator (and its schemes) for its own,
    # which would let ftp:// through.
    return serializers.URLField(
        max_length=2048,
        validators=[URLValidator(schemes=["http", "https"]), validate_endpoint_url],
        **kwargs,
    )


class NamedChoiceField(serializers.ChoiceField):
    """A choice field with fixed choices, made by :func:`named_choices`."""

    fixed_choices: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=self.fixed_choices, **kwargs)


def named_choices(name: str, choices: list[tuple[str, str]], doc: str) -> type[NamedChoiceField]:
    """A choice field whose enum is its own schema component, ``name``.

    Several fields called ``status`` hold different choices; named components keep the
    schema free of drf-spectacular's collision warnings without project settings, and
    the ``Hookpost`` prefix keeps them apart from a project's own.
    """
    field = type(f"{name}Field", (NamedChoiceField,), {"__doc__": doc, "fixed_choices": list(choices)})
    schema = {"type": "string", "enum": [value for value, _ in choices]}
    return extend_schema_field(schema, component_name=name)(field)


EndpointStatusField = named_choices(
    "HookpostEndpointStatus", Endpoint.Status.choices, "An endpoint's status: active, paused or disabled."
)
DeliveryStatusField = named_choices(
    "HookpostDeliveryStatus",
    Delivery.Status.choices,
    "A delivery's status: pending, delivered, dead or cancelled.",
)
VerdictField = named_choices(
    "HookpostAttemptVerdict", Attempt.Verdict.choices, "What an attempt's outcome made of its delivery."
)
KindField = named_choices(
    "HookpostEventTypeKind",
    [("model", "a model change"), ("signal", "a custom signal"), ("builtin", "hookpost's test event")],
    "Where an event type comes from.",
)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "number", "minimum": 0, "maximum": MAX_DELAY},
            {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?[smhd]?$", "example": "5m"},
        ]
    }
)
class DelayField(serializers.Field):  # type: ignore[type-arg]
    """One delay of a retry schedule: seconds (``5``, ``0.5``) or a duration (``"5s"``, ``"5m"``)."""

    default_error_messages = {
        "invalid": "Give seconds (5, 0.5) or a duration string ('5s', '5m', '2h', '1d').",
        "too_large": f"A delay may be at most {MAX_DELAY} seconds (30 days).",
    }

    def to_internal_value(self, data: Any) -> int | float | str:
        """Accept a non-negative number, or a duration string, of at most 30 days."""
        if isinstance(data, bool) or not isinstance(data, int | float | str) or len(str(data)) > 40:
            self.fail("invalid")
        try:
            # The retry policy's own reading, so the API accepts exactly what the worker will.
            delay = parse_delay(data.strip() if isinstance(data, str) else data)
        except DelayTooLarge:
            self.fail("too_large")
        except ValueError:
            self.fail("invalid")
        if delay.total_seconds() > MAX_DELAY:
            self.fail("too_large")
        return data

    def to_representation(self, value: Any) -> Any:
        """As stored."""
        return value


# --- endpoints ---------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="HookpostSecretSummary")
class SecretSummarySerializer(serializers.Serializer[dict[str, Any]]):
    """A signing secret as anyone may see it: never the secret itself."""

    fingerprint = serializers.CharField(read_only=True, help_text="Tells secrets apart; not the secret.")
    created_at = serializers.DateTimeField(read_only=True)
    expires_at = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="When a rotated secret stops signing; null: never."
    )
    primary = serializers.BooleanField(read_only=True)
    in_force = serializers.BooleanField(read_only=True, help_text="Whether it signs requests now.")


@extend_schema_serializer(component_name="HookpostEndpoint")
class EndpointSerializer(serializers.ModelSerializer[Endpoint]):
    """An endpoint: where webhooks go, what it subscribes to, how they are sent, and its health."""

    owner: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(read_only=True)
    url = _url_field(help_text="Where to send the webhooks: https (http only if the project allows it).")
    event_types = serializers.ListField(
        child=TypePatternField(),
        allow_empty=False,
        min_length=1,  # for the schema: allow_empty gives the message
        max_length=MAX_EVENT_TYPES,
        help_text="Event types to receive; '*' matches any run of characters (e.g. 'library.book.*').",
    )
    status = EndpointStatusField(
        required=False,
        help_text="'paused': deliveries wait; 'active' resumes (and re-enables a disabled endpoint); "
        "'disabled' cancels pending deliveries.",
    )
    headers = serializers.DictField(
        child=serializers.CharField(allow_blank=True, max_length=4096),
        required=False,
        help_text="Custom headers sent with each request (webhook-* and content headers are hookpost's).",
    )
    retry_schedule = serializers.ListField(
        child=DelayField(),
        allow_empty=False,
        min_length=1,  # for the schema: allow_empty gives the message
        max_length=MAX_SCHEDULE,
        required=False,
        allow_null=True,
        help_text='Delays before each attempt, e.g. [0, "5s", "5m", "1h"]; null: the default schedule.',
    )
    rate_limit = serializers.FloatField(
        required=False,
        allow_null=True,
        min_value=0.01,
        max_value=100_000,
        help_text="Most requests per second to send to this endpoint (null: no limit).",
    )
    max_in_flight = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=10_000,
        help_text="Most requests in flight at once (null: the MAX_IN_FLIGHT setting).",
    )
    timeout = serializers.FloatField(
        required=False,
        allow_null=True,
        min_value=0.1,
        max_value=3600,
        help_text="Seconds a request may take in all (null: the TOTAL_TIMEOUT setting).",
    )
    secrets = SecretSummarySerializer(
        many=True,
        read_only=True,
        source="secret_summaries",
        help_text="The signing secrets, as fingerprints and dates: a secret is shown only once.",
    )

    class Meta:
        model = Endpoint
        fields: tuple[str, ...] = (
            "id",
            "owner",
            "url",
            "description",
            "event_types",
            "status",
            "status_reason",
            "headers",
            "rate_limit",
            "fifo",
            "max_in_flight",
            "timeout",
            "retry_schedule",
            "secrets",
            "consecutive_failures",
            "failing_since",
            "last_success_at",
            "last_failure_at",
            "blocked_until",
            "created_at",
            "updated_at",
        )
        read_only_fields = (
            "status_reason",
            "consecutive_failures",
            "failing_since",
            "last_success_at",
            "last_failure_at",
            "blocked_until",
            "created_at",
            "updated_at",
        )

    def validate_headers(self, value: dict[str, str]) -> dict[str, str]:
        """Header names are tokens and values plain text; hookpost's own headers are refused."""
        if len(value) > MAX_HEADERS:
            raise serializers.ValidationError(f"Give at most {MAX_HEADERS} custom headers.")
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise serializers.ValidationError(
                    f"{name[:100]!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~)."
                )
            if not _HEADER_VALUE.fullmatch(text):
                raise serializers.ValidationError(
                    f"The value of {name} must be printable ASCII on one line, at most 4096 characters."
                )
        validate_headers(value)
        return value

    def validate_retry_schedule(self, value: list[Any] | None) -> list[Any] | None:
        """A schedule the retry policy accepts."""
        validate_retry_schedule(value)
        return value

    def validate_event_types(self, value: list[str]) -> list[str]:
        """Patterns, without repeats, in the order given."""
        return list(dict.fromkeys(value))

    def update(self, instance: Endpoint, validated_data: dict[str, Any]) -> Endpoint:
        """Save the plain fields; a change of ``status`` is the view's (it goes through the outbox)."""
        validated_data.pop("status", None)
        return super().update(instance, validated_data)


@extend_schema_serializer(component_name="HookpostEndpointCreated")
class EndpointCreatedSerializer(EndpointSerializer):
    """A new endpoint, with its signing secret: the only time the secret is shown."""

    secret = serializers.CharField(
        read_only=True, help_text="The signing secret (whsec_…). Shown this once: store it now."
    )

    class Meta(EndpointSerializer.Meta):
        fields = (*EndpointSerializer.Meta.fields, "secret")


@extend_schema_serializer(component_name="HookpostRotateSecret")
class RotateSecretSerializer(serializers.Serializer[Any]):
    """How long the current secrets keep signing after a rotation."""

    grace = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=MAX_GRACE,
        help_text="Seconds the old secrets keep signing alongside the new one (default: the "
        "SECRET_ROTATION_GRACE setting, 24 h). 0 for a leaked secret: it stops at once.",
    )

    def grace_period(self) -> dt.timedelta | None:
        """The validated grace as a duration, or None for the default."""
        seconds = self.validated_data.get("grace")
        return None if seconds is None else dt.timedelta(seconds=seconds)


@extend_schema_serializer(component_name="HookpostNewSecret")
class NewSecretSerializer(serializers.Serializer[Any]):
    """A secret just made: shown this once, with the summaries of every secret of the endpoint."""

    secret = serializers.CharField(read_only=True, help_text="The new signing secret (whsec_…). Shown once.")
    secrets = SecretSummarySerializer(many=True, read_only=True)


# --- REST Hooks -------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="HookpostHook")
class HookSerializer(serializers.Serializer[Any]):
    """A REST Hooks subscription: one URL receiving one event type (an endpoint of the user's)."""

    id = serializers.IntegerField(read_only=True, help_text="Unsubscribe with DELETE on /hooks/{id}/.")
    target_url = _url_field(help_text="Where to send the webhooks.")
    event = TypePatternField(
        help_text="The event type to receive, e.g. 'library.book.deleted' ('*' wildcards allowed).",
    )
    secret = serializers.CharField(
        read_only=True, help_text="The signing secret (whsec_…). Shown this once: store it now."
    )


# --- deliveries and attempts ------------------------------------------------------------------------


@extend_schema_serializer(component_name="HookpostDelivery")
class DeliverySerializer(serializers.ModelSerializer[Delivery]):
    """One event on its way to one endpoint."""

    event_id = serializers.CharField(read_only=True, help_text="The webhook-id the endpoint sees.")
    event_type = serializers.CharField(source="event.type", read_only=True)
    status = DeliveryStatusField(read_only=True)
    next_attempt_at = serializers.DateTimeField(
        source="due_at",
        read_only=True,
        allow_null=True,
        help_text="When it is due; for a paused endpoint's delivery, when it will be once resumed.",
    )
    paused = serializers.BooleanField(read_only=True, help_text="Set aside while its endpoint is paused.")

    class Meta:
        model = Delivery
        fields: tuple[str, ...] = (
            "id",
            "endpoint",
            "event_id",
            "event_type",
            "status",
            "attempt_count",
            "next_attempt_at",
            "paused",
            "last_attempt_at",
            "finished_at",
            "created_at",
            "replay_of",
            "sequence",
        )
        read_only_fields: tuple[str, ...] = fields


@extend_schema_serializer(component_name="HookpostDeliveryDetail")
class DeliveryDetailSerializer(DeliverySerializer):
    """A delivery with the body it sends."""

    payload = serializers.SerializerMethodField(help_text="The webhook body (the event's envelope).")

    class Meta(DeliverySerializer.Meta):
        fields = (*DeliverySerializer.Meta.fields, "payload")
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_payload(self, delivery: Delivery) -> Any:
        """The event's JSON body, decoded."""
        return json.loads(delivery.event.payload)


@extend_schema_serializer(component_name="HookpostAttempt")
class AttemptSerializer(serializers.ModelSerializer[Attempt]):
    """One HTTP request made for a delivery, and what came of it."""

    verdict = VerdictField(read_only=True)
    request_headers = serializers.DictField(
        child=serializers.CharField(),
        read_only=True,
        help_text="The headers sent, credential-like values redacted.",
    )

    class Meta:
        model = Attempt
        fields = (
            "id",
            "number",
            "started_at",
            "duration_ms",
            "status_code",
            "response_body",
            "error",
            "verdict",
            "request_headers",
        )
        read_only_fields = fields


# --- the catalog --------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="HookpostEventType")
class EventTypeSerializer(serializers.Serializer[Any]):
    """An event type endpoints can subscribe to, with the JSON Schema of the webhook body."""

    type = serializers.CharField(read_only=True)
    kind = KindField(
        read_only=True,
        help_text="A model change, a custom signal, or hookpost's own test event.",
    )
    model = serializers.CharField(read_only=True, allow_null=True)
    action = serializers.CharField(read_only=True, allow_null=True)
    description = serializers.CharField(read_only=True)
    schema = serializers.DictField(read_only=True, help_text="JSON Schema (2020-12) of the webhook body.")
