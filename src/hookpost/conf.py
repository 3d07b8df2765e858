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
    # Events of a bulk delete go to the database in INSERTs of at most this many rows.
    "CAPTURE_BATCH_SIZE": 500,
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
