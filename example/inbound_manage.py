#!/usr/bin/env python
"""Django's command-line utility for the mirror project (the webhook receiver of the two-project demo)."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    root = Path(__file__).resolve().parent
    sys.path.insert(0, str(root))
    sys.path.insert(0, str(root.parent / "src"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inbound_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
