"""The outbox's native statements agree with its ORM paths, on both databases."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import threading
from collections import Counter
from typing import Any

import pytest
from django.db import DataError, connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from hookpost import outbox
from hookpost.models import PAUSE_SHIFT, Attempt, Delivery, Endpoint, Event
from hookpost.retry import Breaker, Decision, Verdict

pytestmark = pytest.mark.django_db(transaction=True)

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
ON_POSTGRESQL = os.environ.get("HOOKPOST_DB") == "postgresql"
LEASE = dt.timedelta(seconds=60)


def leased_deliveries(count: int) -> list[outbox.Claim]:
    """``count`` events fanned out to one endpoint and claimed by worker ``w``."""
    Endpoint.objects.create(url="http://127.0.0.1:9/hooks", event_types=["*"], max_in_flight=1000)
    drafts = [outbox.EventDraft(f"a.b{i}", "{}", NOW) for i in range(count)]
    outbox.record_events("default", drafts)
    assert outbox.fan_out(limit=1000) == count
    claims = outbox.claim(worker_id="w", limit=count, lease=LEASE)
    assert len(claims) == count
    return claims


def results_for(claims: list[outbox.Claim]) -> list[outbox.AttemptResult]:
    """One result of each verdict, in turn, for the claimed deliveries."""
    decisions = [
        Decision(Verdict.DELIVERED, None, ""),
        Decision(Verdict.RETRY, NOW + dt.timedelta(seconds=5), "HTTP 500"),
        Decision(Verdict.GAVE_UP, None, "HTTP 500, last attempt"),
        Decision(Verdict.ENDPOINT_GONE, None, "HTTP 410"),
    ]
    return [
        outbox.AttemptResult(
            delivery_id=c.delivery.id,
            endpoint_id=c.delivery.endpoint_id,
            event_id=c.delivery.event_id,
            number=1,
            started_at=NOW,
            duration_ms=12,
            request_headers={"webhook-id": c.delivery.event_id, "content-type": "application/json"},
            status_code=[200, 500, 500, 410][i % 4],
            response_body='{"ok": "é"}',
            error="" if i % 4 == 0 else "HTTP error",
            decision=decisions[i % 4],
        )
        for i, c in enumerate(claims)
    ]


def state() -> list[tuple[Any, ...]]:
    """Every delivery and its attempts, without ids, in event order."""
    rows = []
    for d in Delivery.objects.order_by("event_id").prefetch_related("attempts"):
        attempts = [
            (
                a.number,
                a.started_at,
                a.duration_ms,
                a.request_headers,
                a.status_code,
                a.response_body,
                a.error,
                a.verdict,
            )
            for a in d.attempts.all()
        ]
        rows.append(
            (
                d.status,
                d.attempt_count,
                d.next_attempt_at,
                d.lease_owner,
                d.lease_expires_at,
                d.last_attempt_at,
                d.finished_at,
                attempts,
            )
        )
    return rows


@pytest.mark.parametrize("path", ["native", "orm"])
def test_recording_every_verdict_gives_the_same_rows_either_way(path):
    claims = leased_deliveries(8)
    results = results_for(claims)
    record = outbox._record_in_one_statement if path == "native" else None
    if record is not None and connection.vendor != "postgresql":
        pytest.skip("the one-statement path is PostgreSQL's")
    with outbox._worker_transaction("default") as conn:
        if record is not None:
            record(conn, results, NOW)
        else:
            outbox._record_with_orm("default", results, NOW)
    rows = state()
    assert [r[0] for r in rows] == ["delivered", "pending", "dead", "cancelled"] * 2
    for row, result in zip(rows, results, strict=True):
        status, attempts, next_at, owner, expires, last, done, [attempt] = row
        assert attempts == 1 and owner == "" and expires is None and last == NOW
        if status == "pending":
            assert next_at == result.decision.retry_at and done is None
        else:
            assert next_at is None and done == NOW
        assert attempt == (
            1,
            NOW,
            12,
            result.request_headers,
            result.status_code,
            result.response_body,
            result.error,
            str(result.decision.verdict),
        )


@pytest.mark.parametrize("path", ["native", "orm"])
def test_nul_characters_are_recorded_as_replacement_characters_and_nothing_else_changes(path):
    # PostgreSQL text and jsonb refuse U+0000: a binary answer once failed every flush.
    if path == "native" and connection.vendor != "postgresql":
        pytest.skip("the one-statement path is PostgreSQL's")
    claims = leased_deliveries(3)
    plain, body, header = (
        dataclasses.replace(r, decision=Decision(Verdict.DELIVERED, None, "")) for r in results_for(claims)
    )
    # JSON spells a backslash before "u0000" as two: text that looks like the escape is kept.
    plain = dataclasses.replace(plain, response_body="a \\u0000 b", error="")
    body = dataclasses.replace(body, response_body="\x1f\x8b\x00gz", error="refused: \x00")
    header = dataclasses.replace(header, request_headers={"x-team\x00": "a\x00b"})
    with outbox._worker_transaction("default") as conn:
        if path == "native":
            outbox._record_in_one_statement(conn, [plain, body, header], NOW)
        else:
            outbox._record_with_orm("default", [plain, body, header], NOW)
    logged = {a.delivery_id: a for a in Attempt.objects.all()}
    assert logged[plain.delivery_id].response_body == "a \\u0000 b"
    assert (logged[body.delivery_id].response_body, logged[body.delivery_id].error) == (
        "\x1f\x8b\ufffdgz",
        "refused: \ufffd",
    )
    assert logged[header.delivery_id].request_headers == {"x-team\ufffd": "a\ufffdb"}
    assert set(Delivery.objects.values_list("status", flat=True)) == {"delivered"}


@pytest.mark.parametrize("path", ["native", "orm"])
def test_results_of_deliveries_deleted_meanwhile_are_not_logged_and_the_others_are(path):
    if path == "native" and connection.vendor != "postgresql":
        pytest.skip("the one-statement path is PostgreSQL's")
    claims = leased_deliveries(4)
    results = [
        dataclasses.replace(r, decision=Decision(Verdict.DELIVERED, None, "")) for r in results_for(claims)
    ]
    gone = {claims[1].delivery.event_id, claims[2].delivery.event_id}
    Event.objects.filter(id__in=gone).delete()  # their deliveries go with them
    with outbox._worker_transaction("default") as conn:
        if path == "native":
            logged = outbox._record_in_one_statement(conn, results, NOW)
        else:
            logged = outbox._record_with_orm("default", results, NOW)
    kept = {claims[0].delivery.id, claims[3].delivery.id}
    assert logged == kept
    assert set(Attempt.objects.values_list("delivery_id", flat=True)) == kept
    assert set(Delivery.objects.delivered().values_list("id", flat=True)) == kept


def test_the_answer_for_a_delivery_deleted_meanwhile_still_counts_towards_its_endpoints_health():
    [claim] = leased_deliveries(1)
    failed = dataclasses.replace(
        results_for([claim, claim])[1],
        decision=Decision(Verdict.RETRY, NOW + dt.timedelta(seconds=5), "HTTP 500"),
    )
    Event.objects.filter(id=claim.delivery.event_id).delete()  # its delivery goes with it
    outbox.record_results([failed], now=NOW)
    assert not Attempt.objects.exists()
    endpoint = Endpoint.objects.get()
    assert (endpoint.consecutive_failures, endpoint.failing_since, endpoint.last_failure_at) == (1, NOW, NOW)


def test_recording_results_for_a_deleted_endpoint_logs_nothing_signals_nothing_and_says_so(caplog):
    from hookpost import signals

    claims = leased_deliveries(2)
    results = [
        dataclasses.replace(r, decision=Decision(Verdict.DELIVERED, None, "")) for r in results_for(claims)
    ]
    seen: list[dict[str, Any]] = []
    signals.delivery_succeeded.connect(lambda **kw: seen.append(kw), weak=False, dispatch_uid="test-gone")
    try:
        Endpoint.objects.all().delete()
        outbox.record_results(results)
    finally:
        signals.delivery_succeeded.disconnect(dispatch_uid="test-gone")
    assert not Attempt.objects.exists() and seen == []
    assert "results of 2 deliveries deleted meanwhile not logged" in caplog.text


@pytest.mark.parametrize("path", ["native", "orm"])
def test_a_late_result_never_moves_a_finished_delivery_back(path):
    if path == "native" and connection.vendor != "postgresql":
        pytest.skip("the one-statement path is PostgreSQL's")
    [claim] = leased_deliveries(1)
    Delivery.objects.filter(id=claim.delivery.id).update(status=Delivery.Status.DELIVERED, finished_at=NOW)
    [delivered] = results_for([claim])
    result = dataclasses.replace(
        delivered, decision=Decision(Verdict.RETRY, NOW, "HTTP 500"), status_code=500
    )
    with outbox._worker_transaction("default") as conn:
        if path == "native":
            outbox._record_in_one_statement(conn, [result], NOW)
        else:
            outbox._record_with_orm("default", [result], NOW)
    delivery = Delivery.objects.get()
    assert delivery.status == Delivery.Status.DELIVERED and delivery.attempt_count == 0
    # The request was made, so the log still shows it.
    assert Attempt.objects.filter(delivery=delivery).count() == 1


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an ``EXPLAIN (FORMAT JSON)`` plan, depth first."""
    return [plan, *(node for child in plan.get("Plans", ()) for node in plan_nodes(child))]


