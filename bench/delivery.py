"""Measure one hookpost worker's delivery throughput (against a bare aiohttp client) and its latency.

Run: ``.venv/bin/python bench/delivery.py [--events 10000] [--concurrency 50] [--rate 200] [--seconds 10]``
(PostgreSQL on 127.0.0.1:5432, ``HOOKPOST_PG_*`` override; the database
``hookpost_bench_delivery`` is created when missing). It prints
``deliveries_per_s``, ``ratio_vs_bare`` and ``latency_p95_ms`` lines, last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import io
import logging
import multiprocessing as mp
import os
import pstats
import resource
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any, NamedTuple, Self

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "example", ROOT / "src", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _postgres import configure_hookpost, ensure_database  # noqa: E402

BENCH_DB = "hookpost_bench_delivery"
TARGET_RATE = 2000.0
TARGET_RATIO = 0.40
TARGET_P95_MS = 50.0
EVENT_TYPE = "book.updated"
LATENCY_EVENT_TYPE = "book.latency"
# Processes are forked: children inherit the configured Django and the precomputed requests.
CTX = mp.get_context("fork")


# --- settings -------------------------------------------------------------------------------


def configure_django() -> None:
    """Configure Django for hookpost on PostgreSQL, loopback allowed, ``hookpost`` logging at WARNING."""
    configure_hookpost(BENCH_DB)
    set_hookpost_logging(logging.WARNING)


def set_hookpost_logging(level: int, path: str | None = None) -> None:
    """Send ``hookpost`` records at ``level`` and above to stderr, or to the file ``path``."""
    logger = logging.getLogger("hookpost")
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def ensure_postgresql_database() -> None:
    """Create the benchmark's database when missing (exits 1 if PostgreSQL is down)."""
    ensure_database(BENCH_DB)


# --- the database ---------------------------------------------------------------------------


def prepare_database() -> None:
    """Migrate the bench database (NOTIFY triggers included)."""
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def preload_http() -> None:
    """Import aiohttp and the worker's transport here, so the forked senders do not time their import.

    Each timed child used to import them inside its timing: about 100 ms, which is 12%
    of the bare client's 0.8 s burst against 4% of the worker's 2.5 s, so the ratio
    read about 0.03 higher than the senders' steady rates give (0.32 against 0.29 here).
    """
    import aiohttp  # noqa: F401

    import hookpost.transports.http  # noqa: F401


def reset_outbox() -> None:
    """Empty the outbox tables (endpoints kept)."""
    from django.db import connection

    from hookpost.models import Attempt, Delivery, Event

    tables = ", ".join(m._meta.db_table for m in (Attempt, Delivery, Event))
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables}")


def vacuum() -> None:
    """Vacuum and analyze the seeded events and the endpoint, so autovacuum stays out of the timing.

    Not the deliveries and attempts, just truncated: analyzed empty, PostgreSQL is told
    they hold no rows, and a plan cached while it believes that (the attempt's foreign-key
    check among them) scans the whole table once it holds thousands: pg_stat_statements
    showed that check taking 2.7 s of one burst (of a prototype running the same check)
    against 20 ms of another, and runs swung between two speeds. Left as TRUNCATE leaves
    them, their size is unknown and estimated from the pages they really have.
    """
    from django.db import connection

    from hookpost.models import Endpoint, Event

    tables = ", ".join(m._meta.db_table for m in (Event, Endpoint))
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {tables}")


def make_endpoint(url: str, max_in_flight: int | None) -> Any:
    """The one endpoint of the bench, subscribed to everything (any previous one removed)."""
    from hookpost.models import Delivery, Endpoint

    Delivery.objects.all().delete()
    Endpoint.objects.all().delete()
    return Endpoint.objects.create(url=url, event_types=["*"], max_in_flight=max_in_flight)


def book(n: int) -> dict[str, Any]:
    """A payload the size of the example's Book event (~300 bytes of JSON)."""
    return {
        "id": n,
        "title": f"The Left Hand of Darkness, volume {n}",
        "author": {"id": 1, "name": "Ursula K. Le Guin"},
        "isbn": f"978-0-441-{n % 100000:05d}-{n % 10}",
        "price": f"{12.99 + n % 100:.2f}",
        "published": "1969-03-01",
        "cover": f"covers/{n}.jpg",
        "tags": ["science fiction", "classic"],
    }


def seed_events(count: int) -> None:
    """Commit ``count`` events in one transaction, through the outbox's bulk writer (COPY)."""
    from django.db import transaction
    from django.utils import timezone

    from hookpost import outbox
    from hookpost.events import Frame

    frame = Frame.build(EVENT_TYPE, timezone.now())
    drafts = [outbox.EventDraft(EVENT_TYPE, frame.encode(book(n)), frame.occurred_at) for n in range(count)]
    with transaction.atomic():
        outbox.record_events("default", drafts)


def delivered_count() -> int:
    from hookpost.models import Delivery

    return Delivery.objects.delivered().count()


def close_connections() -> None:
    """Close this process's connections: a forked child must never share them."""
    from django.db import connections

    connections.close_all()


