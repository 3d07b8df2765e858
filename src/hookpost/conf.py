"""Lazy access to the ``HOOKPOST`` settings dict, so ``override_settings`` always takes effect."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

#: Every setting hookpost reads, with its default. ``checks.py`` validates them.
DEFAULTS: dict[str, Any] = {
    # Model registrations made in settings: {"app_label.Model": {options}}.
    "MODELS": {},
    # Raise PayloadError from the user's save()/delete() instead of recording an invalid event.
    "STRICT": False,
    # Seconds a webhook-timestamp may differ from now, in either direction, when verifying.
    "SIGNATURE_TOLERANCE": 300,
    # Rows per INSERT when a bulk delete writes its events through bulk_create (databases other
    # than PostgreSQL and SQLite, which stream them in one statement).
    "CAPTURE_BATCH_SIZE": 500,
    # -- delivery --
    # The transport class, by dotted path (hookpost.transports.memory.MemoryTransport in tests).
    "TRANSPORT": "hookpost.transports.http.HttpTransport",
    # Networks endpoints may resolve to although they are not public (e.g. "127.0.0.0/8").
    "ALLOWED_NETWORKS": [],
    # Endpoint URLs must use https unless this is True.
    "ALLOW_HTTP": False,
    "CONNECT_TIMEOUT": 5.0,
    "TOTAL_TIMEOUT": 15.0,
    # Bytes of a response body kept in the attempt log (the rest is never read).
    "MAX_RESPONSE_BYTES": 16384,
    # Delays before each attempt; None is the Standard Webhooks schedule (10 attempts, ~3 days).
    "RETRY_SCHEDULE": None,
    "RETRY_JITTER": 0.2,
    # A Retry-After (429/503) is honoured up to this many seconds.
    "MAX_RETRY_AFTER": 86400,
    # Requests in flight to one endpoint at once, unless the endpoint says otherwise.
    "MAX_IN_FLIGHT": 10,
    # Consecutive failures that open an endpoint's circuit; seconds before the first probe.
    "CIRCUIT_THRESHOLD": 5,
    "CIRCUIT_COOLDOWN": 30,
    # An endpoint failing with no success for this many seconds is disabled (default 5 days).
    "DISABLE_AFTER": 5 * 24 * 3600,
    # Seconds a worker holds a claimed delivery before another may take it over.
    "LEASE_SECONDS": 60,
    # Seconds between polls when nothing wakes the worker (PostgreSQL wakes it on commit).
    "POLL_INTERVAL": 1.0,
    # What runs deliveries: "worker" (manage.py hookpost_worker) or "celery" (hookpost.runners.celery).
    "RUNNER": "worker",
    # Days of attempts, finished deliveries and their events that hookpost_prune keeps.
    "RETENTION_DAYS": 30,
    # -- secrets at rest --
    # Fernet keys (hookpost.crypto.generate_key()); the first seals, all unseal. Empty: a key
    # derived from SECRET_KEY (a system check warns), with SECRET_KEY_FALLBACKS unsealing too.
    "ENCRYPTION_KEYS": [],
    # Seconds a rotated-out signing secret keeps signing beside the new one.
    "SECRET_ROTATION_GRACE": 24 * 3600,
    # -- receiving --
    # Senders this project accepts webhooks from: {"name": {"secrets": [...], options}}. Options:
    # "event_types" (patterns; others are acknowledged and ignored), "mode", "tolerance",
    # "max_body_bytes". Sources can also be added in the admin; settings win on a name clash.
    "RECEIVER_SOURCES": {},
    # How received webhooks are handled: "inline" (in the request's transaction), "on_commit"
    # (stored, then handled after commit) or "worker" (stored, handled by hookpost_worker).
    "RECEIVER_MODE": "inline",
    # Larger bodies are refused with 413 before they are read.
    "RECEIVER_MAX_BODY_BYTES": 1024 * 1024,
    # Delays before each handling attempt of a stored webhook; None: the delivery schedule.
    "RECEIVER_RETRY_SCHEDULE": None,
}


class Settings:
    """Read ``settings.HOOKPOST[name]`` on every access, falling back to ``DEFAULTS``."""

    @property
    def user_settings(self) -> dict[str, Any]:
        """The raw ``HOOKPOST`` dict (empty when unset or not a dict; checks report the latter)."""
        value = getattr(django_settings, "HOOKPOST", {})
        return value if isinstance(value, dict) else {}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"hookpost has no setting {name!r}")
        return self.user_settings.get(name, DEFAULTS[name])


hookpost_settings = Settings()
