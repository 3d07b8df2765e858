"""Runs a hookpost worker in a child process against the parent test's database.

Environment: HOOKPOST_CHILD_DB (database NAME), HOOKPOST_CHILD_LEASE (seconds),
HOOKPOST_CHILD_BURST ("1" to drain and exit), HOOKPOST_CHILD_ID (worker id).
"""

import datetime as dt
import os

import child_django  # noqa: F401  (sets up Django first)
from hookpost.worker import Worker

if __name__ == "__main__":
    worker = Worker(
        worker_id=os.environ.get("HOOKPOST_CHILD_ID"),
        lease=dt.timedelta(seconds=float(os.environ.get("HOOKPOST_CHILD_LEASE", "60"))),
        poll_interval=0.02,
        concurrency=int(os.environ.get("HOOKPOST_CHILD_CONCURRENCY", "20")),
    )
    stats = worker.run(burst=os.environ.get("HOOKPOST_CHILD_BURST") == "1", handle_signals=True)
    print(stats.line(), flush=True)