# --- the receiver ---------------------------------------------------------------------------


def _reuseport_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def receiver_main(port: int, ready: Queue[int], stop: MpEvent, arrivals_out: Queue[Any]) -> None:
    """Serve ``POST /hook`` with 200 and no body; record ``(webhook-id, time.time())`` per request."""
    from aiohttp import web

    arrivals: list[tuple[str | None, float]] = []
    now = time.time

    async def hook(request: web.Request) -> web.Response:
        arrivals.append((request.headers.get("webhook-id"), now()))
        await request.read()
        return web.Response()

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        sock = _reuseport_socket(port)
        site = web.SockSite(runner, sock, backlog=1024)
        await site.start()
        ready.put(os.getpid())
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await runner.cleanup()

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(serve())
    arrivals_out.put(arrivals)


@dataclass
class Receivers:
    """Receiver processes sharing one loopback port (``SO_REUSEPORT``)."""

    port: int
    processes: list[BaseProcess]
    stop: MpEvent
    arrivals: Queue[Any]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(p.pid) for p in self.processes if p.pid)

    def close(self) -> dict[str, float]:
        """Stop the receivers; return the first arrival time of each ``webhook-id``."""
        self.stop.set()
        first: dict[str, float] = {}
        for _ in self.processes:
            for msg_id, at in self.arrivals.get(timeout=30):
                if msg_id is not None and (msg_id not in first or at < first[msg_id]):
                    first[msg_id] = at
        for process in self.processes:
            process.join(timeout=10)
        return first


