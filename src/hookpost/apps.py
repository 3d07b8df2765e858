"""Django app configuration: connects registrations once every model is loaded."""

from __future__ import annotations

from django.apps import AppConfig


class HookpostConfig(AppConfig):
    """The ``hookpost`` app."""

    name = "hookpost"
    verbose_name = "Webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the checks, the models of ``HOOKPOST["MODELS"]``, pending registrations, the runner."""
        from hookpost import checks  # noqa: F401  (registers the system checks)
        from hookpost.conf import hookpost_settings
        from hookpost.registry import registry

        registry.complete_pending()
        registry.load_settings()
        if hookpost_settings.RUNNER == "celery":
            # Imported only then: celery is an optional dependency. The import registers the
            # tasks and connects the on-commit sender.
            from hookpost.runners import celery  # noqa: F401
