"""Measure what hookpost's receiving side costs per request, against a no-op view, on SQLite and PostgreSQL.

Run: ``.venv/bin/python bench/receiver.py [--requests 500] [--rounds 5] [--db sqlite|postgresql|both]``
(or ``make bench``). PostgreSQL must listen on 127.0.0.1:5432 (``HOOKPOST_PG_*`` override
the connection); the script creates the throwaway database ``hookpost_bench_receiver`` and
drops it at the end. It prints ``receiver_per_s`` lines per case and ``receiver_*_ratio``
lines per database, last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "src", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _postgres import django_database, ensure_database, pg_params  # noqa: E402

BENCH_DB = "hookpost_bench_receiver"
URLCONF = "hookpost_bench_receiver_urls"
DB_LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
EVENT_TYPE = "library.book.deleted"
BODY_BYTES = 1024
# The example project's middleware (Django's startproject list): every case goes through it.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]


# --- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """The benchmark's two sources' keys: an HMAC secret (v1) and an ed25519 pair (v1a)."""

    hmac_secret: str
    ed25519_private: str
    ed25519_public: str

    @classmethod
    def generate(cls) -> Keys:
        from hookpost import signing

        private, public = signing.generate_ed25519_keypair()
        return cls(signing.generate_secret(), private, public)


# --- settings -------------------------------------------------------------------------------


class BenchRouter:
    """Send the inbox (and every other model) to the database under test."""

    alias = "sqlite"

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return BenchRouter.alias

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return BenchRouter.alias


def configure_django(sqlite_path: str, keys: Keys) -> None:
    """Configure Django for hookpost with two sources in inline mode, one alias per database."""
    import django
    from django.conf import settings

    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": sqlite_path}
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only",
        ALLOWED_HOSTS=["testserver"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "django.contrib.messages",
            "hookpost",
        ],
        MIDDLEWARE=MIDDLEWARE,
        ROOT_URLCONF=URLCONF,
        DATABASES={
            "default": sqlite,
            "sqlite": sqlite,
            "postgresql": django_database(BENCH_DB),
        },
        DATABASE_ROUTERS=[BenchRouter()],
        HOOKPOST={
            "RECEIVER_SOURCES": {
                "hmac": {"secrets": [keys.hmac_secret], "mode": "inline"},
                "ed25519": {"secrets": [keys.ed25519_public], "mode": "inline"},
            },
        },
        LOGGING_CONFIG=None,
    )
    django.setup()


# --- views and URLs -------------------------------------------------------------------------


def install_urlconf() -> None:
    """Build the URLconf module: the no-op view, the verify-only view and hookpost's receiver."""
    from django.http import HttpRequest, HttpResponse
    from django.urls import path
    from django.utils import timezone
    from django.views.decorators.csrf import csrf_exempt

    from hookpost import receiver, signing
    from hookpost.models import InboundWebhook
    from hookpost.sources import get_source

    source = get_source("hmac")
    assert source is not None
    # Parsed once, as hookpost's own sources are (sources._parse_keys is cached).
    verifying_keys = source.keys
    tolerance = source.tolerance

    @csrf_exempt
    def noop(request: HttpRequest, source: str) -> HttpResponse:
        request.body  # noqa: B018  (read it, as any receiver must)
        return HttpResponse(status=200)

    @csrf_exempt
    def verify_only(request: HttpRequest, source: str) -> HttpResponse:
        signing.verify(request.headers, request.body, verifying_keys, tolerance=tolerance)
        return HttpResponse(status=200)

    @csrf_exempt
    def hand_written(request: HttpRequest, source: str) -> HttpResponse:
        # What a receiver written by hand would at least do: verify, store the row, handle it.
        body = request.body
        message = signing.verify(request.headers, body, verifying_keys, tolerance=tolerance)
        text = body.decode()
        payload = json.loads(text)
        now = timezone.now()
        row = InboundWebhook.objects.create(
            source=source,
            webhook_id=message.msg_id,
            event_type=payload["type"],
            sent_at=dt.datetime.fromtimestamp(message.timestamp, dt.UTC),
            received_at=now,
            body=text,
            status=InboundWebhook.Status.PROCESSED,
            attempts=1,
            processed_at=now,
        )
        Handler.handle(InboundWebhook, payload=payload, webhook=row)
        return HttpResponse(status=200)

    module = types.ModuleType(URLCONF)
    module.urlpatterns = [  # type: ignore[attr-defined]
        path("noop/<slug:source>/", noop),
        path("verify/<slug:source>/", verify_only),
        path("store/<slug:source>/", hand_written),
        path("webhooks/", receiver.urls()),
    ]
    sys.modules[URLCONF] = module


