"""django-hookpost: Django signals to reliable, signed webhooks, and signed webhooks back to signals.

The public API. Importing this package loads no models, so it is safe in
settings and in ``AppConfig`` modules; the names below resolve on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

__all__ = [
    "ConfigurationError",
    "HookpostError",
    "PayloadError",
    "SignatureVerificationError",
    "WebhookRejected",
    "emit",
    "on_webhook",
    "register",
    "register_signal",
    "unregister",
    "unregister_signal",
]

_LAZY = {
    "ConfigurationError": "hookpost.exceptions",
    "HookpostError": "hookpost.exceptions",
    "PayloadError": "hookpost.exceptions",
    "SignatureVerificationError": "hookpost.signing",
    "WebhookRejected": "hookpost.exceptions",
    "emit": "hookpost.capture",
    "on_webhook": "hookpost.receiver",
    "register": "hookpost.registry",
    "register_signal": "hookpost.registry",
    "unregister": "hookpost.registry",
    "unregister_signal": "hookpost.registry",
}

if TYPE_CHECKING:
    from hookpost.capture import emit
    from hookpost.exceptions import ConfigurationError, HookpostError, PayloadError, WebhookRejected
    from hookpost.receiver import on_webhook
    from hookpost.registry import (
        register,
        register_signal,
        unregister,
        unregister_signal,
    )
    from hookpost.signing import SignatureVerificationError


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hookpost' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
