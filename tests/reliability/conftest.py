"""The reliability suite's shared knobs: bounded in ``make test``, full size under ``make soak``.

``HOOKPOST_SOAK=1`` (what ``make soak`` sets) scales every scenario up; tests read their
sizes through :func:`size` so each names its CI and soak numbers side by side. Every
scenario also appends its measured numbers to ``$HOOKPOST_RELIABILITY_REPORT`` (a JSON
lines file) when that is set, which is how ``docs/reliability.md`` gets its table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

SOAK = os.environ.get("HOOKPOST_SOAK") == "1"


def size(ci: int, soak: int) -> int:
    """The number to use: ``ci`` in the bounded run, ``soak`` under ``make soak``."""
    return soak if SOAK else ci


def report(scenario: str, **numbers: Any) -> None:
    """Record a scenario's measured numbers for docs/reliability.md (no-op unless asked for)."""
    path = os.environ.get("HOOKPOST_RELIABILITY_REPORT")
    if not path:
        return
    entry = {"scenario": scenario, "soak": SOAK, "db": os.environ.get("HOOKPOST_DB", "sqlite"), **numbers}
    with Path(path).open("a") as out:
        out.write(json.dumps(entry, default=str) + "\n")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder carries the ``reliability`` marker (``-m "not reliability"`` skips them)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)
