"""The exceptions hookpost raises, each also a Django exception where Django has a fitting one.

Tree::

    HookpostError
    ├── ConfigurationError (also django.core.exceptions.ImproperlyConfigured)
    │   └── AlreadyRegistered
    └── PayloadError (also TypeError): a value in a payload cannot be encoded as JSON

``hookpost.signing.SignatureVerificationError`` stands apart: the signing module
imports nothing from Django, so its error cannot inherit from this tree.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


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
