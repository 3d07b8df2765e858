"""A real HTTP receiver on 127.0.0.1 for tests: scripted answers per path, every request recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# An answer: a status code, (status, headers), (status, headers, body), "hang" (never
# answer; the connection is dropped when the server stops) or a callable taking the
# Received request and returning one of these.
Answer = Any


class _Server(ThreadingHTTPServer):
    """A threading HTTP server whose listen backlog takes a worker's burst of connections."""

    # The default backlog of 5 can refuse some of the 50 connections a worker opens at once,
    # which the worker would log as transport errors the test did not script.
    request_queue_size = 128
    daemon_threads = True


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """Starts on a free port; ``url(path)`` addresses it; ``script(path, *answers)`` sets answers."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._scripts: dict[str, list[Answer]] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                got = Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
                )
                answer = receiver._next_answer(got)
                if answer == "hang":
                    receiver._stop.wait(60)
                    self.close_connection = True
                    return
                status, headers, payload = _normalise(answer)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str = "/hooks") -> str:
        """The full URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *answers: Answer) -> None:
        """Answer requests to ``path`` with ``answers`` in turn; the last one repeats."""
        with self._lock:
            self._scripts[path] = list(answers)

    def _next_answer(self, got: Received) -> Answer:
        with self._lock:
            path = got.path.split("?")[0]
            queue = self._scripts.get(path, [200])
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
            self.requests.append(got)
            self._arrived.notify_all()
        return answer(got) if callable(answer) else answer

    def received(self, path: str | None = None) -> list[Received]:
        """The requests so far, to ``path`` when given."""
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, count: int, timeout: float = 10.0, path: str | None = None) -> list[Received]:
        """Block until ``count`` requests (to ``path``) arrived, or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                got = [r for r in self.requests if path is None or r.path == path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} requests, got {len(got)}")
                self._arrived.wait(left)


def _normalise(answer: Answer) -> tuple[int, dict[str, str], bytes]:
    if isinstance(answer, int):
        # 1xx, 204 and 304 carry no body (HTTP/1.1 clients reject one).
        return answer, {}, b"" if answer in (204, 304) or answer < 200 else b"ok"
    if len(answer) == 2:
        return answer[0], answer[1], b""
    status, headers, body = answer
    return status, headers, body if isinstance(body, bytes) else str(body).encode()


Factory = Callable[[], Receiver]