@pytest.mark.skipif(not ON_POSTGRESQL, reason="the one-statement path is PostgreSQL's")
def test_recording_finds_each_delivery_by_its_key_when_statistics_predate_the_backlog():
    # Statistics taken while every delivery was finished, then a backlog: the statement
    # once read every pending delivery through the (endpoint, status) index (this set-up),
    # or compared every result with every row it read (bench/record.py's larger one).
    Endpoint.objects.create(url="http://127.0.0.1:9/hooks", event_types=["*"], max_in_flight=5000)
    outbox.record_events("default", [outbox.EventDraft(f"a.b{i}", "{}", NOW) for i in range(3000)])
    while outbox.fan_out(limit=1000):
        pass
    table = Delivery._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET status = 'delivered', attempt_count = 1")
        cursor.execute(f"ANALYZE {table}")
    backlog = list(Delivery.objects.order_by("-id").values_list("id", flat=True)[:1500])
    Delivery.objects.filter(id__in=backlog).update(status=Delivery.Status.PENDING, attempt_count=0)
    claims = outbox.claim(worker_id="w", limit=200, lease=LEASE)
    assert len(claims) == 200
    results = [
        dataclasses.replace(r, decision=Decision(Verdict.DELIVERED, None, "")) for r in results_for(claims)
    ]
    with CaptureQueriesContext(connection) as queries:
        outbox.record_results(results, now=NOW)
    [statement] = [q["sql"] for q in queries if q["sql"].startswith("WITH r AS")]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {statement}")
        [[plan]] = cursor.fetchone()
    nodes = plan_nodes(plan["Plan"])
    assert [n for n in nodes if "Join Filter" in n] == []
    indexes = {n["Index Name"] for n in nodes if n.get("Relation Name") == table and "Index Name" in n}
    assert indexes <= {f"{table}_pkey"}
    assert Delivery.objects.filter(id__in=[c.delivery.id for c in claims], status="delivered").count() == 200


