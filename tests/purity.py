"""Checks, in a fresh interpreter, that the pure core imports nothing from Django."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def django_modules_after_importing(*modules: str) -> list[str]:
    """The ``django`` modules loaded by a fresh interpreter that imports ``modules`` (and nothing else).

    ``DJANGO_SETTINGS_MODULE`` is unset and only ``src`` is added to the path, so
    nothing but the imports themselves can bring Django in.
    """
    code = (
        f"import sys, {', '.join(modules)}; "
        "print('\\n'.join(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()
