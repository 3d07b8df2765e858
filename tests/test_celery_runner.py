"""The Celery runner end to end: a real Redis broker (db 15), a real Celery worker process, real HTTP."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from django.conf import settings
from django.db import connection, transaction
from django.test.utils import override_settings
from standardwebhooks.webhooks import Webhook

from hookpost import inbox, signing, sources
from hookpost.models import Delivery, Endpoint, Event, InboundWebhook
from hookpost.runners.celery import beat_schedule, sweep
from library.models import Author, Tag
from tests.celery_app import BROKER, QUEUE, app
from tests.receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

CHILD = Path(__file__).with_name("celery_child.py")
ROOT = Path(__file__).resolve().parents[1]


# --- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[redis.Redis]:
    """A client of the test broker (fails when Redis is down); closes every connection at the end."""
    client = redis.Redis.from_url(BROKER)
    try:
        client.ping()
    except redis.ConnectionError:
        client.close()
        pytest.fail(f"Redis is not reachable at {BROKER} (scripts/ensure-services starts it)")
    try:
        yield client
    finally:
        _forget_queue(client)
        client.close()
        # The producer pool holds sockets to Redis: close them before they are collected.
        app.close()


@pytest.fixture(autouse=True)
def _empty_queue(request: pytest.FixtureRequest) -> None:
    if "broker" in request.fixturenames:
        _purge(request.getfixturevalue("broker"))


def _purge(client: redis.Redis) -> None:
    for key in client.scan_iter(match=f"{QUEUE}*"):
        client.delete(key)


def _forget_queue(client: redis.Redis) -> None:
    _purge(client)
    for key in client.scan_iter(match=f"_kombu.binding*.{QUEUE}"):
        client.delete(key)


def queued(client: redis.Redis) -> list[tuple[str, dict]]:
    """The tasks waiting in this session's queue, oldest first: (name, kwargs)."""
    tasks = []
    for raw in reversed(client.lrange(QUEUE, 0, -1)):  # kombu LPUSHes and consumers BRPOP
        message = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        tasks.append((message["headers"]["task"], kwargs))
    return tasks


@pytest.fixture
def celery_runner() -> Iterator[None]:
    with override_settings(HOOKPOST={**settings.HOOKPOST, "RUNNER": "celery"}):
        yield


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