def failures(claims: list[outbox.Claim], *, probe: bool, step: int = 1) -> list[outbox.AttemptResult]:
    """A refused request per claim, started ``step`` seconds apart from NOW."""
    [template] = results_for(claims[:1])
    return [
        dataclasses.replace(
            template,
            delivery_id=c.delivery.id,
            started_at=NOW + dt.timedelta(seconds=i * step),
            status_code=500,
            decision=Decision(Verdict.RETRY, NOW + dt.timedelta(hours=1), "HTTP 500"),
            probe=probe,
        )
        for i, c in enumerate(claims)
    ]


BREAKER = Breaker(threshold=3, cooldown=dt.timedelta(seconds=30), max_cooldown=dt.timedelta(minutes=10))


def test_failures_in_flight_when_the_circuit_opens_do_not_lengthen_its_wait():
    claims = leased_deliveries(6)
    outbox.record_results(failures(claims, probe=False), breaker=BREAKER, now=NOW)
    endpoint = Endpoint.objects.get()
    # Three opened it; the other three were in flight already and only move the last failure.
    assert endpoint.consecutive_failures == 3
    assert endpoint.last_failure_at == NOW + dt.timedelta(seconds=5)
    assert endpoint.blocked_until == endpoint.last_failure_at + dt.timedelta(seconds=30)


def test_each_failed_probe_doubles_the_wait_up_to_the_cap():
    claims = leased_deliveries(12)
    outbox.record_results(failures(claims[:3], probe=False), breaker=BREAKER, now=NOW)
    waits = []
    for i, claim in enumerate(claims[3:]):
        [result] = failures([claim], probe=True)
        result = dataclasses.replace(result, started_at=NOW + dt.timedelta(hours=i + 1))
        outbox.record_results([result], breaker=BREAKER, now=NOW)
        endpoint = Endpoint.objects.get()
        waits.append(int((endpoint.blocked_until - endpoint.last_failure_at).total_seconds()))
    assert waits == [60, 120, 240, 480, 600, 600, 600, 600, 600]


def test_a_late_failure_never_moves_the_last_failure_back():
    claims = leased_deliveries(2)
    late, early = failures(claims, probe=False, step=-10)
    outbox.record_results([late], breaker=BREAKER, now=NOW)
    outbox.record_results([early], breaker=BREAKER, now=NOW)
    assert Endpoint.objects.get().last_failure_at == NOW


def test_fan_out_marks_its_events_and_a_repeat_adds_nothing():
    Endpoint.objects.create(url="http://127.0.0.1:9/a", event_types=["a.*"])
    Endpoint.objects.create(url="http://127.0.0.1:9/b", event_types=["a.b1", "z.*"])
    outbox.record_events("default", [outbox.EventDraft(f"a.b{i}", "{}", NOW) for i in range(3)])
    assert outbox.fan_out(limit=10) == 3
    assert Delivery.objects.count() == 4
    assert not Event.objects.awaiting_fan_out().exists()
    Event.objects.update(fanned_out_at=None)  # as if the mark had been lost in a crash
    assert outbox.fan_out(limit=10) == 3
    assert Delivery.objects.count() == 4


def test_fan_out_of_events_no_endpoint_wants_still_marks_them():
    Endpoint.objects.create(url="http://127.0.0.1:9/a", event_types=["z.*"])
    outbox.record_events("default", [outbox.EventDraft("a.b", "{}", NOW)])
    assert outbox.fan_out(limit=10) == 1
    assert not Delivery.objects.exists() and not Event.objects.awaiting_fan_out().exists()


def test_id_lists_are_one_array_parameter_on_postgresql_and_placeholders_elsewhere():
    sql, params = outbox._any(connection, "id", (3, 1, 2))
    if connection.vendor == "postgresql":
        # The statement's text stays the same whatever the batch: the driver parses it once.
        # The array is one literal string: a list costs the driver a dumper call per element.
        assert (sql, params) == ("id = ANY(%s::bigint[])", ["{3,1,2}"])
        with connection.cursor() as cursor:
            cursor.execute("SELECT x FROM unnest(%s::bigint[]) AS x", [outbox._int_array([])])
            assert cursor.fetchall() == []
            cursor.execute("SELECT 3 = ANY(%s::bigint[]), 4 = ANY(%s::bigint[])", params * 2)
            assert cursor.fetchone() == (True, False)
    else:
        assert (sql, params) == ("id IN (%s, %s, %s)", [3, 1, 2])


def test_a_claim_told_of_many_settled_deliveries_frees_their_slots():
    Endpoint.objects.create(url="http://127.0.0.1:9/hooks", event_types=["*"], max_in_flight=300)
    outbox.record_events("default", [outbox.EventDraft(f"a.b{i}", "{}", NOW) for i in range(301)])
    outbox.fan_out(limit=1000)
    first = outbox.claim(worker_id="w", limit=301, lease=LEASE)
    assert len(first) == 300  # the cap
    settled = [c.delivery.id for c in first]
    assert outbox.claim(worker_id="w", limit=10, lease=LEASE) == []
    [last] = outbox.claim(worker_id="w", limit=10, lease=LEASE, settled=settled)
    assert last.delivery.id not in settled


