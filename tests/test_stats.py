"""hookpost.stats.endpoint_stats and the hookpost_stats command: counts, success rate, latency percentiles."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import statistics
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from hookpost.models import Attempt, Delivery, Endpoint, Event
from hookpost.stats import EndpointStats, endpoint_stats, percentile

pytestmark = pytest.mark.django_db(databases=["default", "other"])

ON_POSTGRESQL = os.environ.get("HOOKPOST_DB", "sqlite") == "postgresql"

NOW = timezone.now().replace(microsecond=0)
SINCE = NOW - dt.timedelta(hours=24)
INSIDE = NOW - dt.timedelta(hours=1)
BEFORE = SINCE - dt.timedelta(hours=1)

D = Delivery.Status
V = Attempt.Verdict


def endpoint(url: str = "https://partner.example.com/hooks", using: str = "default") -> Endpoint:
    made = Endpoint(url=url, event_types=["*"])
    made.save(using=using)
    return made


def delivery(to: Endpoint, status: str = D.PENDING, finished_at: dt.datetime | None = None) -> Delivery:
    using = to._state.db
    event = Event.objects.using(using).create(
        type="library.book.created", payload="{}", occurred_at=BEFORE, fanned_out_at=BEFORE
    )
    return Delivery.objects.using(using).create(
        event=event, endpoint=to, status=status, finished_at=finished_at, created_at=BEFORE
    )


def attempt(of: Delivery, duration_ms: int | None, verdict: str = V.DELIVERED, started_at=INSIDE) -> Attempt:
    number = of.attempts.count() + 1
    return Attempt.objects.using(of._state.db).create(
        delivery=of,
        number=number,
        started_at=started_at,
        duration_ms=duration_ms,
        status_code=200 if verdict == V.DELIVERED else 500,
        verdict=verdict,
    )


def attempts_with(to: Endpoint, durations: list[int], verdict: str = V.DELIVERED) -> None:
    for duration in durations:
        attempt(delivery(to, D.DELIVERED, INSIDE), duration, verdict)


# --- counts and success rate -------------------------------------------------------------------


def test_counts_success_rate_and_percentiles_of_one_endpoint():
    e = endpoint()
    # Deliveries: what finished in the window counts; what finished before does not; pending is now.
    for _ in range(3):
        delivery(e, D.DELIVERED, INSIDE)
    delivery(e, D.DEAD, INSIDE)
    delivery(e, D.DELIVERED, BEFORE)
    delivery(e, D.DEAD, BEFORE)
    delivery(e, D.CANCELLED, INSIDE)
    delivery(e, D.PENDING)
    delivery(e, D.PENDING)
    # Requests: five timed in the window, one untimed (no answer), one before the window.
    one = delivery(e, D.DELIVERED, BEFORE)
    for duration, verdict in [(40, V.DELIVERED), (1000, V.RETRY), (10, V.DELIVERED), (30, V.GAVE_UP)]:
        attempt(one, duration, verdict)
    attempt(one, 20, V.DELIVERED)
    attempt(one, None, V.RETRY)
    attempt(one, 99_999, V.RETRY, started_at=BEFORE)

    stats = endpoint_stats(since=SINCE)

    assert list(stats) == [e.pk]
    s = stats[e.pk]
    assert (s.delivered, s.dead, s.pending) == (3, 1, 2)
    assert (s.attempts, s.successful_attempts, s.failed_attempts) == (6, 3, 3)
    assert s.success_rate == pytest.approx(0.5)
    # Sorted durations 10 20 30 40 1000: the median is 30; p95 sits 0.8 of the way from 40 to 1000.
    assert s.p50_ms == pytest.approx(30)
    assert s.p95_ms == pytest.approx(40 + 0.8 * (1000 - 40))
    durations = [10, 20, 30, 40, 1000]
    assert s.p50_ms == pytest.approx(statistics.median(durations))
    assert s.p95_ms == pytest.approx(statistics.quantiles(durations, n=20, method="inclusive")[18])
    assert s.p50_ms == pytest.approx(percentile(durations, 0.5))
    assert s.p95_ms == pytest.approx(percentile(durations, 0.95))


def test_each_endpoint_gets_its_own_numbers():
    fast, slow = endpoint("https://fast.example.com/"), endpoint("https://slow.example.com/")
    attempts_with(fast, [5, 7, 9, 11])
    attempts_with(slow, [500, 700])
    attempt(delivery(slow, D.DEAD, INSIDE), 900, V.GAVE_UP)

    stats = endpoint_stats(since=SINCE)

    assert stats[fast.pk] == EndpointStats(
        fast.pk,
        delivered=4,
        attempts=4,
        successful_attempts=4,
        p50_ms=pytest.approx(8),
        p95_ms=pytest.approx(percentile([5, 7, 9, 11], 0.95)),
    )
    assert (stats[slow.pk].delivered, stats[slow.pk].dead, stats[slow.pk].attempts) == (2, 1, 3)
    assert stats[slow.pk].success_rate == pytest.approx(2 / 3)
    assert stats[slow.pk].p50_ms == pytest.approx(700)
    assert stats[slow.pk].p95_ms == pytest.approx(700 + 0.9 * 200)


def test_a_single_request_is_every_percentile():
    e = endpoint()
    attempts_with(e, [123])
    s = endpoint_stats(since=SINCE)[e.pk]
    assert s.p50_ms == pytest.approx(123) and s.p95_ms == pytest.approx(123)


# --- the window ----------------------------------------------------------------------------------


def test_the_window_includes_its_first_instant_and_nothing_before():
    e = endpoint()
    at_start = delivery(e, D.DELIVERED, SINCE)
    attempt(at_start, 50, V.DELIVERED, started_at=SINCE)
    just_before = delivery(e, D.DEAD, SINCE - dt.timedelta(microseconds=1))
    attempt(just_before, 5000, V.GAVE_UP, started_at=SINCE - dt.timedelta(microseconds=1))

    s = endpoint_stats(since=SINCE)[e.pk]

    assert (s.delivered, s.dead, s.attempts, s.successful_attempts) == (1, 0, 1, 1)
    assert s.p50_ms == pytest.approx(50) and s.p95_ms == pytest.approx(50)


def test_pending_deliveries_count_whatever_the_window():
    e = endpoint()
    delivery(e, D.PENDING)  # created long before the window
    s = endpoint_stats(since=NOW)[e.pk]
    assert (s.pending, s.delivered, s.attempts) == (1, 0, 0)
    assert s.success_rate is None and s.p50_ms is None and s.p95_ms is None


def test_an_endpoint_active_only_before_the_window_is_left_out():
    e = endpoint()
    attempt(delivery(e, D.DELIVERED, BEFORE), 10, V.DELIVERED, started_at=BEFORE)
    assert endpoint_stats(since=SINCE) == {}


# --- choosing endpoints --------------------------------------------------------------------------


def test_endpoint_ids_filter_and_idle_endpoints_asked_for_by_id():
    busy, other, idle = endpoint(), endpoint(), endpoint()
    attempts_with(busy, [10, 20])
    attempts_with(other, [30])

    assert set(endpoint_stats(since=SINCE)) == {busy.pk, other.pk}  # idle has nothing to show
    chosen = endpoint_stats(since=SINCE, endpoint_ids=[busy.pk, idle.pk])
    assert set(chosen) == {busy.pk, idle.pk}
    assert chosen[busy.pk].attempts == 2 and chosen[busy.pk].p50_ms == pytest.approx(15)
    assert chosen[idle.pk] == EndpointStats(idle.pk)
    assert chosen[idle.pk].success_rate is None and chosen[idle.pk].failed_attempts == 0


def test_an_empty_endpoint_ids_list_means_no_endpoints():
    attempts_with(endpoint(), [10])
    assert endpoint_stats(since=SINCE, endpoint_ids=[]) == {}


def test_stats_read_the_database_they_are_given():
    here, there = endpoint(), endpoint(using="other")
    attempts_with(here, [10])
    attempts_with(there, [70, 80, 90])
    [(key, s)] = endpoint_stats(since=SINCE, using="other").items()
    assert key == there.pk and s.attempts == 3 and s.p50_ms == pytest.approx(80)


# --- PostgreSQL's percentile_cont and the Python path agree ----------------------------------------


def test_database_percentiles_agree_with_the_python_percentile():
    rng = random.Random(5)
    endpoints = [endpoint(f"https://e{n}.example.com/") for n in range(4)]
    durations = {
        endpoints[0].pk: [rng.randint(1, 5000) for _ in range(37)],
        endpoints[1].pk: [rng.randint(1, 50) for _ in range(2)],
        endpoints[2].pk: [7] * 9 + [10_000],
        endpoints[3].pk: [rng.choice([3, 3000]) for _ in range(20)],
    }
    for e in endpoints:
        attempts_with(e, durations[e.pk])

    with CaptureQueriesContext(connections["default"]) as queries:
        stats = endpoint_stats(since=SINCE)

    on_postgresql = connections["default"].vendor == "postgresql"
    # On PostgreSQL the percentiles come from percentile_cont; elsewhere from hookpost.stats.percentile.
    assert any("percentile_cont" in q["sql"] for q in queries) == on_postgresql
    for endpoint_id, values in durations.items():
        values = sorted(values)
        assert stats[endpoint_id].p50_ms == pytest.approx(percentile(values, 0.5))
        assert stats[endpoint_id].p95_ms == pytest.approx(percentile(values, 0.95))
        assert stats[endpoint_id].p95_ms == pytest.approx(
            statistics.quantiles(values, n=20, method="inclusive")[18]
        )


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [([], 0.5, None), ([4], 0.95, 4), ([1, 2], 0.5, 1.5), ([1, 2, 3, 4], 0.95, 3.85), ([0, 10], 0, 0)],
)
def test_percentile_interpolates_linearly_between_ranks(values, fraction, expected):
    assert percentile(values, fraction) == (None if expected is None else pytest.approx(expected))


# --- hookpost_stats --------------------------------------------------------------------------------


def run(*args: str) -> str:
    out = StringIO()
    call_command("hookpost_stats", *args, stdout=out)
    return out.getvalue()


def test_command_prints_a_table_per_endpoint():
    e = endpoint("https://partner.example.com/hooks")
    attempts_with(e, [10, 20, 30])
    attempt(delivery(e, D.DEAD, INSIDE), 1000, V.GAVE_UP)
    delivery(e, D.PENDING)

    out = run("--since", "24h")

    header, row = out.splitlines()[1:3]
    assert header.split()[:7] == ["ID", "URL", "DELIVERED", "FAILED", "DEAD", "PENDING", "SUCCESS"]
    assert "P50 MS" in header and "P95 MS" in header
    p95 = percentile([10, 20, 30, 1000], 0.95)
    assert row.split() == [str(e.pk), e.url, "3", "1", "1", "1", "75.0%", "25.0", f"{p95:.1f}"]


def test_command_json_output_and_endpoint_filter():
    shown, hidden, idle = endpoint(), endpoint(), endpoint()
    attempts_with(shown, [10, 30])
    attempts_with(hidden, [5])

    data = json.loads(run("--json", "--endpoint", str(shown.pk), "--endpoint", str(idle.pk)))

    assert [r["id"] for r in data["endpoints"]] == [shown.pk, idle.pk]
    first, second = data["endpoints"]
    assert first == {
        "id": shown.pk,
        "url": shown.url,
        "delivered": 2,
        "dead": 0,
        "pending": 0,
        "attempts": 2,
        "failed_attempts": 0,
        "success_rate": 1.0,
        "p50_ms": 20.0,
        "p95_ms": pytest.approx(29.0),
    }
    assert second["attempts"] == 0 and second["success_rate"] is None and second["p50_ms"] is None
    assert dt.datetime.fromisoformat(data["since"]) < timezone.now()


def test_command_says_when_nothing_happened():
    assert "No endpoint sent or waited for anything" in run()


def test_command_never_shows_a_secret():
    e = endpoint()
    attempts_with(e, [10])
    e.rotate_secret()
    e.save()
    secrets = e.signing_secrets()
    assert len(secrets) == 2
    for output in (run(), run("--json"), run("--endpoint", str(e.pk))):
        assert "whsec_" not in output
        assert not any(secret in output or secret.removeprefix("whsec_") in output for secret in secrets)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--endpoint", "999999"], "no endpoint with id 999999; `hookpost_endpoint list`"),
        (["--endpoint", "x"], "argument --endpoint: expected a whole number"),
        (["--since", "last week"], "cannot read 'last week' as a time"),
        (["--database", "nope"], "unknown database 'nope'"),
    ],
)
def test_command_refuses_bad_input_with_a_hint(args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
