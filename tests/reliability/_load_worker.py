"""A burst worker in a child process that reports its counts and its peak memory as one JSON line.

Run by ``test_load.py`` on the parent test's database (``HOOKPOST_CHILD_DB``, as for
``tests/worker_child.py``), with ``HOOKPOST_CHILD_ID`` and ``HOOKPOST_CHILD_CONCURRENCY``.
The line holds the worker's stats and its peak memory: the kernel's ``VmHWM`` (KiB) for
this process's own memory, and ``ru_maxrss`` (KiB) for comparison, which Linux carries
over from the parent through fork and exec, so it is at least the parent's size.
"""

import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for child_django

import child_django  # noqa: F401  (sets up Django first)
from hookpost.worker import Worker


def _vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    worker = Worker(
        worker_id=os.environ["HOOKPOST_CHILD_ID"],
        concurrency=int(os.environ.get("HOOKPOST_CHILD_CONCURRENCY", "50")),
        poll_interval=0.05,
    )
    stats = worker.run(burst=True, handle_signals=True)
    print(
        json.dumps(
            {
                "worker": worker.worker_id,
                "fanned_out": stats.fanned_out,
                "sent": stats.sent,
                "delivered": stats.delivered,
                "failed": stats.failed,
                "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "vm_hwm_kib": _vm_hwm_kib(),
            }
        ),
        flush=True,
    )