@pytest.mark.skipif(not ON_POSTGRESQL, reason="synchronous_commit is PostgreSQL's")
def test_worker_threads_commit_asynchronously_and_user_connections_keep_durability():
    leased_deliveries(1)
    seen: dict[str, Any] = {}

    def worker_thread() -> None:
        try:
            outbox.use_async_commit_session("default")
            conn = connections["default"]
            with CaptureQueriesContext(conn) as queries:
                outbox.claim(worker_id="w2", limit=1, lease=LEASE)
            with conn.cursor() as cursor:
                cursor.execute("SHOW synchronous_commit")
                seen["setting"] = cursor.fetchone()[0]
            seen["set_local"] = [q["sql"] for q in queries.captured_queries if "SET LOCAL" in q["sql"]]
        finally:
            connections.close_all()

    thread = threading.Thread(target=worker_thread)
    thread.start()
    thread.join()
    assert seen == {"setting": "off", "set_local": []}
    # The test's own connection runs the same outbox code with a transaction-local setting only.
    with CaptureQueriesContext(connection) as queries:
        outbox.claim(worker_id="w3", limit=1, lease=LEASE)
    assert any("SET LOCAL synchronous_commit" in q["sql"] for q in queries.captured_queries)
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"


# --- claiming ahead ---------------------------------------------------------------------------------


def backlog(count: int, cap: int) -> Endpoint:
    """An endpoint with ``cap`` requests in flight at most and ``count`` deliveries due."""
    endpoint = Endpoint.objects.create(url="http://127.0.0.1:9/hooks", event_types=["*"], max_in_flight=cap)
    outbox.record_events("default", [outbox.EventDraft(f"a.b{i}", "{}", NOW) for i in range(count)])
    outbox.fan_out(limit=1000)
    return endpoint


def ids(claims: list[outbox.Claim]) -> list[int]:
    return [c.delivery.id for c in claims]


def test_an_endpoint_at_the_head_of_the_queue_cannot_crowd_another_out_of_a_claim():
    # A claim looks at as many due deliveries as it has room for; an endpoint that fills
    # up there is left out of its next look, so a long backlog ahead starves no one.
    crowded = backlog(30, cap=5)
    other = Endpoint.objects.create(url="http://127.0.0.1:9/other", event_types=["x.*"], max_in_flight=5)
    outbox.record_events("default", [outbox.EventDraft(f"x.y{i}", "{}", NOW) for i in range(5)])
    outbox.fan_out(limit=1000)
    claims = outbox.claim(worker_id="w", limit=10, lease=LEASE)
    assert Counter(c.delivery.endpoint_id for c in claims) == {crowded.id: 5, other.id: 5}


def test_without_claim_ahead_a_claim_stops_at_the_cap():
    backlog(10, cap=3)
    assert len(outbox.claim(worker_id="w", limit=10, lease=LEASE)) == 3
    assert outbox.claim(worker_id="w", limit=10, lease=LEASE) == []


def test_claiming_ahead_leases_one_more_caps_worth_which_waits_within_the_allowance():
    backlog(12, cap=3)

    def claim(**kwargs: Any) -> list[outbox.Claim]:
        return outbox.claim(worker_id="w", limit=10, lease=LEASE, claim_ahead=True, **kwargs)

    first = claim()
    assert len(first) == 3 and {c.allowance for c in first} == {3}
    # The first three are being sent: three more may wait behind them.
    second = claim()
    assert len(second) == 3
    # Three sending, three waiting: nothing more.
    assert claim(queued=ids(second)) == []
    # Even once the first three succeed, a cap's worth is still waiting.
    assert claim(settled=ids(first), queued=ids(second)) == []
    # The waiting three went out: the next three may wait.
    assert len(claim(settled=ids(first))) == 3


def test_a_caller_that_knows_an_endpoint_drains_fast_may_queue_more_than_a_caps_worth():
    endpoint = backlog(20, cap=3)
    deep = {endpoint.id: 6}

    def claim(**kwargs: Any) -> list[outbox.Claim]:
        return outbox.claim(worker_id="w", limit=20, lease=LEASE, claim_ahead=True, ahead=deep, **kwargs)

    first = claim()
    assert len(first) == 6 and {c.allowance for c in first} == {3}
    # Three of them are being sent, three wait: three more may join them.
    waiting = ids(first[3:])
    second = claim(queued=waiting)
    assert len(second) == 3
    # Six waiting behind three in flight: the depth is reached.
    assert claim(queued=waiting + ids(second)) == []
    # Another worker sees the whole cap held and leases nothing, however deep it may queue.
    assert outbox.claim(worker_id="b", limit=20, lease=LEASE, claim_ahead=True, ahead=deep) == []


def test_a_depth_below_the_cap_still_lets_a_caps_worth_wait():
    endpoint = backlog(12, cap=3)
    # Without claiming ahead a depth does not apply: the cap is all there is.
    assert len(outbox.claim(worker_id="w", limit=10, lease=LEASE, ahead={endpoint.id: 6})) == 3
    # Three being sent; a depth of one still lets a cap's worth wait behind them.
    shallow = {endpoint.id: 1}
    assert len(outbox.claim(worker_id="w", limit=10, lease=LEASE, claim_ahead=True, ahead=shallow)) == 3


