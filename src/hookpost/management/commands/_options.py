"""Parsing helpers shared by hookpost's management commands."""

from __future__ import annotations

import datetime as dt
import re

from django.core.management.base import CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_moment(value: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """A point in time: an ISO 8601 datetime, or a duration back from now such as ``2h`` or ``7d``."""
    now = now or timezone.now()
    match = _DURATION.fullmatch(value.strip())
    if match:
        return now - dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    parsed = parse_datetime(value)
    if parsed is None:
        raise CommandError(
            f"cannot read {value!r} as a time: give an ISO 8601 datetime "
            "(2026-11-23T20:00:00Z) or a duration back from now (30m, 2h, 7d)"
        )
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, dt.UTC)


def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise CommandError(f"expected a whole number of at least 1, got {value!r}")
    return number
