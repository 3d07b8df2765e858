"""Runs a Celery worker (solo pool, one process) for the Celery runner's tests, on the parent's database.

Environment: HOOKPOST_CHILD_DB (database NAME), HOOKPOST_CELERY_QUEUE (the queue to
consume), HOOKPOST_CELERY_BROKER (optional, the broker URL).
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

from tests.celery_app import QUEUE, app  # noqa: E402

if __name__ == "__main__":
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={QUEUE}",
            f"--hostname=hookpost-tests-{os.getpid()}@%h",
            # Nothing else to talk to: skip the cluster chatter, start sooner.
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=INFO",
        ]
    )
