"""The tables hookpost keeps: endpoints, the event outbox, deliveries and their attempt log."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from typing import Any, ClassVar
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, URLValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from hookpost import crypto, events, signing
from hookpost.conf import hookpost_settings
from hookpost.retry import RetryPolicy


def validate_type_patterns(value: object) -> None:
    """Model validator: a list of event types, each of which may hold ``*`` wildcards."""
    if not isinstance(value, list):
        raise ValidationError("Give a list of event types, such as ['library.book.*'].")
    for pattern in value:
        try:
            events.validate_type_pattern(pattern)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def validate_headers(value: object) -> None:
    """Model validator: custom headers as a dict of header names (HTTP tokens) to one-line values."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValidationError("Give custom headers as a mapping of names to string values.")
    bad_names = sorted(k for k in value if not _HEADER_NAME.fullmatch(k))
    if bad_names:
        raise ValidationError(f"Not valid header names: {', '.join(map(repr, bad_names))}.")
    # A CR or LF would split one header into two (header injection); values are never echoed.
    bad_values = sorted(k for k, v in value.items() if any(c in v for c in "\r\n\x00"))
    if bad_values:
        raise ValidationError(f"Header values must be one line: {', '.join(bad_values)}.")
    reserved = {k for k in value if k.lower().startswith(("webhook-", "svix-")) or k.lower() in _OWN_HEADERS}
    if reserved:
        raise ValidationError(f"These headers are set by hookpost: {', '.join(sorted(reserved))}.")


_OWN_HEADERS = {"content-type", "content-length", "host", "user-agent"}


def validate_endpoint_url(value: str) -> None:
    """Model validator: https (http only with ``ALLOW_HTTP``), and no literal address the worker refuses.

    Host names are checked when each request is sent, after resolving: a name can
    point anywhere later, so a check here would be false comfort.
    """
    scheme = value.partition("://")[0]
    if scheme.lower() == "http" and not hookpost_settings.ALLOW_HTTP:
        raise ValidationError("Use an https:// URL (plain http is allowed only with HOOKPOST['ALLOW_HTTP']).")
    host = urlsplit(value).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    from hookpost.transports.http import AddressPolicy

    if not AddressPolicy(hookpost_settings.ALLOWED_NETWORKS).allows(address):
        raise ValidationError(
            f"{host} is not a public address; webhooks may go there only if it is inside "
            "HOOKPOST['ALLOWED_NETWORKS']."
        )