class Handler:
    """The one ``webhook_received`` receiver: does nothing but count its calls."""

    calls = 0

    @classmethod
    def handle(cls, sender: Any, **kwargs: Any) -> None:
        cls.calls += 1


def connect_handler() -> None:
    from hookpost.signals import webhook_received

    webhook_received.connect(Handler.handle, weak=False, dispatch_uid="bench-noop-handler")


# --- requests -------------------------------------------------------------------------------


def book(n: int) -> dict[str, Any]:
    """A deleted book's data; the summary pads the envelope to about ``BODY_BYTES``."""
    return {
        "id": n,
        "title": f"The Left Hand of Darkness, volume {n}",
        "author": {"id": 1, "name": "Ursula K. Le Guin", "born": "1929-10-21"},
        "isbn": f"978-0-441-{n % 100000:05d}-{n % 10}",
        "price": f"{12.99 + n % 100:.2f}",
        "published": "1969-03-01",
        "uid": f"5f0c6a1e-3b7d-4c1a-9e2f-{n:012d}",
        "cover": f"covers/{n}.jpg",
        "tags": ["science fiction", "classic", "hainish cycle"],
        "summary": "",
    }


def bodies(count: int) -> list[bytes]:
    """``count`` Standard Webhooks envelopes as hookpost's sender encodes them, ~1 KB each."""
    from django.utils import timezone

    from hookpost.events import Frame

    frame = Frame.build(EVENT_TYPE, timezone.now(), origin={"kind": "direct", "model": "library.book"})
    padding = BODY_BYTES - len(frame.encode(book(0)))
    out = []
    for n in range(count):
        data = book(n)
        data["summary"] = "x" * padding
        out.append(frame.encode(data).encode())
    return out


#: One prepared request: the body and its headers, signed already.
Prepared = tuple[bytes, dict[str, str]]


def signed(source: str, count: int, keys: Keys, ids: list[str] | None = None) -> list[Prepared]:
    """``count`` requests signed now for ``source`` (each a new ``msg_`` id unless ``ids``)."""
    from hookpost import signing
    from hookpost.delivery import USER_AGENT
    from hookpost.events import new_message_ids

    secret = keys.ed25519_private if source == "ed25519" else keys.hmac_secret
    signing_key = signing.parse_secret(secret)
    timestamp = int(time.time())
    ids = ids or new_message_ids(count)
    return [
        (
            body,
            {
                "user-agent": USER_AGENT,
                **signing.sign_headers(msg_id, timestamp, body, [signing_key]),
            },
        )
        for msg_id, body in zip(ids, bodies(count), strict=True)
    ]


# --- cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One way of receiving: the URL posted to, how its requests are prepared, what it must answer."""

    key: str
    label: str
    url: str
    prepare: Callable[[int, Keys, Any], list[Prepared]]
    expected: bytes  # the response body of every request
    stores: bool  # each request adds one inbox row, handled once
    optional: bool = False


def fresh(source: str) -> Callable[[int, Keys, Any], list[Prepared]]:
    def prepare(count: int, keys: Keys, client: Any) -> list[Prepared]:
        return signed(source, count, keys)

    return prepare


def duplicates(count: int, keys: Keys, client: Any) -> list[Prepared]:
    """Receive ``count`` new webhooks (untimed), then sign the same ids again: every one a duplicate."""
    first = signed("hmac", count, keys)
    post_all(client, "/webhooks/hmac/", first, b'{"status": "processed"}')
    return signed("hmac", count, keys, ids=[headers["webhook-id"] for _, headers in first])


