"""Fault injection for the reliability suite: child processes to kill, hostile HTTP servers, and the checks.

- :class:`Child` runs ``_faults_child.py`` (a worker, a writer, a migration) with its output
  in files, so a chatty child never blocks on a full pipe, and kills it for sure at the end.
- :class:`RawServer` is a TCP server on 127.0.0.1 for receivers that misbehave below HTTP:
  one that never answers, one that trickles bytes, one with an endless body, one that
  redirects. It counts connections, requests and the bytes it managed to send.
- :func:`receiver_at` starts the tests' ``Receiver`` on a chosen port (for an outage: the
  endpoint points at a closed port, the receiver comes up there later) and with a listen
  backlog that dozens of concurrent requests do not overflow.
- The checks every crash scenario ends with: each event arrived, duplicates only with the
  same webhook-id and body, every request verifies, the attempt log adds up, nothing stuck.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from tests.receiver import Received, Receiver

CHILD = Path(__file__).with_name("_faults_child.py")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_database() -> dict[str, Any]:
    """``DATABASES["default"]`` overrides that put a child on the running test's database."""
    from django.db import connection

    return {"NAME": connection.settings_dict["NAME"]}


# --- child processes ---------------------------------------------------------------------------


class Child:
    """One ``_faults_child.py MODE`` process; stdout and stderr go to files read at will."""

    def __init__(
        self,
        mode: str,
        *,
        db: dict[str, Any] | None = None,
        hookpost: dict[str, Any] | None = None,
        args: dict[str, Any] | None = None,
        stdin: bool = False,
    ) -> None:
        self.mode = mode
        self._dir = Path(tempfile.mkdtemp(prefix=f"hookpost-faults-{mode}-"))
        self._out = self._dir / "stdout"
        self._err = self._dir / "stderr"
        env = {
            **os.environ,
            "FAULTS_DB": json.dumps(db if db is not None else child_database()),
            "FAULTS_HOOKPOST": json.dumps(hookpost or {}),
            "FAULTS_ARGS": json.dumps(args or {}),
        }
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(CHILD), mode],
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self._out.read_text(errors="replace")

    def complete_lines(self) -> list[str]:
        """The output lines the child has finished writing.

        A line still being written is left out: with PYTHONUNBUFFERED set (as on the CI
        machines), ``print`` writes a line word by word, and a reader once took a
        failpoint's line for one without the ids that were still to come.
        """
        finished, _, _ = self.output().rpartition("\n")
        return finished.splitlines()

    def errors(self) -> str:
        return self._err.read_text(errors="replace")

    def lines(self, tag: str) -> list[list[str]]:
        """The output lines starting with ``tag``, each as its words after the tag."""
        return [line.split()[1:] for line in self.complete_lines() if line.split()[:1] == [tag]]

    def signals(self) -> list[tuple[str, dict[str, Any]]]:
        """The operational signals the worker child printed: (name, keyword arguments)."""
        found = []
        for line in self.complete_lines():
            if line.startswith("SIGNAL "):
                _, name, kwargs = line.split(maxsplit=2)
                found.append((name, json.loads(kwargs)))
        return found

    def wait_for_line(self, tag: str, timeout: float = 60) -> list[str]:
        """Block until the child prints a line starting with ``tag``; its words after the tag."""

        def seen() -> list[str] | None:
            found = self.lines(tag)
            if found:
                return found[0] or ["<empty>"]
            if not self.alive():
                raise AssertionError(
                    f"{self.mode} child exited ({self.process.returncode}) before {tag!r}:\n{self.errors()}"
                )
            return None

        return wait_until(seen, timeout, f"{tag!r} from the {self.mode} child")  # type: ignore[no-any-return]

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    def finish(self, timeout: float = 120) -> str:
        """Wait for a child that ends by itself and clean up; fail with its stderr unless it exited 0."""
        try:
            code = self.wait(timeout)
            assert code == 0, f"{self.mode} child exited {code}:\n{self.errors()}"
            return self.output()
        finally:
            self.close()

    def kill(self) -> int:
        """SIGKILL, and reap: the returncode (``-SIGKILL`` unless it was already gone)."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        return self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (the worker finishes what is in flight) and wait for the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def peak_rss_kb(self) -> int:
        """The child's peak resident set so far (``VmHWM``), read while it is alive."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")

    def close(self) -> None:
        if self.alive():
            self.kill()
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to put children in; every one still running is killed at the end, whatever happened."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.close()


