"""The Celery app of the Celery runner's tests: a Redis broker (db 15) and one queue per test session.

The test process and its Celery worker child import this module; the child gets the
parent's queue through ``HOOKPOST_CELERY_QUEUE``, so both talk about the same queue and
nothing else on the broker interferes.
"""

import os
import uuid

from celery import Celery

import hookpost.runners.celery  # noqa: F401  (registers hookpost.deliver and hookpost.sweep)

BROKER = os.environ.get("HOOKPOST_CELERY_BROKER", "redis://127.0.0.1:6379/15")
QUEUE = os.environ.get("HOOKPOST_CELERY_QUEUE") or f"hookpost-tests-{os.getpid()}-{uuid.uuid4().hex[:8]}"

app = Celery("hookpost_tests", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    # Keep the startup deprecation notice out of the child's log; retrying is what we want.
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    # No remote control: the worker is stopped by signal, and leaves no pidbox keys behind.
    worker_enable_remote_control=False,
)