def validate_retry_schedule(value: object) -> None:
    """Model validator: a retry schedule the retry policy accepts."""
    if value is None:
        return
    try:
        RetryPolicy.from_config(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


# --- endpoints --------------------------------------------------------------------------------


class EndpointQuerySet(models.QuerySet["Endpoint"]):
    """Endpoint states by name."""

    def active(self) -> EndpointQuerySet:
        """Endpoints that receive new deliveries."""
        return self.filter(status=Endpoint.Status.ACTIVE)

    def paused(self) -> EndpointQuerySet:
        """Endpoints whose deliveries wait until someone resumes them."""
        return self.filter(status=Endpoint.Status.PAUSED)

    def disabled(self) -> EndpointQuerySet:
        """Endpoints switched off, by a person or by hookpost after repeated failure."""
        return self.filter(status=Endpoint.Status.DISABLED)

    def subscribed_to(self, event_type: str) -> list[Endpoint]:
        """The endpoints of this queryset whose type patterns match ``event_type``."""
        return [endpoint for endpoint in self if endpoint.accepts(event_type)]


class Endpoint(models.Model):
    """A URL that receives signed webhooks for the event types it subscribes to."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        DISABLED = "disabled", "Disabled"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="hookpost_endpoints",
    )
    url = models.URLField(
        max_length=2048,
        validators=[URLValidator(schemes=["http", "https"]), validate_endpoint_url],
    )
    description = models.CharField(max_length=255, blank=True)
    event_types = models.JSONField(
        default=list,
        validators=[validate_type_patterns],
        help_text="Event types to receive; '*' matches any run of characters.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    status_reason = models.CharField(max_length=255, blank=True)
    # Each entry: {"key": sealed "whsec_…", "fingerprint": "1a2b3c4d", "created_at": iso,
    # "expires_at": iso | None}; newest first. Keys are sealed (hookpost.crypto) on save.
    secrets = models.JSONField(default=list, editable=False)
    headers = models.JSONField(default=dict, blank=True, validators=[validate_headers])
    # -- delivery options --
    rate_limit = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.01)],
        help_text="Most requests per second to send to this endpoint (blank: no limit).",
    )
    fifo = models.BooleanField(
        default=False,
        help_text="Deliver one at a time, in event order, with a webhook-sequence header.",
    )
    max_in_flight = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Most requests in flight at once (blank: the MAX_IN_FLIGHT setting).",
    )
    timeout = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.1)],
        help_text="Seconds a request may take in all (blank: the TOTAL_TIMEOUT setting).",
    )
    retry_schedule = models.JSONField(
        null=True,
        blank=True,
        validators=[validate_retry_schedule],
        help_text='Delays before each attempt, e.g. [0, "5s", "5m", "1h"] (blank: the default).',
    )
    # -- health, kept by the outbox --
    # Failures since the last success, up to the circuit's threshold; past it only
    # failed probes count (a request in flight when the circuit opened does not).
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    last_success_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_failure_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The circuit is open until then: only one probe request may go at that time.
    blocked_until = models.DateTimeField(null=True, blank=True, editable=False)
    # Rate limiting across workers: the earliest time the next request may be sent.
    next_slot_at = models.DateTimeField(null=True, blank=True, editable=False)
    # FIFO: the sequence number given to the newest delivery.
    last_sequence = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects: ClassVar[EndpointQuerySet] = EndpointQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        ordering = ("id",)
        indexes = (models.Index(fields=("status",), name="hookpost_endpoint_status"),)

    def __str__(self) -> str:
        return self.display_url

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, giving a new endpoint its first signing secret; secrets are sealed before they go."""
        if not self.secrets:
            self.add_secret()
        for entry in self.secrets:
            if not crypto.is_sealed(entry["key"]):
                entry.setdefault("fingerprint", _secret_fingerprint(entry["key"]))
                entry["key"] = crypto.seal(entry["key"])
        super().save(*args, **kwargs)

    @property
    def display_url(self) -> str:
        """The URL with any password in it masked, for lists, logs and messages."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=f"{user}:***@{host}").geturl()

    def accepts(self, event_type: str) -> bool:
        """Tell whether this endpoint subscribes to ``event_type``."""
        return any(events.type_matches(pattern, event_type) for pattern in self.event_types)

    def add_secret(self, now: dt.datetime | None = None) -> str:
        """Generate a new primary signing secret, keep it (sealed) on the instance and return it (unsaved).

        The returned plaintext is the only time anyone sees it: show it once, then it is
        masked everywhere (see :meth:`secret_summaries`).
        """
        now = now or timezone.now()
        secret = signing.generate_secret()
        self.secrets = [
            {
                "key": crypto.seal(secret),
                "fingerprint": _secret_fingerprint(secret),
                "created_at": now.isoformat(),
                "expires_at": None,
            },
            *self.secrets,
        ]
        return secret

    def rotate_secret(self, grace: dt.timedelta | None = None, now: dt.datetime | None = None) -> str:
        """Make a new primary secret; older ones keep signing for ``grace``, then stop (unsaved).

        ``grace`` defaults to ``SECRET_ROTATION_GRACE`` (24 h); give 0 for a leaked secret.
        """
        if grace is None:
            grace = dt.timedelta(seconds=hookpost_settings.SECRET_ROTATION_GRACE)
        now = now or timezone.now()
        expires = (now + grace).isoformat()
        for entry in self.secrets:
            if entry["expires_at"] is None or entry["expires_at"] > expires:
                entry["expires_at"] = expires
        return self.add_secret(now)

    def signing_secrets(self, now: dt.datetime | None = None) -> list[str]:
        """The secrets that sign a request sent at ``now``: the primary first, then those in grace."""
        now = now or timezone.now()
        return [crypto.unseal(entry["key"]) for entry in self.secrets if _in_force(entry, now)]

    def signing_keys(self, now: dt.datetime | None = None) -> list[signing.SigningKey]:
        """:meth:`signing_secrets`, parsed, each secret unsealed and parsed once per instance.

        The worker signs all of a claim's deliveries to an endpoint with one instance:
        unsealing and parsing on every request cost more than the HMAC itself. The cache
        is keyed by the sealed value, so a rotated-in secret is parsed when it appears.
        """
        now = now or timezone.now()
        parsed: dict[str, signing.SigningKey] = self.__dict__.setdefault("_parsed_secrets", {})
        keys = []
        for entry in self.secrets:
            if _in_force(entry, now):
                sealed = entry["key"]
                key = parsed.get(sealed)
                if key is None:
                    key = parsed[sealed] = signing.parse_secret(crypto.unseal(sealed))
                keys.append(key)
        return keys

    def secret_summaries(self, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        """The secrets as anyone may see them: fingerprint, dates, whether primary or in force."""
        now = now or timezone.now()
        return [
            {
                "fingerprint": entry.get("fingerprint") or "",
                "created_at": entry["created_at"],
                "expires_at": entry["expires_at"],
                "primary": index == 0,
                "in_force": _in_force(entry, now),
            }
            for index, entry in enumerate(self.secrets)
        ]


def _in_force(entry: dict[str, Any], now: dt.datetime) -> bool:
    return entry["expires_at"] is None or dt.datetime.fromisoformat(entry["expires_at"]) > now


def _secret_fingerprint(secret: str) -> str:
    try:
        return signing.parse_secret(secret).fingerprint
    except ValueError:
        return ""


# --- the outbox -----------------------------------------------------------------------------


class EventQuerySet(models.QuerySet["Event"]):
    """Event states by name."""

    def valid(self) -> EventQuerySet:
        """Events whose payload encoded; only these are delivered."""
        return self.filter(error="")

    def invalid(self) -> EventQuerySet:
        """Events capture could not encode; kept, with the reason, and never sent."""
        return self.exclude(error="")

    def awaiting_fan_out(self) -> EventQuerySet:
        """Valid events not yet turned into deliveries, oldest first."""
        return self.filter(fanned_out_at__isnull=True, error="").order_by("occurred_at", "id")


class Event(models.Model):
    """One thing that happened, written in the transaction that made it happen; immutable."""

    id = models.CharField(primary_key=True, max_length=40, default=events.new_message_id)
    type = models.CharField(max_length=events.MAX_TYPE_LENGTH)
    # The exact JSON sent as the request body: encoded once, at capture, and signed as is.
    payload = models.TextField()
    occurred_at = models.DateTimeField()
    # For deletes: {"model": label, "pk": pk or None, "cascade": bool}; null otherwise.
    origin = models.JSONField(null=True, blank=True)
    # Non-empty when the payload could not be encoded: the event is kept and never sent.
    error = models.TextField(blank=True, default="")
    # Set by the worker once every delivery of the event exists.
    fanned_out_at = models.DateTimeField(null=True, blank=True)

    objects: ClassVar[EventQuerySet] = EventQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        ordering = ("-occurred_at", "-id")
        indexes = (
            models.Index(
                fields=("occurred_at", "id"),
                name="hookpost_event_fanout",
                condition=Q(fanned_out_at__isnull=True, error=""),
            ),
        )

    def __str__(self) -> str:
        return f"{self.type} {self.id}"

    @property
    def is_valid(self) -> bool:
        """Whether the payload encoded and the event can be delivered."""
        return not self.error

    @property
    def body(self) -> bytes:
        """The request body, byte for byte as signed."""
        return self.payload.encode("utf-8")


class DeliveryQuerySet(models.QuerySet["Delivery"]):
    """Delivery states by name."""

    def pending(self) -> DeliveryQuerySet:
        """Deliveries that still have an attempt to make, leased or not."""
        return self.filter(status=Delivery.Status.PENDING)

    def due(self, now: dt.datetime | None = None) -> DeliveryQuerySet:
        """Pending deliveries whose next attempt time has come and that no live lease holds."""
        now = now or timezone.now()
        return self.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now).filter(
            Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now)
        )

    def leased(self, now: dt.datetime | None = None) -> DeliveryQuerySet:
        """Pending deliveries a worker holds under a lease that has not expired."""
        return self.filter(status=Delivery.Status.PENDING, lease_expires_at__gt=now or timezone.now())

    def lease_expired(self, now: dt.datetime | None = None) -> DeliveryQuerySet:
        """Pending deliveries whose worker let the lease run out (it died or stalled)."""
        return self.filter(status=Delivery.Status.PENDING, lease_expires_at__lte=now or timezone.now())

    def first_attempts(self) -> DeliveryQuerySet:
        """Deliveries not yet tried (served before retries)."""
        return self.filter(attempt_count=0)

    def retries(self) -> DeliveryQuerySet:
        """Deliveries that failed at least once."""
        return self.filter(attempt_count__gt=0)

    def delivered(self) -> DeliveryQuerySet:
        """Deliveries the endpoint acknowledged with a 2xx."""
        return self.filter(status=Delivery.Status.DELIVERED)

    def dead(self) -> DeliveryQuerySet:
        """Deliveries that used up their attempts."""
        return self.filter(status=Delivery.Status.DEAD)

    def cancelled(self) -> DeliveryQuerySet:
        """Deliveries dropped because their endpoint went away or was disabled."""
        return self.filter(status=Delivery.Status.CANCELLED)


#: How far a paused endpoint's pending deliveries are moved ahead while it is paused: out
#: of the due queue every claim walks, with their own due times kept (less this) for resuming.
PAUSE_SHIFT = dt.timedelta(days=36525)


class Delivery(models.Model):
    """One event on its way to one endpoint; every HTTP request for it is an ``Attempt``."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        DEAD = "dead", "Dead"
        CANCELLED = "cancelled", "Cancelled"

    # Every index on this table is written for each delivery three times (fan-out, lease,
    # outcome), so the foreign keys get only the indexes below: a plain one on event (the
    # automatic one had a LIKE twin on PostgreSQL), none of its own on endpoint (the
    # endpoint/status index leads with it), a partial one on replay_of (mostly NULL).
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    endpoint = models.ForeignKey(
        Endpoint, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    # A replay is a new delivery of the same event (same webhook-id) to the same endpoint.
    # CASCADE, not SET_NULL: a replay whose original went would become a second original
    # of the same (event, endpoint), which the unique constraint below forbids.
    replay_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="replays", db_index=False
    )
    # FIFO endpoints: the delivery's place in the endpoint's order (webhook-sequence).
    sequence = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempt_count = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=100, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects: ClassVar[DeliveryQuerySet] = DeliveryQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ("-created_at", "-id")
        constraints = (
            # Fan-out is idempotent: one original delivery per event and endpoint.
            models.UniqueConstraint(
                fields=("event", "endpoint"),
                condition=Q(replay_of__isnull=True),
                name="hookpost_delivery_once_per_endpoint",
            ),
        )
        indexes = (
            # "What is due", in two queues so first attempts are served before retries and
            # each claim reads an index in order instead of sorting every due row.
            models.Index(
                fields=("next_attempt_at", "id"),
                name="hookpost_delivery_due_first",
                condition=Q(status="pending", attempt_count=0),
            ),
            models.Index(
                fields=("next_attempt_at", "id"),
                name="hookpost_delivery_due_retry",
                condition=Q(status="pending", attempt_count__gt=0),
            ),
            models.Index(fields=("endpoint", "status"), name="hookpost_delivery_endpoint"),
            models.Index(fields=("event",), name="hookpost_delivery_event"),
            models.Index(
                fields=("replay_of",), name="hookpost_delivery_replays", condition=Q(replay_of__isnull=False)
            ),
            # "What is in flight", counted on every claim: only leased rows, so the count
            # costs the number of requests in flight, not the size of the backlog.
            models.Index(
                fields=("lease_expires_at",),
                name="hookpost_delivery_leased",
                condition=Q(status="pending", lease_expires_at__isnull=False),
            ),
        )

    def __str__(self) -> str:
        return f"{self.event_id} → endpoint {self.endpoint_id} ({self.status})"

    @property
    def paused(self) -> bool:
        """Whether this delivery is set aside while its endpoint is paused."""
        return self.next_attempt_at is not None and self.next_attempt_at > timezone.now() + PAUSE_SHIFT / 2

    @property
    def due_at(self) -> dt.datetime | None:
        """When the delivery is due: ``next_attempt_at``, or for a paused one, when it will be on resuming."""
        if self.paused:
            assert self.next_attempt_at is not None
            return self.next_attempt_at - PAUSE_SHIFT
        return self.next_attempt_at


class AttemptQuerySet(models.QuerySet["Attempt"]):
    """Attempt log queries by name."""

    def older_than(self, when: dt.datetime) -> AttemptQuerySet:
        """Attempts started before ``when`` (what retention prunes)."""
        return self.filter(started_at__lt=when)


class Attempt(models.Model):
    """One HTTP request made for a delivery, and what came of it."""

    class Verdict(models.TextChoices):
        DELIVERED = "delivered", "Delivered"
        RETRY = "retry", "Will retry"
        GAVE_UP = "gave_up", "Gave up"
        ENDPOINT_GONE = "endpoint_gone", "Endpoint gone"

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    request_headers = models.JSONField(default=dict)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    verdict = models.CharField(max_length=16, choices=Verdict.choices)

    objects: ClassVar[AttemptQuerySet] = AttemptQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        ordering = ("-started_at", "-id")
        indexes = (models.Index(fields=("started_at",), name="hookpost_attempt_started"),)

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}: {self.verdict}"


