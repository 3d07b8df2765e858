"""The exceptions hookpost raises, each also a Django exception where Django has a fitting one.

Tree::

    HookpostError
    ├── ConfigurationError (also django.core.exceptions.ImproperlyConfigured)
    │   └── AlreadyRegistered
    ├── PayloadError (also TypeError): a value in a payload cannot be encoded as JSON
    └── WebhookRejected (also SuspiciousOperation): a received webhook is refused, ``status`` 400
        ├── UnknownSource: no active source by that name, 404
        └── PayloadTooLarge: the body is over the source's limit, 413

``hookpost.signing.SignatureVerificationError`` stands apart: the signing module
imports nothing from Django, so its error cannot inherit from this tree.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation


class HookpostError(Exception):
    """Base class of every hookpost error."""


class ConfigurationError(HookpostError, ImproperlyConfigured):
    """A registration or setting is invalid; the message starts with the system check id."""

    def __init__(self, check_id: str, message: str) -> None:
        self.check_id = check_id
        super().__init__(f"{check_id}: {message}")


class AlreadyRegistered(ConfigurationError):
    """A model or signal was registered twice."""


class PayloadError(HookpostError, TypeError):
    """A payload holds a value that cannot be encoded; ``path`` names where it sits."""

    def __init__(self, path: str, value: object) -> None:
        self.path = path
        self.value_type = type(value).__qualname__
        super().__init__(
            f"cannot encode {path} as JSON: value of type {self.value_type} "
            "(give the registration a serializer that returns JSON-friendly values)"
        )


class WebhookRejected(HookpostError, SuspiciousOperation):
    """A received webhook is refused; ``reason`` is safe to send back, ``status`` is the HTTP status.

    Outside hookpost's receiver view, Django answers it as it does any
    ``SuspiciousOperation``: 400, logged on ``django.security``.
    """

    status = 400

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class UnknownSource(WebhookRejected):
    """No active source has that name."""

    status = 404


class PayloadTooLarge(WebhookRejected):
    """The body is larger than the source accepts."""

    status = 413