def test_no_worker_claims_ahead_while_others_hold_the_whole_cap():
    backlog(10, cap=3)
    held = outbox.claim(worker_id="a", limit=10, lease=LEASE, claim_ahead=True)
    held += outbox.claim(worker_id="a", limit=10, lease=LEASE, claim_ahead=True)
    assert len(held) == 6
    assert outbox.claim(worker_id="b", limit=10, lease=LEASE, claim_ahead=True) == []
    # Once "a" holds less than the cap, "b" may lease, and may send only what "a" leaves.
    Delivery.objects.filter(id__in=ids(held[:4])).update(lease_owner="", lease_expires_at=None)
    theirs = outbox.claim(worker_id="b", limit=10, lease=LEASE, claim_ahead=True)
    assert theirs and {c.allowance for c in theirs} == {1}


def test_a_held_endpoint_gets_no_claims_until_its_failure_is_recorded():
    endpoint = backlog(2, cap=3)
    assert outbox.claim(worker_id="w", limit=10, lease=LEASE, claim_ahead=True, hold=[endpoint.id]) == []
    assert len(outbox.claim(worker_id="w", limit=10, lease=LEASE, claim_ahead=True)) == 2


# --- an open circuit parks its deliveries ---------------------------------------------------------


def open_circuit(endpoint: Endpoint, claims: list[outbox.Claim], now: dt.datetime) -> Endpoint:
    """Record a failure for each of ``claims`` (at least the threshold): the circuit opens."""
    results = [dataclasses.replace(r, started_at=now) for r in failures(claims, probe=False, step=0)]
    outbox.record_results(results, breaker=BREAKER, now=now)
    endpoint.refresh_from_db()
    assert endpoint.blocked_until == now + dt.timedelta(seconds=30)
    return endpoint


def due_times(endpoint: Endpoint) -> set[dt.datetime]:
    return set(
        Delivery.objects.filter(endpoint=endpoint, status="pending", attempt_count=0).values_list(
            "next_attempt_at", flat=True
        )
    )


def test_an_open_circuit_parks_its_due_deliveries_at_its_probe_time_and_no_one_elses():
    down = backlog(0, cap=3)
    up = Endpoint.objects.create(url="http://127.0.0.1:9/up", event_types=["*"], max_in_flight=100)
    outbox.record_events("default", [outbox.EventDraft(f"a.b{i}", "{}", NOW) for i in range(20)])
    outbox.fan_out(limit=1000)
    now = timezone.now()
    claims = [
        c for c in outbox.claim(worker_id="w", limit=100, lease=LEASE) if c.delivery.endpoint_id == down.id
    ]
    down = open_circuit(down, claims, now)
    # The other 17 cannot go before the probe: they wait off the head of the claim's index.
    assert due_times(down) == {down.blocked_until}
    assert Delivery.objects.filter(endpoint=down, status="pending", attempt_count=0).count() == 17
    assert all(t <= now for t in due_times(up))
    # Events that come while it is open are born parked too.
    outbox.record_events("default", [outbox.EventDraft("a.late", "{}", NOW)])
    outbox.fan_out(limit=1000)
    assert due_times(down) == {down.blocked_until}
    assert (
        Delivery.objects.filter(endpoint=down, event__type="a.late").get().next_attempt_at
        == down.blocked_until
    )


def test_a_failed_probe_parks_them_again_further_out():
    down = backlog(10, cap=3)
    now = timezone.now()
    down = open_circuit(down, outbox.claim(worker_id="w", limit=3, lease=LEASE), now)
    later = down.blocked_until
    waiting = Delivery.objects.filter(endpoint=down, status="pending", attempt_count=0).first()
    [probe] = failures([outbox.Claim(delivery=waiting)], probe=True)
    probe = dataclasses.replace(probe, started_at=later)
    outbox.record_results([probe], breaker=BREAKER, now=later)
    down.refresh_from_db()
    assert down.blocked_until == later + dt.timedelta(seconds=60)
    assert due_times(down) == {down.blocked_until}


def test_closing_the_circuit_makes_what_was_parked_at_its_probe_lease_due():
    down = backlog(10, cap=3)
    down = open_circuit(down, outbox.claim(worker_id="w", limit=3, lease=LEASE), timezone.now())
    # The probe is taken at its time, and the circuit holds until the probe's lease runs
    # out: events fanned out meanwhile are parked until then.
    at = down.blocked_until
    Endpoint.objects.filter(id=down.id).update(blocked_until=at + LEASE)
    outbox.record_events("default", [outbox.EventDraft("a.during", "{}", NOW)])
    outbox.fan_out(limit=1000, now=at)
    during = Delivery.objects.get(endpoint=down, event__type="a.during")
    assert during.next_attempt_at == at + LEASE
    [ok] = [r for r in results_for([outbox.Claim(delivery=during)]) if r.status_code == 200]
    outbox.record_results([dataclasses.replace(ok, probe=True, started_at=at)], breaker=BREAKER, now=at)
    down.refresh_from_db()
    assert (down.consecutive_failures, down.blocked_until) == (0, None)
    assert all(t <= at for t in due_times(down))


def test_resuming_by_hand_makes_parked_deliveries_due():
    down = backlog(10, cap=3)
    now = timezone.now()
    down = open_circuit(down, outbox.claim(worker_id="w", limit=3, lease=LEASE), now)
    outbox.resume_endpoint(down)
    assert all(t <= timezone.now() for t in due_times(down))
    assert len(outbox.claim(worker_id="w", limit=10, lease=LEASE)) == 3


# --- order ----------------------------------------------------------------------------------------