def start_receivers(count: int) -> Receivers:
    # Bind (without listening) to pick a free port the children can share with SO_REUSEPORT.
    probe = _reuseport_socket(0)
    port = probe.getsockname()[1]
    ready: Queue[int] = CTX.Queue()
    stop = CTX.Event()
    arrivals: Queue[Any] = CTX.Queue()
    processes: list[BaseProcess] = []
    for _ in range(count):
        process = CTX.Process(target=receiver_main, args=(port, ready, stop, arrivals), daemon=True)
        process.start()
        processes.append(process)
    for _ in range(count):
        ready.get(timeout=30)
    probe.close()
    return Receivers(port, processes, stop, arrivals)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (Linux ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Sampler:
    """Samples something every 10 ms in a thread while the block runs, so readings of what ends early survive.

    A subclass reads in ``_sample`` (keeping each reading's last value) and turns the
    first and last readings into its result in ``_finish``.
    """

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._sample()
        self._begin()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._finish()

    #: Seconds between readings.
    interval = 0.01

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        raise NotImplementedError

    def _begin(self) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError


class DatabaseCpu(_Sampler):
    """CPU seconds the PostgreSQL backends serving ``dbname`` use while the block runs (local server only).

    A backend's time can only be read while it lives and the worker's backends exit
    with it, so each backend's last reading is kept.
    """

    def __init__(self, dbname: str) -> None:
        super().__init__("bench-db-cpu")
        self.marker = f" {dbname} "
        self.seconds = 0.0
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}

    def _begin(self) -> None:
        self._first = dict(self._last)

    def _finish(self) -> None:
        self.seconds = sum(cpu - self._first.get(pid, 0.0) for pid, cpu in self._last.items())

    def _sample(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if command.startswith("postgres:") and self.marker in command:
                self._last[int(entry.name)] = process_cpu_seconds(int(entry.name))


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@contextlib.contextmanager
def machine_load(into: dict[str, float]) -> Iterator[None]:
    """Record into ``into["machine"]`` the share of all CPUs busy while the block runs."""
    busy0, total0 = machine_busy()
    yield
    busy1, total1 = machine_busy()
    into["machine"] = (busy1 - busy0) / max(total1 - total0, 1)


# --- one timed run --------------------------------------------------------------------------


@dataclass
class Run:
    """One timed run: how many requests, how long, and who was busy."""

    label: str
    count: int
    seconds: float
    cpu: float  # CPU seconds of the sending process
    receiver_cpu: float
    machine: float  # share of all CPUs busy
    db: list[DbCall] | None = None  # worker only: outbox calls on its database thread
    database_cpu: float = 0.0  # worker only: CPU seconds of the PostgreSQL backends
    threads: dict[str, float] | None = None  # worker only: CPU seconds by thread
    slots: SlotUse | None = None  # worker only: how full its send slots were
    loop_waited: float = 0.0  # worker only: seconds its event loop waited for a CPU

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def line(self) -> str:
        return (
            f"  {self.label:<40} {self.rate:>6,.0f}/s  {self.seconds:6.2f} s   sender CPU "
            f"{self.cpu / self.seconds:4.0%}  receiver CPU {self.receiver_cpu / self.seconds:4.0%}  "
            f"machine {self.machine:4.0%}"
            + (f"  PostgreSQL CPU {self.database_cpu / self.seconds:4.0%}" if self.database_cpu else "")
        )

    def cpu_per_request_us(self) -> tuple[float, float, float]:
        """Microseconds of CPU per request: the sender, PostgreSQL (worker runs) and the receiver."""
        per = 1e6 / self.count
        return self.cpu * per, self.database_cpu * per, self.receiver_cpu * per

    def db_line(self) -> str:
        """Where the worker's database thread spent the run, and how full its send slots were."""
        line = db_summary(self.db, self.seconds) if self.db else ""
        return line + (f"\n{self.slots.line()}" if self.slots else "")


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(target: Callable[[], dict[str, Any]], out: Queue[Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        out.put(target())
    except BaseException as exc:
        out.put({"error": f"{type(exc).__name__}: {exc}"})
        raise


def run_in_child(
    target: Callable[[], dict[str, Any]],
    timeout: float = 300,
    watch: Callable[[int], contextlib.AbstractContextManager[Any]] | None = None,
) -> dict[str, Any]:
    """Run ``target`` in a forked process and return its result dict; ``watch(pid)`` wraps the wait."""
    close_connections()
    out: Queue[Any] = CTX.Queue()
    process = CTX.Process(target=_child, args=(target, out))
    process.start()
    assert process.pid is not None
    with watch(process.pid) if watch else contextlib.nullcontext():
        result: dict[str, Any] = out.get(timeout=timeout)
        process.join(timeout=30)
    if "error" in result:
        raise RuntimeError(f"child failed: {result['error']}")
    return result


#: One outbox call on the worker's database thread: (name, wall-clock start, seconds, items).
DbCall = tuple[str, float, float, int]


def _time_outbox_calls() -> list[DbCall]:
    """Wrap the outbox calls the worker makes on its database thread, to see where that thread's time goes.

    Only this (forked) worker process is patched; the list fills as the worker runs.
    """
    from hookpost import outbox

    calls: list[DbCall] = []

    def timed(name: str, fn: Callable[..., Any], items: Callable[[Any, tuple[Any, ...]], int]) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wall, start = time.time(), time.perf_counter()
            result = fn(*args, **kwargs)
            calls.append((name, wall, time.perf_counter() - start, items(result, args)))
            return result

        return wrapper

    outbox.fan_out_and_lease = timed("fan_out", outbox.fan_out_and_lease, lambda r, a: r.events)
    outbox.claim = timed("claim", outbox.claim, lambda r, a: len(r))
    outbox.record_results = timed("record_results", outbox.record_results, lambda r, a: len(a[0]))
    return calls


def db_summary(calls: list[DbCall], seconds: float, window: tuple[float, float] | None = None) -> str:
    """Where the worker's (single, serial) database thread spent ``seconds`` (or the wall-clock window)."""
    if window:
        calls = [c for c in calls if window[0] <= c[1] <= window[1]]
    totals: dict[str, list[float]] = {}
    for name, _, spent, items in calls:
        entry = totals.setdefault(name, [0, 0.0, 0])
        entry[0] += 1
        entry[1] += spent
        entry[2] += items
    busy = sum(spent for _, spent, _ in totals.values())
    parts = [
        f"{name} {spent:.1f} s/{n:.0f} calls "
        f"({spent / max(n, 1) * 1000:.0f} ms, {items / max(n, 1):.0f} each)"
        for name, (n, spent, items) in totals.items()
    ]
    return f"    database thread busy {busy / seconds:.0%}: " + "; ".join(parts)


class ThreadCpu(_Sampler):
    """CPU seconds each thread of a process (:meth:`of`) uses while the block runs, and its waits for a CPU.

    Read from outside the worker's process: reading every thread's ``/proc`` file
    from a thread inside it every 10 ms cost that process 43 µs of CPU per delivery
    (7% of its time, and its GIL), which the bare client never paid. A thread's time
    can only be read while it lives and the database threads end with ``run()``, so
    each thread's last reading is kept. Threads are told apart by their native ids;
    :meth:`by_name` names them. Linux's ``schedstat`` gives both the time on a CPU and
    the time spent runnable but waiting for one (the CPUs busy with other work).
    """

    def __init__(self) -> None:
        super().__init__("bench-thread-cpu")
        self.task_dir = Path("/proc/self/task")
        self.pid = os.getpid()
        # Per thread: (seconds on a CPU, seconds waiting for one).
        self._first: dict[int, tuple[float, float]] = {}
        self._last: dict[int, tuple[float, float]] = {}

    def of(self, pid: int) -> Self:
        """Watch process ``pid``'s threads (for :func:`run_in_child`'s ``watch``)."""
        self.task_dir = Path(f"/proc/{pid}/task")
        self.pid = pid
        return self

    def _begin(self) -> None:
        self._first = dict(self._last)

    def _finish(self) -> None:
        pass

    def _sample(self) -> None:
        with contextlib.suppress(OSError):  # the process has ended
            for task in self.task_dir.iterdir():
                # OSError: the thread has ended; ValueError: its file was read cut short.
                with contextlib.suppress(OSError, ValueError):
                    on_cpu, waiting, _ = (task / "schedstat").read_text().split()
                    self._last[int(task.name)] = (int(on_cpu) / 1e9, int(waiting) / 1e9)

    def _spent(self, tid: int, which: int) -> float:
        return self._last.get(tid, (0.0, 0.0))[which] - self._first.get(tid, (0.0, 0.0))[which]

    def by_name(self, names: dict[int, str]) -> dict[str, float]:
        """Seconds per thread name, from the process's ``{native id: name}`` (unnamed threads left out)."""
        seconds: dict[str, float] = {}
        for tid in self._last:
            name = names.get(tid)
            if name is not None:
                seconds[name] = seconds.get(name, 0.0) + self._spent(tid, 0)
        return seconds

    def main_waited(self) -> float:
        """Seconds the process's main thread (the worker's event loop) was runnable but had no CPU."""
        return self._spent(self.pid, 1)


def thread_names(worker: Any) -> dict[int, str]:
    """The worker's pool threads by native id, named by their pool (hookpost-db, ...).

    Read after ``run()``: a pool keeps its finished threads, which still know their ids.
    """
    names: dict[int, str] = {}
    for pool in (worker._db, worker._recorder, worker._fanner, worker._handler):
        for thread in pool._threads:
            if thread.native_id is not None:
                # Thread pools number their threads (hookpost-db_0): the pool is the name.
                names[thread.native_id] = thread.name.rsplit("_", 1)[0]
    return names


class SlotUse(NamedTuple):
    """How full a worker's send slots were over a run."""

    concurrency: int
    busy: float  # mean number of slots busy
    idle: float  # share of readings with no slot busy
    starved: float  # share of readings with no claimed delivery waiting for a slot

    def line(self) -> str:
        return (
            f"    send slots: {self.busy:.1f} of {self.concurrency} busy on average; "
            f"none busy {self.idle:.0%} of the run, no claim waiting for a slot {self.starved:.0%}"
        )


class SendSlots(_Sampler):
    """How many of a worker's send slots are busy while the block runs, and how often none are.

    A worker whose slots stand empty is waiting for claims, not for its receiver or
    its CPU: this tells the two apart. It reads the worker's private queues from
    another thread, which is only good enough for a benchmark.
    """

    # Every 50 ms: it runs in the worker's process, so each reading takes that process's GIL.
    interval = 0.05

    def __init__(self, worker: Any) -> None:
        super().__init__("bench-send-slots")
        self.worker = worker
        self.samples: list[tuple[int, int]] = []

    # The readings taken on entering and leaving the block fall outside the worker's run,
    # with nothing in flight: they are dropped, not counted as idle.
    def _begin(self) -> None:
        self.samples.clear()

    def _finish(self) -> None:
        del self.samples[-1:]

    def _sample(self) -> None:
        # The queue may change size while it is counted: that reading is skipped.
        with contextlib.suppress(RuntimeError):
            self.samples.append((len(self.worker._tasks), len(self.worker._waiting)))

    def summary(self) -> SlotUse | None:
        """The readings summed up; None for a run too short to be read even once."""
        samples = self.samples
        if not samples:
            return None
        return SlotUse(
            self.worker.concurrency,
            statistics.fmean(busy for busy, _ in samples),
            sum(1 for busy, _ in samples if busy == 0) / len(samples),
            sum(1 for _, queued in samples if queued == 0) / len(samples),
        )


#: The worker's threads as the budget line names them.
_THREAD_ROLES = {
    "MainThread": "event loop",
    "hookpost-db": "claiming",
    "hookpost-record": "recording",
    "hookpost-fanout": "fan-out",
    "hookpost-listen": "listening",
    "hookpost-inbox": "inbox",
}


def worker_burst(
    concurrency: int, batch_size: int, log_path: str | None, profile: str | None
) -> dict[str, Any]:
    """In the worker process: drain the outbox with one ``Worker`` and time it."""
    from hookpost.worker import Worker

    db_calls = _time_outbox_calls()
    if log_path:
        set_hookpost_logging(logging.INFO, log_path)
    worker = Worker(concurrency=concurrency, batch_size=batch_size)
    loop_profile = db_profile = None
    if profile:
        loop_profile, db_profile = cProfile.Profile(), cProfile.Profile()
        # The worker's single database thread: profile it from inside (cProfile is per thread).
        worker._db.submit(db_profile.enable).result()
        loop_profile.enable()
    cpu0, main0, start = _cpu_self(), time.thread_time(), time.perf_counter()
    with SendSlots(worker) as slots:
        stats = worker.run(burst=True)
    seconds, cpu = time.perf_counter() - start, _cpu_self() - cpu0
    # The event loop's thread reads its own time; the pools' threads are read from outside.
    main_cpu = time.thread_time() - main0
    if loop_profile and db_profile and profile:
        loop_profile.disable()
        loop_profile.dump_stats(f"{profile}.loop")
        db_profile.create_stats()
        db_profile.dump_stats(f"{profile}.db")
    return {
        "seconds": seconds,
        "cpu": cpu,
        "delivered": stats.delivered,
        "failed": stats.failed,
        "db": db_calls,
        "main_cpu": main_cpu,
        "thread_names": thread_names(worker),
        "slots": slots.summary(),
    }


class Measured(NamedTuple):
    """A child's result dict and what else was busy while it ran."""

    result: dict[str, Any]
    machine: float  # share of all CPUs busy
    receiver_cpu: float
    database_cpu: float


def measure(
    receivers: Receivers,
    target: Callable[[], dict[str, Any]],
    *,
    database: bool = True,
    watch: Callable[[int], contextlib.AbstractContextManager[Any]] | None = None,
) -> Measured:
    """Run ``target`` in a child; read the machine's load, the receivers' and PostgreSQL's CPU meanwhile."""
    load: dict[str, float] = {}
    receiver_cpu0 = receivers.cpu_seconds()
    sampler = DatabaseCpu(BENCH_DB) if database else None
    with machine_load(load), sampler or contextlib.nullcontext():
        result = run_in_child(target, watch=watch)
    return Measured(
        result, load["machine"], receivers.cpu_seconds() - receiver_cpu0, sampler.seconds if sampler else 0.0
    )


def run_hookpost(
    args: argparse.Namespace,
    receivers: Receivers,
    label: str,
    *,
    events: int | None = None,
    log_path: str | None = None,
    profile: str | None = None,
) -> Run:
    """Commit the events, then time one burst worker until every delivery is delivered."""
    events = events or args.events
    reset_outbox()
    seed_events(events)
    vacuum()
    thread_cpu = ThreadCpu()
    measured = measure(
        receivers,
        lambda: worker_burst(args.concurrency, args.batch_size, log_path, profile),
        watch=thread_cpu.of,
    )
    result = measured.result
    threads = {"MainThread": result["main_cpu"], **thread_cpu.by_name(result["thread_names"])}
    delivered = delivered_count()
    if delivered != events or result["failed"]:
        raise RuntimeError(f"{label}: {delivered} of {events} delivered, {result['failed']} failed")
    return Run(
        label,
        events,
        result["seconds"],
        result["cpu"],
        measured.receiver_cpu,
        measured.machine,
        result["db"],
        measured.database_cpu,
        threads,
        result["slots"],
        thread_cpu.main_waited(),
    )


# --- where the ratio goes --------------------------------------------------------------------

#: The worker id the decomposition runs lease to beforehand and then send as.
PRELEASED = "bench-preleased"


def lease_everything(count: int) -> list[Any]:
    """Fan out the seeded events and lease every delivery to ``PRELEASED`` in one claim, untimed."""
    from hookpost import outbox
    from hookpost.models import Endpoint

    while outbox.fan_out(limit=1000):
        pass
    endpoint = Endpoint.objects.get()
    # Claiming ahead by the whole count lets one claim take every delivery despite the cap.
    claims = outbox.claim(
        worker_id=PRELEASED,
        limit=count,
        lease=dt.timedelta(minutes=10),
        claim_ahead=True,
        ahead={endpoint.id: count},
    )
    if len(claims) != count:
        raise RuntimeError(f"leased {len(claims)} of {count} deliveries beforehand")
    return claims


def preleased_burst(claims: list[Any], concurrency: int, batch_size: int, record: bool) -> dict[str, Any]:
    """In the worker process: send ``claims`` with a ``Worker`` that is handed them instead of claiming.

    With ``record`` its fan-out finds nothing left to do and outcomes are recorded
    as usual; without it the worker touches no database at all, so what is left is
    its HTTP path on a machine it shares only with the receiver.
    """
    from hookpost import outbox
    from hookpost.worker import Worker

    class Preleased(Worker):
        async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if fn is outbox.claim:
                taken = claims[: kwargs["limit"]]
                del claims[: kwargs["limit"]]
                return taken
            if not record and fn is outbox.fan_out_and_lease:
                return outbox.FannedOut(0, [])
            if not record and fn is outbox.record_results:
                return None
            return await super()._call(fn, *args, **kwargs)

        async def _handle_inbox(self) -> int:
            return await super()._handle_inbox() if record else 0

    worker = Preleased(worker_id=PRELEASED, concurrency=concurrency, batch_size=batch_size)
    cpu0, start = _cpu_self(), time.perf_counter()
    stats = worker.run(burst=True)
    return {"seconds": time.perf_counter() - start, "cpu": _cpu_self() - cpu0, "delivered": stats.delivered}


def run_preleased(args: argparse.Namespace, receivers: Receivers, record: bool) -> Run:
    """Time the worker sending deliveries leased beforehand: what claiming and fan-out cost, and recording."""
    reset_outbox()
    seed_events(args.events)
    claims = lease_everything(args.events)
    vacuum()
    measured = measure(receivers, lambda: preleased_burst(claims, args.concurrency, args.batch_size, record))
    result = measured.result
    if result["delivered"] != args.events:
        raise RuntimeError(f"preleased run: {result['delivered']} of {args.events} delivered")
    if record and delivered_count() != args.events:
        raise RuntimeError(f"preleased run: {delivered_count()} of {args.events} recorded as delivered")
    label = "  leased beforehand, recorded" if record else "  leased beforehand, no database"
    return Run(
        label,
        args.events,
        result["seconds"],
        result["cpu"],
        measured.receiver_cpu,
        measured.machine,
        None,
        measured.database_cpu,
    )


# --- the bare client ------------------------------------------------------------------------


def bare_requests(count: int) -> list[tuple[bytes, dict[str, str]]]:
    """The bodies and signed headers hookpost sends for ``count`` seeded events, built once."""
    from hookpost.delivery import build_request
    from hookpost.models import Endpoint, Event

    endpoint = Endpoint.objects.get()
    reset_outbox()
    seed_events(count)
    requests = []
    for event in Event.objects.order_by("occurred_at", "id"):
        request = build_request(event, endpoint)
        requests.append((request.body, request.headers))
    reset_outbox()
    return requests


async def _bare_post(url: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int) -> int:
    import aiohttp

    pending = iter(requests)
    ok = 0

    async def lane(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        for body, headers in pending:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                ok += resp.status == 200

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))
    return ok


def bare_burst(url: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int) -> dict[str, Any]:
    """In the bare client's process: post every request, ``concurrency`` at a time, and time it."""
    cpu0, start = _cpu_self(), time.perf_counter()
    ok = asyncio.run(_bare_post(url, requests, concurrency))
    return {"seconds": time.perf_counter() - start, "cpu": _cpu_self() - cpu0, "ok": ok}


def run_bare(
    args: argparse.Namespace, receivers: Receivers, requests: list[tuple[bytes, dict[str, str]]]
) -> Run:
    # No database is involved, so none is read: its sampler's own CPU would be the bare client's loss.
    measured = measure(
        receivers, lambda: bare_burst(receivers.url, requests, args.concurrency), database=False
    )
    result = measured.result
    if result["ok"] != len(requests):
        raise RuntimeError(f"bare client: {result['ok']} of {len(requests)} answered 200")
    label = f"bare aiohttp, {args.concurrency} at a time"
    return Run(
        label, len(requests), result["seconds"], result["cpu"], measured.receiver_cpu, measured.machine
    )


# --- latency --------------------------------------------------------------------------------


def worker_forever(concurrency: int, batch_size: int) -> dict[str, Any]:
    """In the worker process: run until SIGTERM, woken by LISTEN/NOTIFY."""
    from hookpost.worker import Worker

    db_calls = _time_outbox_calls()
    stats = Worker(concurrency=concurrency, batch_size=batch_size).run(handle_signals=True)
    return {"delivered": stats.delivered, "failed": stats.failed, "db": db_calls}


def wait_delivered(count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if delivered_count() >= count:
            return True
        time.sleep(0.05)
    return False


@dataclass
class Latency:
    """Commit-to-receipt times of the paced events, in milliseconds."""

    millis: list[float]
    produced: int
    achieved_rate: float
    behind_ms: float  # how late the producer's last commit was against its schedule
    db_line: str  # the worker's database thread while the events were produced

    def percentile(self, p: int, millis: list[float] | None = None) -> float:
        return statistics.quantiles(millis or self.millis, n=100, method="inclusive")[p - 1]

    def slices(self, count: int = 5) -> str:
        """p50/p95 of consecutive slices of the run, in commit order: does the worker keep up?"""
        size = max(len(self.millis) // count, 2)
        parts = []
        for start in range(0, size * count, size):
            chunk = self.millis[start : start + size]
            parts.append(f"{self.percentile(50, chunk):.0f}/{self.percentile(95, chunk):.0f}")
        return " ".join(parts)


def run_latency(args: argparse.Namespace, receivers: Receivers) -> Latency:
    """Commit one event per transaction at ``--rate`` for ``--seconds`` while a worker runs."""
    from django.db import transaction

    from hookpost.capture import emit

    reset_outbox()
    vacuum()
    close_connections()
    out: Queue[Any] = CTX.Queue()
    worker = CTX.Process(target=_child, args=(lambda: worker_forever(args.concurrency, args.batch_size), out))
    worker.start()
    commits: dict[str, float] = {}
    try:
        # Warm up: the worker is listening, connected and has a pooled connection once this arrives.
        with transaction.atomic():
            emit("bench.warmup", {"warm": True})
        if not wait_delivered(1, timeout=30):
            raise RuntimeError("the worker did not deliver the warm-up event within 30 s")
        total = int(args.rate * args.seconds)
        interval = 1.0 / args.rate
        wall_start, start = time.time(), time.perf_counter()
        for n in range(total):
            delay = start + n * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            with transaction.atomic():
                event = emit(LATENCY_EVENT_TYPE, book(n))
            commits[event.id] = time.time()
        elapsed = time.perf_counter() - start
        behind = (elapsed - (total - 1) * interval) * 1000
        if not wait_delivered(total + 1, timeout=60):
            raise RuntimeError(f"only {delivered_count() - 1} of {total} paced events delivered in 60 s")
    finally:
        if worker.pid:
            os.kill(worker.pid, signal.SIGTERM)
    result = out.get(timeout=60)
    worker.join(timeout=30)
    arrivals = receivers.close()
    ordered = sorted(commits.items(), key=lambda item: item[1])
    millis = [(arrivals[msg_id] - at) * 1000 for msg_id, at in ordered]
    db = db_summary(result["db"], elapsed, (wall_start, wall_start + elapsed))
    return Latency(millis, total, total / elapsed, behind, db)


# --- logging ---------------------------------------------------------------------------------


def log_call_cost(path: str, calls: int = 20_000) -> tuple[float, float]:
    """µs per call of the worker's per-attempt INFO line: written to a file, and filtered out (WARNING)."""
    logger = logging.getLogger("hookpost.worker")
    line = "attempt delivery=%s event=%s endpoint=%s attempt=%d status=%s duration_ms=%d verdict=%s"
    args = (123456, "msg_2ZB3KXW7M4Q5TJ8R9PHN6DVCYF", 1, 1, 200, 2, "delivered")
    costs = []
    for level, target in ((logging.INFO, path), (logging.WARNING, None)):
        set_hookpost_logging(level, target)
        start = time.perf_counter()
        for _ in range(calls):
            logger.info(line, *args)
        costs.append((time.perf_counter() - start) / calls * 1e6)
    set_hookpost_logging(logging.WARNING)
    return costs[0], costs[1]


# --- profile --------------------------------------------------------------------------------


def print_profile(path: str, title: str, limit: int) -> None:
    stream = io.StringIO()
    stats = pstats.Stats(path, stream=stream)
    stats.sort_stats("tottime").print_stats(limit)
    print(f"\n--- {title} (top {limit} by own time) ---")
    text = stream.getvalue()
    print(text[text.find("   ncalls") :].rstrip())


# --- CPU budget -----------------------------------------------------------------------------


def print_cpu_budget(hookpost_runs: list[Run], bare_runs: list[Run], bare_rate: float) -> None:
    """Where a delivery's CPU goes, against a bare request's, and the rate that CPU allows on this machine.

    The worker, PostgreSQL and the receiver share this machine's CPUs; a delivery
    needs all three, a bare request two. Dividing the CPUs by a delivery's total gives
    the most deliveries per second the machine could do if every CPU were busy.
    """
    worker, database, receiver = (
        statistics.median(r.cpu_per_request_us()[i] for r in hookpost_runs) for i in range(3)
    )
    client, _, bare_receiver = (
        statistics.median(r.cpu_per_request_us()[i] for r in bare_runs) for i in range(3)
    )
    total = worker + database + receiver
    cpus = os.cpu_count() or 1
    ceiling = cpus / total * 1e6
    print(
        f"  CPU per delivery: worker {worker:.0f} µs + PostgreSQL {database:.0f} µs "
        f"+ receiver {receiver:.0f} µs = {total:.0f} µs"
    )
    split = worker_threads_us(hookpost_runs)
    if split:
        print("    the worker's: " + ", ".join(f"{role} {us:.0f} µs" for role, us in split))
    waited = statistics.median(r.loop_waited / r.seconds for r in hookpost_runs)
    if waited:
        print(
            f"    its event loop waited for a CPU {waited:.0%} of the run: runnable, while PostgreSQL, "
            "the receiver and its own database threads had the CPUs"
        )
    print(
        f"  CPU per bare request: client {client:.0f} µs + receiver {bare_receiver:.0f} µs "
        f"= {client + bare_receiver:.0f} µs"
    )
    print(
        f"  {cpus} CPUs all busy would allow {ceiling:,.0f} deliveries/s at that cost: "
        f"{ceiling / bare_rate:.2f} of the bare median"
    )


def worker_threads_us(runs: list[Run]) -> list[tuple[str, float]]:
    """The worker's CPU per delivery by thread role (median over ``runs``), the largest first."""
    samples: dict[str, list[float]] = {}
    for run in runs:
        for name, seconds in (run.threads or {}).items():
            samples.setdefault(_THREAD_ROLES.get(name, name), []).append(seconds * 1e6 / run.count)
    medians = [(role, statistics.median(values)) for role, values in samples.items()]
    return sorted((item for item in medians if item[1] >= 1), key=lambda item: -item[1])


# --- main -----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="events per throughput run")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight (worker and bare)")
    parser.add_argument("--batch-size", type=int, default=200, help="the worker's claim batch (its default)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating hookpost/bare throughput rounds")
    parser.add_argument("--receivers", type=int, default=1, help="receiver processes (SO_REUSEPORT)")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second in the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--no-extras", action="store_true", help="skip the INFO-logging and cap-10 runs")
    parser.add_argument("--profile", metavar="PREFIX", help="also profile one worker run (PREFIX.loop/.db)")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    ensure_postgresql_database()
    configure_django()
    prepare_database()
    preload_http()
    receivers = start_receivers(args.receivers)
    kind = "process" if args.receivers == 1 else "processes (SO_REUSEPORT)"
    print("hookpost delivery benchmark: one worker process against a loopback aiohttp receiver")
    print(f"  PostgreSQL database {BENCH_DB}; {args.receivers} receiver {kind} on {receivers.url}")
    print(
        f"  {args.events:,} events of one type, one endpoint (max_in_flight={args.concurrency}); "
        f"Worker(concurrency={args.concurrency}, batch_size={args.batch_size}).run(burst=True)"
    )
    print(f"  {os.cpu_count()} CPUs; median of {args.rounds} alternating rounds", flush=True)

    make_endpoint(receivers.url, max_in_flight=args.concurrency)
    requests = bare_requests(args.events)
    print(f"  request body {len(requests[0][0])} bytes, {len(requests[0][1])} headers\n")
    hookpost_runs: list[Run] = []
    bare_runs: list[Run] = []
    for round_no in range(args.rounds):
        # Alternate which goes first, so neither always runs right after the other's cleanup.
        order = ["hookpost", "bare"] if round_no % 2 == 0 else ["bare", "hookpost"]
        for which in order:
            if which == "hookpost":
                run = run_hookpost(args, receivers, f"hookpost worker, round {round_no + 1}")
                hookpost_runs.append(run)
            else:
                run = run_bare(args, receivers, requests)
                run.label += f", round {round_no + 1}"
                bare_runs.append(run)
            print(run.line(), flush=True)
    rate = statistics.median(r.rate for r in hookpost_runs)
    bare_rate = statistics.median(r.rate for r in bare_runs)
    ratio = rate / bare_rate
    print(f"\n  hookpost median {rate:,.0f} deliveries/s; bare median {bare_rate:,.0f} requests/s")
    print(f"  hookpost / bare = {ratio:.2f}")
    print_cpu_budget(hookpost_runs, bare_runs, bare_rate)

    for run in hookpost_runs:
        print(f"  {run.label}:\n{run.db_line()}")

    if not args.no_extras:
        small = min(args.events, 1000)
        print("\nFor information (one run each):")
        with tempfile.TemporaryDirectory(prefix="hookpost-bench-") as tmp:
            log_path = str(Path(tmp) / "worker.log")
            info = run_hookpost(args, receivers, "hookpost, INFO log to a file", log_path=log_path)
            with open(log_path, encoding="utf-8") as log:
                lines = sum(1 for _ in log)
            info_us, off_us = log_call_cost(str(Path(tmp) / "micro.log"))
        print(info.line())
        print(
            f"    {info.rate / rate - 1:+.0%} vs the WARNING median ({lines:,} log lines); one attempt line "
            f"costs {info_us:.1f} µs logged to a file, {off_us:.2f} µs filtered out at WARNING "
            f"({info_us / (1e6 / TARGET_RATE):.1%} of a delivery's budget at {TARGET_RATE:,.0f}/s)"
        )
        make_endpoint(receivers.url, max_in_flight=None)
        capped = run_hookpost(args, receivers, f"hookpost, MAX_IN_FLIGHT=10, {small:,} events", events=small)
        print(capped.line())
        print(capped.db_line(), flush=True)
        make_endpoint(receivers.url, max_in_flight=args.concurrency)
        print("  Where the ratio goes: the worker handed every delivery leased beforehand (untimed),")
        print("  so it neither claims nor fans out; then touching no database at all:")
        for record in (True, False):
            preleased = run_preleased(args, receivers, record)
            print(f"{preleased.line()}\n    {preleased.rate / bare_rate:.2f} of the bare median", flush=True)

    if args.profile:
        run_hookpost(args, receivers, "profiled", profile=args.profile)

    print(f"\nLatency: one event per transaction at {args.rate:g}/s for {args.seconds:g} s,")
    print(
        "  commit (time.time() after COMMIT) to the receiver's handler (time.time()); worker woken by NOTIFY"
    )
    latency = run_latency(args, receivers)
    p50, p95, p99 = (latency.percentile(p) for p in (50, 95, 99))
    print(
        f"  {latency.produced:,} events at {latency.achieved_rate:,.0f}/s "
        f"(producer {latency.behind_ms:.0f} ms behind schedule at the end)"
    )
    print(
        f"  p50 {p50:.1f} ms   p95 {p95:.1f} ms   p99 {p99:.1f} ms   "
        f"min {min(latency.millis):.1f} ms   max {max(latency.millis):.1f} ms"
    )
    print(f"  p50/p95 ms by fifth of the run: {latency.slices()}")
    print(latency.db_line)
    close_connections()

    if args.profile:
        print_profile(f"{args.profile}.loop", "worker event loop thread", 30)
        print_profile(f"{args.profile}.db", "worker database thread", 30)

    print(f"\n(whole run {time.perf_counter() - began:.0f} s)")
    print(f"deliveries/s {rate:,.0f}: {verdict(rate >= TARGET_RATE)} the target ≥ {TARGET_RATE:,.0f}/s")
    print(f"ratio vs bare {ratio:.2f}: {verdict(ratio >= TARGET_RATIO)} the target ≥ {TARGET_RATIO:.2f}")
    print(f"latency p95 {p95:.1f} ms: {verdict(p95 <= TARGET_P95_MS)} the target ≤ {TARGET_P95_MS:.0f} ms")
    print(f"deliveries_per_s value={rate:.0f}")
    print(f"ratio_vs_bare value={ratio:.2f}")
    print(f"latency_p95_ms value={p95:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
