"""The two-project demo (example/demo_two_projects.py) runs end to end: a sender and a receiver project."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "example" / "demo_two_projects.py"


def test_two_project_demo_delivers_deletes_to_the_receiving_project_and_dedupes_a_replay():
    # The demo picks its own settings and SQLite files, whatever database this run uses.
    result = subprocess.run(
        [sys.executable, str(DEMO)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "mirror: recorded removed book" in output
    assert '"The Tombs of Atuan" (webhook msg_' in output
    assert 'mirror answered HTTP 200 {"status": "duplicate"}' in output
    assert output.count("mirror: recorded removed book") == 3, output
    assert "Done" in output