def test_a_claim_carries_what_sending_needs_as_stored_and_nothing_made_up():
    endpoint = backlog(1, cap=10)
    Delivery.objects.update(attempt_count=2, sequence=7)
    now = timezone.now()
    [claim] = outbox.claim(worker_id="w", limit=1, lease=LEASE, now=now)
    delivery, stored = claim.delivery, Delivery.objects.select_related("event").get()
    # No Delivery instance: its status or created_at could only be stale or invented.
    assert delivery == outbox.Leased(
        id=stored.id,
        event_id=stored.event_id,
        endpoint_id=endpoint.id,
        attempt_count=2,
        sequence=7,
        lease_owner="w",
        lease_expires_at=now + LEASE,
        event=delivery.event,
        endpoint=delivery.endpoint,
    )
    assert (stored.lease_owner, stored.lease_expires_at) == ("w", now + LEASE)
    event = delivery.event
    assert (event.id, event.type, event.body) == (stored.event.id, stored.event.type, stored.event.body)
    # The event's other fields are deferred: reading one asks the database, which a
    # worker's event loop refuses, rather than answering with a default.
    assert {"occurred_at", "origin", "fanned_out_at"} <= event.get_deferred_fields()
    assert not event._state.adding and event._state.db == "default"
    assert delivery.endpoint == endpoint and delivery.endpoint.url == endpoint.url


def test_a_claim_takes_the_longest_due_first_whatever_the_ids():
    backlog(10, cap=100)
    rows = list(Delivery.objects.order_by("id"))
    for place, delivery in enumerate(rows):
        # The later the id, the longer it has been due.
        Delivery.objects.filter(id=delivery.id).update(next_attempt_at=NOW - dt.timedelta(minutes=place))
    claims = outbox.claim(worker_id="w", limit=3, lease=LEASE)
    assert ids(claims) == [rows[9].id, rows[8].id, rows[7].id]


# --- salvaging a batch the database refuses ------------------------------------------------------


def test_salvage_records_each_result_whole_when_it_can_and_stripped_when_it_cannot():
    delivered = Decision(Verdict.DELIVERED, None, "")
    good, bad, other = (
        dataclasses.replace(r, status_code=200, error="", decision=delivered)
        for r in results_for(leased_deliveries(3))
    )
    # A lone surrogate: SQLite's driver cannot encode it, PostgreSQL's JSON refuses it.
    bad = dataclasses.replace(
        bad, request_headers={"x-note": "\udcff"}, response_body="\udcff", error="HTTP \udcff"
    )
    # SQLite's driver raises UnicodeEncodeError, PostgreSQL a DataError.
    with pytest.raises((UnicodeEncodeError, DataError)):
        outbox.record_results([good, bad, other])
    assert Attempt.objects.count() == 0
    salvage = outbox.salvage_results([good, bad, other])
    assert salvage.recorded == [good, other] and salvage.unrecorded == salvage.remaining == []
    assert [result for result, _ in salvage.stripped] == [bad]
    stripped = Attempt.objects.get(delivery_id=bad.delivery_id)
    assert (stripped.request_headers, stripped.response_body, stripped.status_code) == ({}, "", 200)
    assert stripped.error.startswith("HTTP \\udcff; attempt details not stored: the database refused them")
    whole = Attempt.objects.get(delivery_id=good.delivery_id)
    assert whole.response_body == '{"ok": "é"}' and whole.request_headers == good.request_headers
    assert set(Delivery.objects.values_list("status", flat=True)) == {Delivery.Status.DELIVERED}


def test_salvage_leaves_out_a_result_no_database_can_store_and_its_delivery_keeps_its_lease():
    claims = leased_deliveries(2)
    kept, impossible = results_for(claims)
    impossible = dataclasses.replace(impossible, number=2**64)  # no integer column holds it
    salvage = outbox.salvage_results([impossible, kept])
    assert salvage.recorded == [kept] and salvage.stripped == [] and salvage.remaining == []
    assert [result for result, _ in salvage.unrecorded] == [impossible]
    left = Delivery.objects.get(id=impossible.delivery_id)
    assert (left.status, left.attempt_count, left.lease_owner) == (Delivery.Status.PENDING, 0, "w")
    assert not Attempt.objects.filter(delivery_id=impossible.delivery_id).exists()
    assert Delivery.objects.get(id=kept.delivery_id).status == Delivery.Status.DELIVERED


@pytest.mark.skipif(not ON_POSTGRESQL, reason="ends the connection with pg_terminate_backend")
def test_salvage_stops_when_the_database_goes_away_and_returns_the_results_not_tried():
    from hookpost import signals

    claims = leased_deliveries(3)
    results = [
        dataclasses.replace(r, decision=Decision(Verdict.DELIVERED, None, "")) for r in results_for(claims)
    ]
    pid = connection.cursor().connection.info.backend_pid

    def terminate(**kwargs: Any) -> None:
        # After the first result commits, the server ends this connection, as a restart would.
        killer = connection.get_new_connection(connection.get_connection_params())
        try:
            killer.execute("SELECT pg_terminate_backend(%s)", [pid])
        finally:
            killer.close()

    signals.delivery_succeeded.connect(terminate, weak=False, dispatch_uid="test-terminate")
    try:
        salvage = outbox.salvage_results(results)
    finally:
        signals.delivery_succeeded.disconnect(dispatch_uid="test-terminate")
        connection.close()
    assert salvage.recorded == results[:1]
    assert salvage.remaining == results[1:] and salvage.stripped == salvage.unrecorded == []


# --- a paused endpoint's deliveries are set aside ------------------------------------------------