CASES = [
    Case("noop", "a unsigned no-op view", "/noop/hmac/", fresh("hmac"), b"", stores=False),
    Case("verify", "b verify only (HMAC, no DB)", "/verify/hmac/", fresh("hmac"), b"", stores=False),
    Case(
        "pipeline",
        "c hookpost, new ids (HMAC)",
        "/webhooks/hmac/",
        fresh("hmac"),
        b'{"status": "processed"}',
        stores=True,
    ),
    Case(
        "duplicate",
        "d hookpost, duplicates (HMAC)",
        "/webhooks/hmac/",
        duplicates,
        b'{"status": "duplicate"}',
        stores=False,
    ),
    Case(
        "ed25519",
        "e hookpost, new ids (ed25519)",
        "/webhooks/ed25519/",
        fresh("ed25519"),
        b'{"status": "processed"}',
        stores=True,
        optional=True,
    ),
    Case(
        "handwritten",
        "f hand-written: verify + 1 INSERT",
        "/store/hmac/",
        fresh("hmac"),
        b"",
        stores=True,
    ),
]


def post_all(client: Any, url: str, requests: list[Prepared], expected: bytes) -> int:
    """Post every request through the test Client; how many were answered 200 with ``expected``."""
    ok = 0
    post = client.post
    for body, headers in requests:
        response = post(url, body, content_type="application/json", headers=headers)
        ok += response.status_code == 200 and response.content == expected
    return ok


# --- one database ---------------------------------------------------------------------------


@dataclass
class Results:
    """Seconds per timed run of ``requests`` requests, by case key."""

    requests: int
    times: dict[str, list[float]] = field(default_factory=dict)

    def median_rate(self, key: str) -> float:
        return self.requests / statistics.median(self.times[key])

    def best_rate(self, key: str) -> float:
        return self.requests / min(self.times[key])


def prepare_database(alias: str) -> None:
    """Migrate ``alias`` and empty its inbox (a previous, interrupted run may have left rows)."""
    from django.core.management import call_command

    call_command("migrate", database=alias, verbosity=0, interactive=False)
    clear_inbox(alias)


def clear_inbox(alias: str) -> None:
    """Empty the inbox with plain SQL; vacuum on PostgreSQL so autovacuum stays out of the timing."""
    from django.db import connections

    from hookpost.models import InboundWebhook

    table = InboundWebhook._meta.db_table
    with connections[alias].cursor() as cursor:
        cursor.execute(f"DELETE FROM {table}")
        if connections[alias].vendor == "postgresql":
            cursor.execute(f"VACUUM ANALYZE {table}")


def timed_run(alias: str, case: Case, requests: int, keys: Keys, client: Any) -> float:
    """Empty the inbox, sign ``requests`` requests, then time posting them all."""
    from hookpost.models import InboundWebhook

    clear_inbox(alias)
    prepared = case.prepare(requests, keys, client)
    rows_before = InboundWebhook.objects.using(alias).count()
    calls_before = Handler.calls
    gc.collect()
    start = time.perf_counter()
    ok = post_all(client, case.url, prepared, case.expected)
    elapsed = time.perf_counter() - start
    assert ok == requests, f"{case.label}: {ok} of {requests} answered 200 {case.expected!r}"
    added = InboundWebhook.objects.using(alias).count() - rows_before
    handled = Handler.calls - calls_before
    expected = requests if case.stores else 0
    assert added == expected, f"{case.label}: {added} inbox rows added, expected {expected}"
    assert handled == expected, f"{case.label}: handler called {handled} times, expected {expected}"
    return elapsed


def run_database(alias: str, cases: list[Case], requests: int, rounds: int, keys: Keys) -> Results:
    """Warm up, then run ``rounds`` interleaved rounds of every case on ``alias``."""
    from django.test import Client

    BenchRouter.alias = alias
    client = Client()
    results = Results(requests, {c.key: [] for c in cases})
    for case in cases:
        timed_run(alias, case, min(requests, 200), keys, client)  # warm-up
    for round_no in range(rounds):
        # Rotate the order so no case always runs first.
        shift = round_no % len(cases)
        for case in cases[shift:] + cases[:shift]:
            results.times[case.key].append(timed_run(alias, case, requests, keys, client))
        print(f"  round {round_no + 1}/{rounds} done", file=sys.stderr, flush=True)
    clear_inbox(alias)
    return results


