"""Secrets at rest: sealed with Fernet under HOOKPOST["ENCRYPTION_KEYS"], or a key derived from SECRET_KEY.

A sealed value is ``hookpost-fernet:<token>``; anything without that prefix is
plaintext, which the models seal when they save. The first encryption key seals;
every configured key, then keys derived from ``SECRET_KEY`` and its fallbacks,
unseal, so adding a key in front (and running ``hookpost_reencrypt``) rotates
without a window where old rows cannot be read.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence
from typing import Final

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

from hookpost.conf import hookpost_settings
from hookpost.exceptions import ConfigurationError

__all__ = ["PREFIX", "generate_key", "is_sealed", "reseal", "seal", "unseal", "uses_derived_key"]

PREFIX: Final = "hookpost-fernet:"
_DERIVATION_INFO: Final = b"django-hookpost secrets at rest v1"


def generate_key() -> str:
    """A new key for ``ENCRYPTION_KEYS``."""
    return Fernet.generate_key().decode("ascii")


def _derive(secret_key: str) -> bytes:
    # HKDF, not the raw SECRET_KEY: a key for this one purpose, useless for anything else.
    material = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_DERIVATION_INFO).derive(
        secret_key.encode()
    )
    return base64.urlsafe_b64encode(material)


def _key_config() -> tuple[tuple[str, ...], tuple[str, ...]]:
    configured = hookpost_settings.ENCRYPTION_KEYS
    if isinstance(configured, str) or not isinstance(configured, Sequence):
        configured = ()
    secret_keys = (settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ()))
    return tuple(configured), tuple(k for k in secret_keys if k)


@functools.lru_cache(maxsize=8)
def _fernet(configured: tuple[str, ...], secret_keys: tuple[str, ...]) -> MultiFernet:
    keys = []
    for index, key in enumerate(configured):
        try:
            keys.append(Fernet(key))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                "hookpost.E020", f"HOOKPOST['ENCRYPTION_KEYS'][{index}] is not a Fernet key"
            ) from exc
    keys.extend(Fernet(_derive(secret_key)) for secret_key in secret_keys)
    if not keys:
        raise ConfigurationError("hookpost.E020", "no encryption key: set ENCRYPTION_KEYS or SECRET_KEY")
    return MultiFernet(keys)


def _current() -> MultiFernet:
    return _fernet(*_key_config())


def uses_derived_key() -> bool:
    """Tell whether secrets are sealed with the key derived from SECRET_KEY (no ENCRYPTION_KEYS)."""
    return not _key_config()[0]


def is_sealed(value: str) -> bool:
    """Tell whether ``value`` is a sealed secret rather than plaintext."""
    return value.startswith(PREFIX)


def seal(plaintext: str) -> str:
    """Encrypt ``plaintext`` with the first key; a sealed value is returned as it is."""
    if is_sealed(plaintext):
        return plaintext
    return PREFIX + _current().encrypt(plaintext.encode()).decode("ascii")


@functools.lru_cache(maxsize=4096)
def _unseal(value: str, fernet: MultiFernet) -> str:
    try:
        return fernet.decrypt(value.removeprefix(PREFIX).encode("ascii")).decode()
    except (InvalidToken, UnicodeError) as exc:
        raise ConfigurationError(
            "hookpost.E020",
            "a stored secret cannot be decrypted: the key that sealed it is not among "
            "HOOKPOST['ENCRYPTION_KEYS'] or SECRET_KEY / SECRET_KEY_FALLBACKS",
        ) from exc


def unseal(value: str) -> str:
    """The plaintext of a sealed value (plaintext is returned as it is).

    Results are cached per value and key set: the worker unseals the same few secrets
    for every request it signs. Raises ConfigurationError when no key opens it.
    """
    if not is_sealed(value):
        return value
    return _unseal(value, _current())


def reseal(value: str) -> str:
    """``value`` sealed again with the first key (for key rotation); plaintext gets sealed."""
    if not is_sealed(value):
        return seal(value)
    token = value.removeprefix(PREFIX).encode("ascii")
    try:
        return PREFIX + _current().rotate(token).decode("ascii")
    except InvalidToken as exc:
        raise ConfigurationError("hookpost.E020", "a stored secret cannot be decrypted to reseal it") from exc
