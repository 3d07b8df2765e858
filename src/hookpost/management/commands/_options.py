"""Parsing helpers shared by hookpost's management commands."""

from __future__ import annotations

import argparse
import datetime as dt
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from django.core.management.base import CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

T = TypeVar("T")

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


def parse_duration(value: str) -> dt.timedelta:
    """A length of time such as ``24h``, ``30m`` or ``1.5d``; a bare number counts seconds (``0``)."""
    text = value.strip()
    match = _DURATION.fullmatch(text)
    number = re.fullmatch(r"\d+(?:\.\d+)?", text)
    try:
        if match:
            return dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])
        if number:
            return dt.timedelta(seconds=float(text))
    except OverflowError:
        raise CommandError(f"{value!r} is too long a time") from None
    raise CommandError(
        f"cannot read {value!r} as a length of time: give a number with a unit (30s, 15m, 24h, 7d) "
        "or 0 for none"
    )


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Lines of a plain text table: columns padded to their widest cell, two spaces apart."""
    lines = [list(header), *(list(row) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]


def argument_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse ``type``: its CommandError becomes a usage error.

    argparse runs types before ``handle``, where Django does not catch CommandError
    (the command line would print a traceback); a usage error prints the message alone
    there, and still raises CommandError under ``call_command``.
    """

    def convert(value: str) -> T:
        try:
            return parse(value)
        except CommandError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert
