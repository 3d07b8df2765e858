"""Django app configuration: connects registrations once every model is loaded."""

from __future__ import annotations

from django.apps import AppConfig


class HookpostConfig(AppConfig):
    """The ``hookpost`` app."""

    name = "hookpost"
    verbose_name = "Webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the checks, the models of ``HOOKPOST["MODELS"]`` and any pending registrations."""
        from hookpost import checks  # noqa: F401  (registers the system checks)
        from hookpost.registry import registry

        registry.complete_pending()
        registry.load_settings()