# --- the receiving side -----------------------------------------------------------------------


def validate_verifying_keys(value: str) -> None:
    """Model validator: one verification key per line, ``whsec_…`` (HMAC) or ``whpk_…`` (ed25519).

    A sealed value is checked as what it opens to.
    """
    lines = [line.strip() for line in crypto.unseal(value).splitlines() if line.strip()]
    if not lines:
        raise ValidationError("Give at least one key: a whsec_ secret or a whpk_ ed25519 public key.")
    for number, line in enumerate(lines, start=1):
        try:
            signing.parse_verifying_key(line)
        except ValueError as exc:
            # The message never repeats the key: it is a secret.
            raise ValidationError(f"Key on line {number}: {exc}.") from None


class Source(models.Model):
    """A sender this project accepts webhooks from, managed in the admin.

    Sources may also be declared in ``HOOKPOST["RECEIVER_SOURCES"]``; a source in
    settings wins over one here with the same name (the admin refuses that name and marks
    an older row that settings now shadow).
    """

    class Mode(models.TextChoices):
        INLINE = "inline", "Inline: handlers run in the request's transaction"
        ON_COMMIT = "on_commit", "After commit: stored first, handled once the row is committed"
        WORKER = "worker", "Worker: stored, handled by hookpost_worker with retries"

    name = models.SlugField(
        max_length=100, unique=True, help_text="Appears in the URL: /…/<name>/ (letters, digits, - and _)."
    )
    description = models.CharField(max_length=255, blank=True)
    secrets = models.TextField(
        validators=[validate_verifying_keys],
        help_text="One key per line: whsec_… secrets (several while a sender rotates) or whpk_… "
        "ed25519 public keys. Sealed (encrypted) when saved.",
    )
    event_types = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_type_patterns],
        help_text="Event types to handle ('*' wildcards); others are acknowledged and ignored. Empty: all.",
    )
    mode = models.CharField(
        max_length=16, choices=Mode.choices, blank=True, help_text="Blank: the RECEIVER_MODE setting."
    )
    tolerance = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds a timestamp may be off (blank: SIGNATURE_TOLERANCE)."
    )
    max_body_bytes = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Largest body accepted (blank: RECEIVER_MAX_BODY_BYTES).",
    )
    is_active = models.BooleanField(default=True, help_text="An inactive source answers 404.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, sealing the keys first."""
        self.secrets = crypto.seal(self.secrets.strip())
        super().save(*args, **kwargs)

    def clean(self) -> None:
        """Refuse a name a settings source already has: that source would win, and this one never be used."""
        if self.is_shadowed:
            raise ValidationError(
                {
                    "name": f"HOOKPOST['RECEIVER_SOURCES'] declares a source named {self.name!r}, which "
                    "wins over this one: choose another name, or remove it from settings."
                }
            )

    @property
    def is_shadowed(self) -> bool:
        """Whether a source of the same name in settings takes this one's place."""
        declared = hookpost_settings.RECEIVER_SOURCES
        return isinstance(declared, dict) and self.name in declared

    def keys(self) -> str:
        """The keys as text, one per line (unsealed: never show it, use it)."""
        return crypto.unseal(self.secrets)


class InboundWebhookQuerySet(models.QuerySet["InboundWebhook"]):
    """Received webhook states by name."""

    def pending(self) -> InboundWebhookQuerySet:
        """Stored and waiting to be handled (after commit, or by the worker)."""
        return self.filter(status=InboundWebhook.Status.PENDING)

    def due(self, now: dt.datetime | None = None) -> InboundWebhookQuerySet:
        """Pending, due now, and not leased by a live processor."""
        now = now or timezone.now()
        return self.pending().filter(
            Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now), next_attempt_at__lte=now
        )

    def processed(self) -> InboundWebhookQuerySet:
        """Handled: every handler returned."""
        return self.filter(status=InboundWebhook.Status.PROCESSED)

    def failed(self) -> InboundWebhookQuerySet:
        """A handler raised and nothing will retry it here (the sender may, or the admin's reprocess)."""
        return self.filter(status=InboundWebhook.Status.FAILED)

    def ignored(self) -> InboundWebhookQuerySet:
        """Verified but of an event type its source does not accept."""
        return self.filter(status=InboundWebhook.Status.IGNORED)