def test_pausing_sets_pending_deliveries_aside_and_resuming_brings_back_their_own_due_times():
    endpoint = backlog(3, cap=10)
    other = Endpoint.objects.create(url="http://127.0.0.1:9/other", event_types=["*"])
    first, second, third = Delivery.objects.filter(endpoint=endpoint).order_by("id")
    Delivery.objects.filter(id=second.id).update(attempt_count=1, next_attempt_at=NOW + dt.timedelta(hours=5))
    Delivery.objects.filter(id=third.id).update(status=Delivery.Status.DELIVERED)
    due = dict(Delivery.objects.values_list("id", "next_attempt_at"))

    outbox.pause_endpoint(endpoint)
    outbox.pause_endpoint(endpoint)  # twice: set aside once
    moved = dict(Delivery.objects.values_list("id", "next_attempt_at"))
    assert moved[first.id] == due[first.id] + PAUSE_SHIFT
    assert moved[second.id] == due[second.id] + PAUSE_SHIFT
    assert moved[third.id] == due[third.id]  # finished: untouched
    assert Delivery.objects.due().filter(endpoint=endpoint).count() == 0
    paused = Delivery.objects.get(id=second.id)
    assert paused.paused and paused.due_at == due[second.id]
    # A new event for it is born set aside too; the other endpoint's is due at once.
    outbox.record_events("default", [outbox.EventDraft("a.new", "{}", NOW)])
    outbox.fan_out(now=NOW)
    born = Delivery.objects.get(event__type="a.new", endpoint=endpoint)
    assert born.paused and born.due_at == NOW
    assert not Delivery.objects.get(event__type="a.new", endpoint=other).paused

    endpoint.refresh_from_db()
    outbox.resume_endpoint(endpoint)
    outbox.resume_endpoint(endpoint)  # twice: brought back once
    back = dict(Delivery.objects.values_list("id", "next_attempt_at"))
    assert {i: back[i] for i in due} == due
    # backlog() fans out at the real time, not NOW: none is left a century ahead of it.
    assert (
        back[born.id] == NOW
        and not Delivery.objects.filter(endpoint=endpoint)
        .filter(next_attempt_at__gt=timezone.now() + dt.timedelta(days=1))
        .exists()
    )


def test_a_paused_endpoints_backlog_is_not_in_the_queue_a_claim_walks():
    paused = backlog(50, cap=100)
    outbox.pause_endpoint(paused)
    healthy = Endpoint.objects.create(url="http://127.0.0.1:9/ok", event_types=["ok.*"], max_in_flight=100)
    outbox.record_events("default", [outbox.EventDraft(f"ok.e{i}", "{}", NOW) for i in range(3)])
    outbox.fan_out(now=NOW)
    # The due queue holds the healthy endpoint's three and nothing of the paused one's 50.
    assert Delivery.objects.filter(next_attempt_at__lte=timezone.now()).count() == 3
    claims = outbox.claim(worker_id="w", limit=10, lease=LEASE)
    assert {c.delivery.endpoint_id for c in claims} == {healthy.id} and len(claims) == 3


def test_a_replay_or_test_event_for_a_paused_endpoint_waits_set_aside_with_its_other_deliveries():
    active = Endpoint.objects.create(url="http://127.0.0.1:9/active", event_types=["*"])
    paused = backlog(1, cap=10)
    Delivery.objects.update(status=Delivery.Status.DEAD)
    outbox.pause_endpoint(paused)
    replays = outbox.replay(Delivery.objects.all(), now=NOW)
    assert {r.endpoint_id: r.next_attempt_at for r in replays} == {
        paused.id: NOW + PAUSE_SHIFT,
        active.id: NOW,
    }
    test = outbox.send_test_event(paused, now=NOW)
    assert test.next_attempt_at == NOW + PAUSE_SHIFT and test.paused and test.due_at == NOW
    outbox.resume_endpoint(paused)
    assert set(Delivery.objects.pending().values_list("next_attempt_at", flat=True)) == {NOW}


# --- fan-out leases at birth (PostgreSQL) -----------------------------------------------------------


def events(count: int, prefix: str = "a.b") -> list[Event]:
    outbox.record_events(
        "default", [outbox.EventDraft(f"{prefix}{i}", f'{{"n": {i}}}', NOW) for i in range(count)]
    )
    return list(Event.objects.order_by("occurred_at", "id"))


def leasing(room: int = 100, **terms: Any) -> outbox.Leasing:
    return outbox.Leasing(worker_id="w", lease=LEASE, room=room, breaker=BREAKER, **terms)


def born_leased() -> list[int]:
    """The ids of deliveries leased to ``w``, in id order."""
    return list(Delivery.objects.filter(lease_owner="w").order_by("id").values_list("id", flat=True))


def test_fan_out_leases_what_the_worker_may_send_now_as_a_claim_would_have():
    Endpoint.objects.create(url="http://127.0.0.1:9/hooks", event_types=["*"], max_in_flight=4)
    stored = events(3)
    done = outbox.fan_out_and_lease(now=NOW, leasing=leasing())
    assert done.events == 3 and Delivery.objects.count() == 3
    if not ON_POSTGRESQL:
        # One writer, and no RETURNING for a batch: SQLite's deliveries are all claimed.
        assert done.claims == [] and born_leased() == []
        return
    assert ids(done.claims) == born_leased() and len(done.claims) == 3
    assert Delivery.objects.filter(lease_expires_at=NOW + LEASE).count() == 3
    # The worker sends from the claim alone: the event's id (the webhook-id), type and payload.
    assert [(c.delivery.event.id, c.delivery.event.type, c.delivery.event.payload) for c in done.claims] == [
        (e.id, e.type, e.payload) for e in stored
    ]
    # Nothing is left for a claim, and the same deliveries claimed afresh look the same.
    assert outbox.claim(worker_id="v", limit=10, lease=LEASE, now=NOW) == []
    outbox.release(ids(done.claims), worker_id="w")
    again = outbox.claim(worker_id="w", limit=10, lease=LEASE, now=NOW, claim_ahead=True)
    fields = [(c.delivery, c.send_at, c.probe, c.allowance) for c in done.claims]
    assert [(c.delivery, c.send_at, c.probe, c.allowance) for c in again] == fields
    assert [c.delivery.endpoint.url for c in again] == [c.delivery.endpoint.url for c in done.claims]


