"""The mirror app keeps a copy of what the library project tells it, through webhooks."""

from django.apps import AppConfig


class MirrorConfig(AppConfig):
    name = "mirror"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Importing the module connects its @on_webhook handlers.
        from mirror import handlers  # noqa: F401