class InboundWebhook(models.Model):
    """A verified webhook this project received: its inbox row, unique per ``(source, webhook_id)``."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSED = "processed", "Processed"
        FAILED = "failed", "Failed"
        IGNORED = "ignored", "Ignored"

    source = models.CharField(max_length=100)
    webhook_id = models.CharField(max_length=255)
    event_type = models.CharField(max_length=events.MAX_TYPE_LENGTH, blank=True)
    # The sender's webhook-timestamp, as signed.
    sent_at = models.DateTimeField()
    received_at = models.DateTimeField()
    # The body exactly as received (verified UTF-8 JSON text), and the headers that matter.
    body = models.TextField()
    headers = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    objects: ClassVar[InboundWebhookQuerySet] = InboundWebhookQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        ordering = ("-received_at", "-id")
        verbose_name = "received webhook"
        constraints = (
            # The dedupe: a second delivery of the same id fails this insert, never a lookup race.
            models.UniqueConstraint(fields=("source", "webhook_id"), name="hookpost_inbound_unique_id"),
        )
        indexes = (
            models.Index(fields=("received_at",), name="hookpost_inbound_received"),
            models.Index(
                fields=("next_attempt_at",),
                name="hookpost_inbound_due",
                condition=Q(status="pending"),
            ),
        )

    def __str__(self) -> str:
        return f"{self.source}/{self.webhook_id} {self.event_type} ({self.status})"

    @property
    def payload(self) -> Any:
        """The body, decoded from JSON."""
        return json.loads(self.body)
