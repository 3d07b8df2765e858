"""Regenerate the admin screenshots of the README: run the browser test, which saves them in docs/.

    .venv/bin/python docs/screenshots.py

The test (tests/test_admin_browser.py) drives the real admin in headless Chromium against
a live server on SQLite: the pictures show what the test checked, with no secret on them.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Run the browser test with ``HOOKPOST_SCREENSHOTS`` pointing here; its exit status."""
    env = {**os.environ, "HOOKPOST_SCREENSHOTS": str(ROOT / "docs"), "HOOKPOST_DB": "sqlite"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_admin_browser.py"]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