# --- receivers ---------------------------------------------------------------------------------


class _RoomyServer(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops SYNs when dozens of requests connect at
    # once; the client then waits a second to retry, which is the kernel's doing, not ours.
    request_queue_size = 256


def receiver_at(port: int = 0) -> Receiver:
    """The tests' ``Receiver`` on ``port`` (0: any free one), with a listen backlog for many clients."""
    receiver = Receiver()
    handler = receiver.server.RequestHandlerClass
    receiver.server.server_close()
    receiver.server = _RoomyServer(("127.0.0.1", port), handler)
    receiver.server.daemon_threads = True
    receiver.port = int(receiver.server.server_address[1])
    receiver._thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    return receiver


class RawServer:
    """A TCP server on 127.0.0.1: reads each HTTP request, then lets ``behaviour`` do what it likes.

    ``behaviour(server, conn)`` gets the connection after the request was read; the
    connection is closed when it returns. Use ``server.send`` to count the bytes that
    went out and ``server.sleep`` to pause (it returns False once the server is stopping).
    """

    def __init__(self, behaviour: Callable[[RawServer, socket.socket], None]) -> None:
        self.behaviour = behaviour
        self.connections = 0
        self.requests: list[dict[str, str]] = []
        self.open = 0
        self.bytes_sent = 0
        #: Bytes sent on each connection, in the order they were accepted.
        self.sent_per_connection: list[int] = []
        self._connection = threading.local()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])

    def url(self, path: str = "/hooks") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> RawServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self.open += 1
            self._connection.index = len(self.sent_per_connection)
            self.sent_per_connection.append(0)
        try:
            conn.settimeout(0.2)
            headers = self._read_request(conn)
            if headers is not None:
                with self._lock:
                    self.requests.append(headers)
                self.behaviour(self, conn)
        except OSError:
            pass  # the client went away: that is what clients of hostile servers do
        finally:
            conn.close()
            with self._lock:
                self.open -= 1

    def _read_request(self, conn: socket.socket) -> dict[str, str] | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self._recv(conn)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(body) < length:
            chunk = self._recv(conn)
            if not chunk:
                return None
            body += chunk
        return headers

    def _recv(self, conn: socket.socket) -> bytes:
        while not self._stopping.is_set():
            try:
                return conn.recv(65536)
            except TimeoutError:
                continue
        return b""

    def send(self, conn: socket.socket, data: bytes) -> bool:
        """Send all of ``data`` unless the server stops first; False if it did."""
        view = memoryview(data)
        while view:
            if self._stopping.is_set():
                return False
            try:
                sent = conn.send(view)
            except TimeoutError:
                continue
            with self._lock:
                self.bytes_sent += sent
                self.sent_per_connection[self._connection.index] += sent
            view = view[sent:]
        return True

    def sleep(self, seconds: float) -> bool:
        return not self._stopping.wait(seconds)

    def hold(self, conn: socket.socket) -> None:
        """Keep the connection open, answering nothing, until the client gives up or the server stops."""
        while self._recv(conn):
            pass


def never_answers(server: RawServer, conn: socket.socket) -> None:
    """Accept the request and hold it: no status line, ever."""
    server.hold(conn)


def trickles_headers(server: RawServer, conn: socket.socket) -> None:
    """A 200 whose status line and headers come one byte every half second."""
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
        if not (server.send(conn, bytes([byte])) and server.sleep(0.5)):
            return


