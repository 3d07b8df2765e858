"""Sets up Django in a test's child process, on the parent test's database (HOOKPOST_CHILD_DB).

Imported first by the child scripts, which run with ``tests/`` as their path.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "example"), str(ROOT / "src")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.DATABASES["default"]["NAME"] = os.environ["HOOKPOST_CHILD_DB"]
django.setup()
