"""Where received webhooks may come from: sources from ``HOOKPOST["RECEIVER_SOURCES"]`` and the admin."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from django.db import router

from hookpost import events, signing
from hookpost.conf import hookpost_settings
from hookpost.exceptions import ConfigurationError
from hookpost.models import Source

MODES: Final = ("inline", "on_commit", "worker")
SOURCE_OPTIONS: Final = frozenset({"secrets", "event_types", "mode", "tolerance", "max_body_bytes"})


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One source, resolved: its verification keys parsed, every default filled in."""

    name: str
    keys: tuple[signing.VerifyingKey, ...]
    event_types: tuple[str, ...]
    mode: str
    tolerance: int
    max_body_bytes: int

    def accepts(self, event_type: str) -> bool:
        """Tell whether webhooks of ``event_type`` are handled (no patterns: all are)."""
        return not self.event_types or any(events.type_matches(p, event_type) for p in self.event_types)


@functools.lru_cache(maxsize=256)
def _parse_keys(texts: tuple[str, ...]) -> tuple[signing.VerifyingKey, ...]:
    # Parsing an ed25519 key builds a cryptography object: do it once per key set, not per request.
    return tuple(signing.parse_verifying_key(text) for text in texts)


def _key_texts(secrets: object) -> tuple[str, ...]:
    if isinstance(secrets, str):
        # One string: the admin's one-key-per-line text, or a single key from settings.
        return tuple(line.strip() for line in secrets.splitlines() if line.strip())
    if not isinstance(secrets, Sequence) or not all(isinstance(s, str) for s in secrets):
        raise ValueError("secrets is a list of whsec_ secrets and whpk_ public keys")
    return tuple(s.strip() for s in secrets if s.strip())


def build(name: str, options: Mapping[str, Any]) -> SourceConfig:
    """Resolve one source's options (the settings' dict form); raise ValueError naming the problem."""
    unknown = set(options) - SOURCE_OPTIONS
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(SOURCE_OPTIONS)}")
    texts = _key_texts(options.get("secrets", ()))
    if not texts:
        raise ValueError("no secrets: give whsec_ secrets or whpk_ ed25519 public keys")
    try:
        keys = _parse_keys(texts)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"secrets: {exc}") from None
    patterns = options.get("event_types") or ()
    if isinstance(patterns, str) or not isinstance(patterns, Sequence):
        raise ValueError("event_types is a list of event type patterns")
    for pattern in patterns:
        events.validate_type_pattern(pattern)
    mode = options.get("mode") or hookpost_settings.RECEIVER_MODE
    if mode not in MODES:
        raise ValueError(f"mode is {mode!r}; use one of {', '.join(MODES)}")
    tolerance = options.get("tolerance")
    tolerance = hookpost_settings.SIGNATURE_TOLERANCE if tolerance is None else tolerance
    limit = options.get("max_body_bytes") or hookpost_settings.RECEIVER_MAX_BODY_BYTES
    for label, value, least in (("tolerance", tolerance, 0), ("max_body_bytes", limit, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{label} is {value!r}; give a whole number, at least {least}")
    return SourceConfig(name, keys, tuple(patterns), mode, tolerance, limit)


def settings_sources() -> dict[str, Any]:
    """The raw ``RECEIVER_SOURCES`` setting (empty when it is not a dict; checks report that)."""
    declared = hookpost_settings.RECEIVER_SOURCES
    return declared if isinstance(declared, dict) else {}


def get_source(name: str) -> SourceConfig | None:
    """The active source called ``name``: from settings first, then the admin's; None if neither.

    Raises ValueError when the source exists but its configuration is unusable.
    """
    declared = settings_sources()
    if name in declared:
        options = declared[name]
        if not isinstance(options, Mapping):
            raise ValueError("its options must be a dict")
        return build(name, options)
    row = (
        Source.objects.using(router.db_for_read(Source))
        .filter(name=name, is_active=True)
        .only("name", "secrets", "event_types", "mode", "tolerance", "max_body_bytes")
        .first()
    )
    if row is None:
        return None
    try:
        keys = row.keys()
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from exc
    return build(
        row.name,
        {
            "secrets": keys,
            "event_types": row.event_types,
            "mode": row.mode,
            "tolerance": row.tolerance,
            "max_body_bytes": row.max_body_bytes,
        },
    )