def report(alias: str, cases: list[Case], results: Results, rounds: int, where: str) -> dict[str, float]:
    """Print the table of one database; return each case's median requests/s."""
    base = results.median_rate("noop")
    print(f"\n{DB_LABELS[alias]} ({where}): {results.requests:,} POSTs per run through the test Client")
    print(f"  median of {rounds} interleaved rounds")
    print(f"  {'case':<32} {'median req/s':>12} {'best req/s':>11} {'µs/req':>8} {'+µs vs a':>9} {'vs a':>6}")
    rates = {}
    for case in cases:
        rate = rates[case.key] = results.median_rate(case.key)
        us = 1e6 / rate
        added = us - 1e6 / base
        print(
            f"  {case.label:<32} {rate:>12,.0f} {results.best_rate(case.key):>11,.0f} {us:>8.0f} "
            f"{added:>9.0f} {rate / base:>5.2f}x"
        )
    print(f"  verification alone:  b / a = {rates['verify'] / base:.2f}")
    print(f"  the whole pipeline:  c / a = {rates['pipeline'] / base:.2f}")
    print(f"  duplicates:          d / a = {rates['duplicate'] / base:.2f}")
    if "ed25519" in rates:
        print(f"  ed25519 pipeline:    e / c = {rates['ed25519'] / rates['pipeline']:.2f}")
    print(f"  hookpost vs by hand: c / f = {rates['pipeline'] / rates['handwritten']:.2f}")
    return rates


# --- PostgreSQL -----------------------------------------------------------------------------


def drop_postgresql_database() -> None:
    """Drop the throwaway database (Django's connections to it closed first)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(**pg_params("postgres"), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(BENCH_DB)))


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="POSTs per timed run")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per case")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--no-ed25519", action="store_true", help="skip case e (ed25519 source)")
    args = parser.parse_args(argv)
    aliases = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    cases = [c for c in CASES if not (c.optional and args.no_ed25519)]

    began = time.perf_counter()
    if "postgresql" in aliases:
        ensure_database(BENCH_DB, "Start it (`make services`) or run with --db sqlite.")
    rates: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="hookpost-bench-") as tmp:
            keys = Keys.generate()
            configure_django(str(Path(tmp) / "bench.sqlite3"), keys)
            install_urlconf()
            connect_handler()
            print("hookpost receiver benchmark: requests/s through Django (test Client, middleware,")
            print("  URL resolution) to the views below; bodies and signatures are made before timing")
            size = len(bodies(1)[0])
            print(f"  body: a {size:,}-byte {EVENT_TYPE!r} envelope; the example project's middleware")
            print("  a = a csrf_exempt view that reads the body and answers 200 (the baseline)")
            print("  b = the same plus hookpost.signing.verify with the source's HMAC key (no DB)")
            print("  c = hookpost.receiver.WebhookView, settings source, inline mode, one no-op")
            print("      webhook_received handler, a new webhook-id each request (one inbox row each)")
            print("  d = the same, every webhook-id already received (answered as a duplicate)")
            if not args.no_ed25519:
                print("  e = c with an ed25519 (v1a) source")
            print("  f = for comparison, a receiver written by hand: b, then one ORM insert of the")
            print("      inbox row (autocommit) and a direct call of the no-op handler")
            print("  the inbox is emptied (and vacuumed on PostgreSQL) before every timed run", flush=True)
            from django.db import connections

            try:
                for alias in aliases:
                    where = (
                        "temporary file, PRAGMA defaults"
                        if alias == "sqlite"
                        else f"throwaway database {BENCH_DB} on {pg_params(BENCH_DB)['host']}"
                    )
                    print(f"{DB_LABELS[alias]}: migrating and running…", file=sys.stderr, flush=True)
                    prepare_database(alias)
                    results = run_database(alias, cases, args.requests, args.rounds, keys)
                    rates[alias] = report(alias, cases, results, args.rounds, where)
            finally:
                # Closed before the database is dropped, even after a failure or Ctrl-C.
                connections.close_all()
    finally:
        if "postgresql" in aliases:
            drop_postgresql_database()
    print(f"\n(whole run {time.perf_counter() - began:.0f} s)")
    for alias, by_case in rates.items():
        for key, rate in by_case.items():
            print(f"receiver_per_s db={alias} case={key} value={rate:.0f}")
    for alias, by_case in rates.items():
        base = by_case["noop"]
        print(f"receiver_verify_ratio db={alias} value={by_case['verify'] / base:.2f}")
        print(f"receiver_pipeline_ratio db={alias} value={by_case['pipeline'] / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
