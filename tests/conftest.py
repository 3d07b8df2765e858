"""Shared fixtures: an isolated registry, and readers of the outbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from hookpost.models import Event
from hookpost.registry import Registry, registry


@pytest.fixture
def isolated_registry() -> Iterator[Registry]:
    """The global registry, restored to the example project's registrations after the test."""
    with registry.isolated() as reg:
        yield reg


def outbox(using: str = "default") -> list[dict[str, Any]]:
    """Every event on ``using`` in insertion order, each as its decoded payload plus row fields."""
    rows = Event.objects.using(using).order_by("id")
    return [{**json.loads(e.payload), "_id": e.id, "_error": e.error, "_origin": e.origin} for e in rows]


def types(using: str = "default") -> list[str]:
    """The event types on ``using`` in insertion order."""
    return list(Event.objects.using(using).order_by("id").values_list("type", flat=True))