def trickles_body(server: RawServer, conn: socket.socket) -> None:
    """A 200 whose headers come at once and whose body comes one byte every half second."""
    if not server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"):
        return
    for _ in range(1000):
        if not (server.send(conn, b"x") and server.sleep(0.5)):
            return


GIGABYTE = 1 << 30


def gigabyte_body(server: RawServer, conn: socket.socket) -> None:
    """A 200 announcing a 1 GB body, produced lazily for as long as the client keeps reading."""
    if not server.send(conn, f"HTTP/1.1 200 OK\r\nContent-Length: {GIGABYTE}\r\n\r\n".encode()):
        return
    chunk = b"x" * 65536
    for _ in range(GIGABYTE // len(chunk)):
        if not server.send(conn, chunk):
            return


def redirects_to(location: str) -> Callable[[RawServer, socket.socket], None]:
    """A 302 to ``location``."""

    def redirect(server: RawServer, conn: socket.socket) -> None:
        server.send(conn, f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())

    return redirect


def answers_ok(server: RawServer, conn: socket.socket) -> None:
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


# --- checks ------------------------------------------------------------------------------------


def verify(secret: str, request: Received) -> dict[str, Any]:
    """The payload of ``request`` if its Standard Webhooks signature verifies under ``secret``."""
    return Webhook(secret).verify(request.body, request.headers)  # type: ignore[no-any-return]


def duplicates_of(requests: list[Received]) -> dict[tuple[str, str], list[Received]]:
    """The requests per (path, webhook-id) that arrived more than once."""
    seen: dict[tuple[str, str], list[Received]] = {}
    for request in requests:
        seen.setdefault((request.path, request.headers["webhook-id"]), []).append(request)
    return {key: copies for key, copies in seen.items() if len(copies) > 1}


def check_deliveries(receiver: Receiver, secrets: dict[str, str]) -> dict[str, int]:
    """Every event reached each endpoint (path -> secret), duplicates are exact copies, all verify.

    Returns the numbers: events, requests, duplicates.
    """
    from hookpost.models import Event

    events = set(Event.objects.values_list("id", flat=True))
    requests = receiver.received()
    for path, secret in secrets.items():
        arrived = [r for r in requests if r.path == path]
        assert {r.headers["webhook-id"] for r in arrived} == events, f"events missing or foreign at {path}"
        for request in arrived:
            payload = verify(secret, request)
            assert json.loads(request.body) == payload
    for copies in duplicates_of(requests).values():
        # The same webhook-id carries the very same body: a receiver may drop the copy unseen.
        assert len({r.body for r in copies}) == 1
    duplicates = len(requests) - len({(r.path, r.headers["webhook-id"]) for r in requests})
    return {"events": len(events), "requests": len(requests), "duplicates": duplicates}


def check_nothing_stuck() -> None:
    """No delivery pending or leased, every one delivered."""
    from hookpost.models import Delivery

    statuses = Counter(Delivery.objects.values_list("status", flat=True))
    assert set(statuses) == {Delivery.Status.DELIVERED}, statuses
    assert not Delivery.objects.exclude(lease_owner="").exists()
    assert not Delivery.objects.filter(lease_expires_at__isnull=False).exists()


def check_attempt_log() -> int:
    """Each delivery's attempts are numbered 1..attempt_count; a delivered one ends with its only success.

    Returns the number of attempts logged.
    """
    from hookpost.models import Attempt, Delivery

    attempts: dict[int, list[Attempt]] = {}
    for attempt in Attempt.objects.order_by("number"):
        attempts.setdefault(attempt.delivery_id, []).append(attempt)
    for delivery in Delivery.objects.all():
        log = attempts.get(delivery.id, [])
        assert [a.number for a in log] == list(range(1, delivery.attempt_count + 1)), delivery
        if delivery.status == Delivery.Status.DELIVERED:
            assert [a.verdict for a in log][-1:] == ["delivered"], delivery
            assert all(a.verdict == "retry" for a in log[:-1]), delivery
            assert log[-1].status_code is not None and 200 <= log[-1].status_code < 300
    return sum(len(log) for log in attempts.values())