@pytest.mark.parametrize(
    "kind", ["paused", "fifo", "open circuit due a probe", "parked", "held", "disabled", "not subscribed"]
)
def test_fan_out_leases_nothing_a_claim_alone_must_take(kind):
    plain = Endpoint.objects.create(url="http://127.0.0.1:9/plain", event_types=["*"])
    other = Endpoint.objects.create(url="http://127.0.0.1:9/other", event_types=["*"])
    hold: list[int] = []
    if kind == "paused":
        other.status = Endpoint.Status.PAUSED
    elif kind == "fifo":
        other.fifo = True
    elif kind == "open circuit due a probe":
        other.consecutive_failures, other.blocked_until = 3, NOW - dt.timedelta(seconds=1)
    elif kind == "parked":
        other.blocked_until = NOW + dt.timedelta(seconds=30)
    elif kind == "held":
        hold = [other.id]
    elif kind == "disabled":
        other.status = Endpoint.Status.DISABLED
    else:
        other.event_types = ["z.*"]
    other.save()
    events(2)
    done = outbox.fan_out_and_lease(now=NOW, leasing=leasing(hold=hold))
    if ON_POSTGRESQL:
        assert {c.delivery.endpoint_id for c in done.claims} == {plain.id}
        assert born_leased() == ids(done.claims) and len(done.claims) == 2
    assert not Delivery.objects.filter(endpoint=other).exclude(lease_owner="").exists()


def test_fan_out_leases_no_more_than_the_room_and_a_claim_takes_the_rest():
    Endpoint.objects.create(url="http://127.0.0.1:9/hooks", event_types=["*"], max_in_flight=100)
    events(10)
    done = outbox.fan_out_and_lease(now=NOW, leasing=leasing(room=3))
    expected = 3 if ON_POSTGRESQL else 0
    assert len(done.claims) == len(born_leased()) == expected
    assert len(outbox.claim(worker_id="v", limit=100, lease=LEASE, now=NOW)) == 10 - expected


def test_fan_out_leases_within_the_cap_and_depth_a_claim_counts():
    Endpoint.objects.create(url="http://127.0.0.1:9/hooks", event_types=["*"], max_in_flight=2)

    def fan_out(prefix: str, **terms: Any) -> list[outbox.Claim]:
        events(10, prefix)
        return outbox.fan_out_and_lease(now=NOW, leasing=leasing(**terms)).claims

    first = fan_out("a.")
    if not ON_POSTGRESQL:
        assert first == []
        return
    # As claim(claim_ahead=True) leases: a cap's worth at a time, a cap's worth waiting at most.
    assert len(first) == 2 and {c.allowance for c in first} == {2}
    second = fan_out("b.")
    assert len(second) == 2
    assert fan_out("c.", queued=ids(second)) == []
    assert fan_out("d.", settled=ids(first), queued=ids(second)) == []
    assert len(fan_out("e.", settled=ids(first))) == 2


def test_fan_out_leases_nothing_while_other_workers_hold_the_whole_cap():
    Endpoint.objects.create(url="http://127.0.0.1:9/hooks", event_types=["*"], max_in_flight=2)
    events(2, prefix="x.")
    outbox.fan_out(now=NOW)
    assert len(outbox.claim(worker_id="v", limit=10, lease=LEASE, now=NOW)) == 2
    events(2, prefix="y.")
    done = outbox.fan_out_and_lease(now=NOW, leasing=leasing())
    assert done.events == 2 and done.claims == [] and born_leased() == []


def test_fan_out_takes_a_rate_limited_endpoints_send_slots_as_a_claim_does():
    endpoint = Endpoint.objects.create(url="http://127.0.0.1:9/hooks", event_types=["*"], rate_limit=2)
    events(3)
    done = outbox.fan_out_and_lease(now=NOW, leasing=leasing())
    if not ON_POSTGRESQL:
        assert done.claims == [] and born_leased() == []
        return
    half = dt.timedelta(seconds=0.5)
    assert [c.send_at for c in done.claims] == [NOW, NOW + half, NOW + 2 * half]
    endpoint.refresh_from_db()
    assert endpoint.next_slot_at == NOW + 3 * half


def test_a_repeated_fan_out_leases_only_what_it_creates():
    Endpoint.objects.create(url="http://127.0.0.1:9/hooks", event_types=["*"])
    events(3)
    outbox.fan_out(now=NOW)
    kept, lost = Delivery.objects.order_by("id")[:2], Delivery.objects.order_by("id").last()
    kept_ids = [d.id for d in kept]
    assert lost is not None
    lost.delete()
    Event.objects.update(fanned_out_at=None)  # as if the mark had been lost in a crash
    done = outbox.fan_out_and_lease(now=NOW, leasing=leasing())
    assert done.events == 3 and Delivery.objects.count() == 3
    if ON_POSTGRESQL:
        [remade] = done.claims
        assert remade.delivery.event_id == lost.event_id and born_leased() == [remade.delivery.id]
    assert not Delivery.objects.filter(id__in=kept_ids).exclude(lease_owner="").exists()
