"""Runs a Celery worker (solo pool, one process) for the Celery runner's tests, on the parent's database.

Environment: HOOKPOST_CHILD_DB (database NAME), HOOKPOST_CELERY_QUEUE (the queue to
consume), HOOKPOST_CELERY_BROKER (optional, the broker URL).
"""

import os

import child_django  # noqa: F401  (sets up Django first)
from hookpost import on_webhook
from library.models import Tag
from tests.celery_app import QUEUE, app


# Only in this child: received webhooks handled by the Celery worker leave a visible trace.
@on_webhook("celery.test.*")
def tag_from_webhook(*, payload, **kwargs):
    Tag.objects.create(name=payload["data"]["tag"])


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