class CeleryWorker:
    """A ``celery worker`` child process consuming this session's queue, its output in a file."""

    def __init__(self, log: Path) -> None:
        self.log_path = log
        self._log = log.open("w")
        env = {
            **os.environ,
            "HOOKPOST_CHILD_DB": connection.settings_dict["NAME"],
            "HOOKPOST_CELERY_QUEUE": QUEUE,
            "HOOKPOST_CELERY_BROKER": BROKER,
        }
        # Output to a file, not a pipe: nobody reads while the test runs, so a pipe could fill.
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD)], env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT
        )

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        wait_until(lambda: text in self.output(), timeout, lambda: f"{text!r} not in:\n{self.output()}")

    def stop(self) -> None:
        """Warm shutdown (SIGTERM: the task running finishes); SIGKILL if that hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def celery_worker(broker: redis.Redis, tmp_path: Path) -> Iterator[Callable[[], CeleryWorker]]:
    started: list[CeleryWorker] = []

    def start() -> CeleryWorker:
        worker = CeleryWorker(tmp_path / f"celery-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_until(
    condition: Callable[[], bool], timeout: float = 30, message: Callable[[], str] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s. {message()}")
        time.sleep(0.05)


def make_endpoint(receiver: Receiver) -> Endpoint:
    return Endpoint.objects.create(url=receiver.url("/hooks"), event_types=["library.*"])


def delivered() -> bool:
    return Delivery.objects.filter(status=Delivery.Status.DELIVERED).exists()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- sending on commit ----------------------------------------------------------------------------


@pytest.mark.usefixtures("celery_runner")
def test_a_commit_is_delivered_by_the_celery_worker_signed_and_verifiable(receiver, celery_worker):
    endpoint = make_endpoint(receiver)
    worker = celery_worker()
    author = Author.objects.create(name="Le Guin")
    [request] = receiver.wait_for(1, timeout=30)
    payload = Webhook(endpoint.signing_secrets()[0]).verify(request.body, request.headers)
    assert payload["type"] == "library.author.created"
    assert payload["data"]["pk"] == author.pk
    assert request.headers["webhook-id"] == Event.objects.get().id
    wait_until(delivered, 15, worker.output)
    assert Delivery.objects.get().attempt_count == 1
    # The task's own report: "Task hookpost.deliver[<id>] succeeded in …: {…counts…}".
    worker.wait_for_log("] succeeded in")
    [report] = [line for line in worker.output().splitlines() if "] succeeded in" in line]
    assert "Task hookpost.deliver[" in report and "'delivered': 1" in report


@pytest.mark.usefixtures("celery_runner")
def test_a_rolled_back_transaction_sends_no_task_and_no_webhook(broker, receiver):
    make_endpoint(receiver)
    with pytest.raises(RuntimeError), transaction.atomic():
        Author.objects.create(name="never")
        assert Event.objects.count() == 1  # written, but only inside the transaction
        raise RuntimeError
    assert queued(broker) == []
    assert sweep.apply().get()["sent"] == 0
    assert receiver.received() == []


@pytest.mark.usefixtures("celery_runner")
def test_one_task_per_commit_however_many_events_and_savepoints(broker):
    with transaction.atomic():
        for i in range(50):
            Author.objects.create(name=str(i))
        Author.objects.filter(name__in=["1", "2", "3"]).delete()  # one multi-row write
    assert queued(broker) == [("hookpost.deliver", {"using": "default"})]
    _purge(broker)
    # The first event's savepoint rolls back, taking the callback with it: the next
    # event must register it again.
    with transaction.atomic():
        with pytest.raises(RuntimeError), transaction.atomic():
            Author.objects.create(name="rolled back")
            raise RuntimeError
        Author.objects.create(name="kept")
    assert queued(broker) == [("hookpost.deliver", {"using": "default"})]


@pytest.mark.usefixtures("celery_runner")
def test_the_task_drains_the_database_that_was_written(broker):
    with transaction.atomic(using="other"):
        Author.objects.using("other").create(name="elsewhere")
    assert queued(broker) == [("hookpost.deliver", {"using": "other"})]


def test_nothing_is_sent_when_the_runner_is_the_worker_command(broker):
    assert settings.HOOKPOST.get("RUNNER", "worker") == "worker"
    Author.objects.create(name="a")
    assert queued(broker) == []


# --- the database is the source of truth --------------------------------------------------------


@pytest.mark.usefixtures("celery_runner")
def test_a_lost_message_is_delivered_by_the_sweep(broker, receiver, celery_worker):
    make_endpoint(receiver)
    Author.objects.create(name="a")
    assert [name for name, _ in queued(broker)] == ["hookpost.deliver"]
    _purge(broker)  # the message is lost before any worker saw it
    worker = celery_worker()
    app.send_task("hookpost.sweep")  # what celery beat sends
    receiver.wait_for(1, timeout=30)
    wait_until(delivered, 15, worker.output)
    worker.wait_for_log("] succeeded in")
    assert "Task hookpost.sweep[" in worker.output()
    assert "Task hookpost.deliver[" not in worker.output()


@pytest.mark.usefixtures("celery_runner")
def test_with_the_broker_down_the_commit_succeeds_and_the_sweep_delivers(
    broker, receiver, celery_worker, caplog
):
    make_endpoint(receiver)
    # The same configuration, a broker nobody listens on; fixups=[]: no Django fix-up for a
    # throwaway app. The tasks follow the current app, so this one commit goes there.
    down = Celery("hookpost_tests_down", broker=f"redis://127.0.0.1:{closed_port()}/15", fixups=[])
    down.conf.update(task_default_queue=QUEUE)
    down.set_current()
    try:
        with caplog.at_level(logging.WARNING, logger="hookpost.runners.celery"), transaction.atomic():
            author = Author.objects.create(name="a")
    finally:
        app.set_current()
        down.close()
    assert Author.objects.filter(pk=author.pk).exists()  # the user's commit stands
    [record] = [r for r in caplog.records if r.name == "hookpost.runners.celery"]
    assert record.levelno == logging.WARNING
    assert "could not send hookpost.deliver" in record.getMessage()
    assert "hookpost.sweep" in record.getMessage()
    assert queued(broker) == []
    worker = celery_worker()
    app.send_task("hookpost.sweep")
    receiver.wait_for(1, timeout=30)
    wait_until(delivered, 15, worker.output)


# --- configuration ------------------------------------------------------------------------------


def test_beat_schedule_runs_the_sweep_periodically_and_drops_stale_ones():
    assert beat_schedule() == {
        "hookpost.sweep": {
            "task": "hookpost.sweep",
            "schedule": 30,
            "kwargs": {"using": "default"},
            "options": {"expires": 30},
        }
    }
    assert beat_schedule(5, using="other") == {
        "hookpost.sweep:other": {
            "task": "hookpost.sweep",
            "schedule": 5,
            "kwargs": {"using": "other"},
            "options": {"expires": 5},
        }
    }


def run_python(code: str, *args: str, env: dict[str, str]) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet); return its output."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize(("runner", "loaded"), [("worker", False), ("celery", True)])
def test_celery_is_imported_only_when_it_is_the_runner(runner, loaded):
    code = (
        # As if celery were not installed, when it must not be needed.
        "import sys; sys.modules.setdefault('celery', None) if sys.argv[1] == 'worker' else None\n"
        "import django; from django.conf import settings\n"
        "settings.HOOKPOST['RUNNER'] = sys.argv[1]\n"
        "django.setup()\n"
        "import hookpost, hookpost.worker\n"
        "print('hookpost.runners.celery' in sys.modules)\n"
    )
    path = os.pathsep.join(str(p) for p in (ROOT, ROOT / "example", ROOT / "src"))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": path}
    assert run_python(code, runner, env=env) == str(loaded)


def test_settings_can_import_the_runner_before_the_apps_are_loaded():
    code = (
        "from django.apps import apps\n"
        "from hookpost.runners.celery import beat_schedule\n"
        "assert not apps.ready\n"
        "print(beat_schedule(10)['hookpost.sweep']['schedule'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(ROOT / "src")
    assert run_python(code, env=env) == "10"


# --- received webhooks ----------------------------------------------------------------------------


def store_for_worker(msg_id: str, tag: str) -> inbox.Received:
    """Receive a signed webhook for a source in "worker" mode, as the view does."""
    secret = signing.generate_secret()
    source = sources.build("partner", {"secrets": [secret], "mode": "worker"})
    body = json.dumps({"type": "celery.test.tagged", "data": {"tag": tag}}).encode()
    headers = signing.sign_headers(msg_id, int(time.time()), body, [secret])
    message = signing.verify(headers, body, source.keys)
    text, payload = inbox.decode(body)
    return inbox.receive(
        source, message, event_type="celery.test.tagged", body=text, payload=payload, headers=headers
    )


@pytest.mark.usefixtures("celery_runner")
def test_a_webhook_stored_for_the_worker_is_handled_by_the_celery_worker(broker, celery_worker):
    with transaction.atomic():
        store_for_worker("msg_celery_1", "from celery")
        store_for_worker("msg_celery_2", "from celery too")
        assert queued(broker) == []  # nothing before commit
    assert [name for name, _ in queued(broker)] == ["hookpost.deliver"]  # one task per commit
    worker = celery_worker()
    processed = InboundWebhook.objects.filter(status=InboundWebhook.Status.PROCESSED)
    wait_until(lambda: processed.count() == 2, 30, worker.output)
    assert sorted(Tag.objects.values_list("name", flat=True)) == ["from celery", "from celery too"]
    worker.wait_for_log("] succeeded in")
    assert "'handled': 2" in worker.output()


def test_a_stored_webhook_sends_no_task_when_the_runner_is_the_worker_command(broker):
    store_for_worker("msg_not_celery", "ignored by celery")
    assert queued(broker) == []
