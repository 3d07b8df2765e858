"""The retry policy: outcomes in, decisions out; pure, so no database here."""

import datetime as dt
import os
import subprocess
import sys
from email.utils import format_datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hookpost.retry import (
    DEFAULT_SCHEDULE,
    Breaker,
    Decision,
    Outcome,
    RetryPolicy,
    Verdict,
    parse_retry_after,
    should_disable,
)
from tests.purity import django_modules_after_importing

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
NAIVE = dt.datetime(2026, 3, 1, 12, 0)
ROOT = Path(__file__).resolve().parent.parent

S = dt.timedelta(seconds=1)
MIN = dt.timedelta(minutes=1)
H = dt.timedelta(hours=1)


def exact() -> RetryPolicy:
    """The default schedule with no jitter, so retry times are predictable."""
    return RetryPolicy(jitter=0)


def retry_delay(decision: Decision) -> dt.timedelta:
    assert decision.verdict is Verdict.RETRY, decision
    assert decision.retry_at is not None
    return decision.retry_at - NOW


# --- status classes ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status):
    decision = exact().decide(Outcome(status_code=status), 1, NOW)

    assert decision == Decision(Verdict.DELIVERED, None, f"HTTP {status}")


def test_2xx_is_delivered_even_on_an_attempt_past_the_schedule():
    assert exact().decide(Outcome(status_code=200), 99, NOW).verdict is Verdict.DELIVERED


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308])
def test_3xx_is_retried_because_redirects_are_not_followed(status):
    decision = exact().decide(Outcome(status_code=status), 1, NOW)

    assert retry_delay(decision) == 5 * S
    assert str(status) in decision.reason
    assert "redirects are not followed" in decision.reason


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 408, 409, 413, 422, 451])
def test_4xx_other_than_410_is_retried(status):
    decision = exact().decide(Outcome(status_code=status), 2, NOW)

    assert retry_delay(decision) == 5 * MIN
    assert decision.reason == f"HTTP {status}"


def test_410_means_the_endpoint_is_gone_and_is_not_retried():
    decision = exact().decide(Outcome(status_code=410), 1, NOW)

    assert decision.verdict is Verdict.ENDPOINT_GONE
    assert decision.retry_at is None
    assert "410" in decision.reason


def test_410_means_endpoint_gone_even_on_the_last_attempt():
    assert exact().decide(Outcome(status_code=410), 10, NOW).verdict is Verdict.ENDPOINT_GONE


@pytest.mark.parametrize("status", [500, 501, 502, 504, 599])
def test_5xx_is_retried(status):
    decision = exact().decide(Outcome(status_code=status), 3, NOW)

    assert retry_delay(decision) == 30 * MIN
    assert decision.reason == f"HTTP {status}"


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_without_retry_after_follow_the_schedule(status):
    decision = exact().decide(Outcome(status_code=status), 1, NOW)

    assert retry_delay(decision) == 5 * S
    assert decision.reason == f"HTTP {status}"


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_with_retry_after_honour_it(status):
    decision = exact().decide(Outcome(status_code=status, retry_after="120"), 1, NOW)

    assert retry_delay(decision) == 120 * S
    assert decision.reason == f"HTTP {status}, Retry-After 120 s honoured"


@pytest.mark.parametrize("error", ["timeout", "connect", "address_not_allowed", "invalid_url", "transport"])
def test_errors_without_a_response_are_retried_with_the_error_kind_as_reason(error):
    decision = exact().decide(Outcome(error=error), 1, NOW)

    assert retry_delay(decision) == 5 * S
    assert decision.reason == error


def test_an_outcome_with_neither_status_nor_error_is_retried_as_no_response():
    decision = exact().decide(Outcome(), 1, NOW)

    assert retry_delay(decision) == 5 * S
    assert decision.reason == "no response"


def test_outcome_helpers_build_responses_and_failures():
    assert Outcome.response(503, "7") == Outcome(status_code=503, retry_after="7")
    assert Outcome.failure("timeout") == Outcome(error="timeout")


def test_verdicts_are_strings_stored_as_is():
    assert [str(v) for v in Verdict] == ["delivered", "retry", "gave_up", "endpoint_gone"]


def test_a_decision_has_retry_at_exactly_when_it_retries():
    with pytest.raises(ValueError, match="retry_at"):
        Decision(Verdict.RETRY, None, "x")
    with pytest.raises(ValueError, match="retry_at"):
        Decision(Verdict.DELIVERED, NOW, "x")


# --- the default schedule ---------------------------------------------------------------------


def test_default_schedule_is_the_standard_webhooks_one():
    assert [d.total_seconds() for d in DEFAULT_SCHEDULE] == [
        0,
        5,
        5 * 60,
        30 * 60,
        2 * 3600,
        5 * 3600,
        10 * 3600,
        14 * 3600,
        20 * 3600,
        24 * 3600,
    ]
    assert RetryPolicy().max_attempts == 10


def test_first_attempt_is_immediate_by_default():
    assert RetryPolicy().first_attempt_at(NOW) == NOW


def test_first_attempt_follows_a_custom_first_delay_without_jitter():
    policy = RetryPolicy([10 * S, S], jitter=0.5, random=lambda: 0.0)

    assert policy.first_attempt_at(NOW) == NOW + 10 * S


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [
        (1, 5 * S),
        (2, 5 * MIN),
        (3, 30 * MIN),
        (4, 2 * H),
        (5, 5 * H),
        (6, 10 * H),
        (7, 14 * H),
        (8, 20 * H),
        (9, 24 * H),
    ],
)
def test_default_schedule_delay_after_each_attempt(attempt, expected):
    policy = exact()

    assert policy.next_delay(attempt) == expected
    assert retry_delay(policy.decide(Outcome(status_code=500), attempt, NOW)) == expected


def test_gives_up_after_the_tenth_attempt():
    policy = exact()
    decision = policy.decide(Outcome(status_code=500), 10, NOW)

    assert policy.next_delay(10) is None
    assert decision.verdict is Verdict.GAVE_UP
    assert decision.retry_at is None
    assert "HTTP 500" in decision.reason
    assert "10 attempts" in decision.reason


@pytest.mark.parametrize(
    "outcome", [Outcome(status_code=302), Outcome(status_code=404), Outcome(error="timeout")]
)
def test_every_failure_kind_gives_up_when_attempts_are_used_up(outcome):
    assert exact().decide(outcome, 10, NOW).verdict is Verdict.GAVE_UP


def test_gives_up_past_the_schedule_when_it_was_shortened():
    policy = RetryPolicy(DEFAULT_SCHEDULE[:3], jitter=0)

    assert policy.decide(Outcome(status_code=500), 7, NOW).verdict is Verdict.GAVE_UP


def test_a_one_entry_schedule_never_retries():
    assert RetryPolicy([0 * S]).decide(Outcome(error="connect"), 1, NOW).verdict is Verdict.GAVE_UP


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempt_numbers_start_at_one(attempt):
    with pytest.raises(ValueError, match="start at 1"):
        exact().decide(Outcome(status_code=500), attempt, NOW)
    with pytest.raises(ValueError, match="start at 1"):
        exact().next_delay(attempt)


# --- jitter -----------------------------------------------------------------------------------

US = dt.timedelta(microseconds=1)  # timedelta * float rounds to the microsecond


@given(
    draw=st.floats(min_value=0, max_value=1, exclude_max=True),
    attempt=st.integers(min_value=1, max_value=9),
    jitter=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_jittered_delay_stays_within_jitter_of_the_nominal_delay(draw, attempt, jitter):
    policy = RetryPolicy(jitter=jitter, random=lambda: draw)
    nominal = DEFAULT_SCHEDULE[attempt]

    delay = policy.next_delay(attempt)

    assert delay is not None
    assert nominal * (1 - jitter) - US <= delay <= nominal * (1 + jitter) + US


@given(draw=st.floats(min_value=0, max_value=1, exclude_max=True), attempt=st.integers(1, 9))
def test_default_jitter_is_twenty_percent(draw, attempt):
    delay = RetryPolicy(random=lambda: draw).next_delay(attempt)
    nominal = DEFAULT_SCHEDULE[attempt]

    assert delay is not None
    assert nominal * 0.8 - US <= delay <= nominal * 1.2 + US


@given(attempt=st.integers(min_value=1, max_value=9))
def test_zero_jitter_gives_the_nominal_delay_exactly(attempt):
    policy = RetryPolicy(jitter=0, random=lambda: pytest.fail("random drawn with no jitter"))

    assert policy.next_delay(attempt) == DEFAULT_SCHEDULE[attempt]


def test_random_zero_gives_the_low_end_and_almost_one_the_high_end():
    low = RetryPolicy(jitter=0.2, random=lambda: 0.0)
    high = RetryPolicy(jitter=0.2, random=lambda: 0.999999999)

    assert low.next_delay(2) == 4 * MIN
    assert high.next_delay(2) == pytest.approx(6 * MIN, abs=US)
    assert low.decide(Outcome(status_code=500), 2, NOW).retry_at == NOW + 4 * MIN


def test_random_one_half_gives_the_nominal_delay():
    assert RetryPolicy(jitter=0.2, random=lambda: 0.5).next_delay(3) == 30 * MIN


def test_jitter_spreads_retries_with_the_default_random():
    delays = {RetryPolicy().next_delay(4) for _ in range(50)}

    assert len(delays) > 1
    assert all(d is not None and 96 * MIN <= d <= 144 * MIN for d in delays)


def test_a_zero_delay_stays_zero_whatever_the_jitter():
    policy = RetryPolicy([0 * S, 0 * S, 5 * S], jitter=0.5, random=lambda: 0.0)

    assert policy.next_delay(1) == 0 * S


@pytest.mark.parametrize("draw", [1.0, -0.1, 2.0])
def test_an_injected_random_out_of_range_is_refused(draw):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        RetryPolicy(random=lambda: draw).next_delay(1)


# --- Retry-After ------------------------------------------------------------------------------


def test_parse_retry_after_reads_delta_seconds():
    assert parse_retry_after("120", NOW) == 120 * S
    assert parse_retry_after(" 0 ", NOW) == 0 * S


def test_parse_retry_after_reads_an_http_date():
    assert parse_retry_after(format_datetime(NOW + 90 * S, usegmt=True), NOW) == 90 * S


def test_parse_retry_after_reads_an_http_date_relative_to_a_non_utc_now():
    paris = dt.timezone(dt.timedelta(hours=1))

    assert parse_retry_after(format_datetime(NOW + H, usegmt=True), NOW.astimezone(paris)) == H


def test_parse_retry_after_gives_zero_for_a_date_in_the_past():
    assert parse_retry_after(format_datetime(NOW - H, usegmt=True), NOW) == 0 * S


@pytest.mark.parametrize(
    "value", [None, "", "soon", "-5", "1.5", "12abc", "²", "Mon, 99 Foo 2026 00:00:00 GMT"]
)
def test_parse_retry_after_ignores_missing_garbage_and_negative_values(value):
    assert parse_retry_after(value, NOW) is None


@pytest.mark.parametrize("digits", [15, 40, 5000])
def test_parse_retry_after_clamps_an_absurdly_large_number_instead_of_overflowing(digits):
    delay = parse_retry_after("9" * digits, NOW)

    assert delay is not None
    assert dt.timedelta.max - S < delay <= dt.timedelta.max


def test_retry_after_as_an_http_date_is_honoured():
    header = format_datetime(NOW + 2 * H, usegmt=True)

    decision = exact().decide(Outcome(status_code=503, retry_after=header), 2, NOW)

    assert decision.retry_at == NOW + 2 * H
    assert decision.reason == "HTTP 503, Retry-After 7200 s honoured"


def test_retry_after_date_in_the_past_keeps_the_schedule():
    header = format_datetime(NOW - H, usegmt=True)

    decision = exact().decide(Outcome(status_code=429, retry_after=header), 2, NOW)

    assert retry_delay(decision) == 5 * MIN
    assert "sooner than the schedule" in decision.reason


@pytest.mark.parametrize("header", ["soon", "-30", "", "3.5"])
def test_unusable_retry_after_is_ignored_and_the_schedule_kept(header):
    decision = exact().decide(Outcome(status_code=429, retry_after=header), 3, NOW)

    assert retry_delay(decision) == 30 * MIN
    assert "ignored" in decision.reason


def test_huge_retry_after_is_capped_at_max_retry_after():
    decision = exact().decide(Outcome(status_code=429, retry_after=str(30 * 86400)), 1, NOW)

    assert retry_delay(decision) == 24 * H
    assert decision.reason == "HTTP 429, Retry-After 2.592e+06 s capped at 86400 s"


def test_absurdly_large_retry_after_is_capped_without_overflow():
    policy = RetryPolicy(jitter=0, max_retry_after=H)

    assert retry_delay(policy.decide(Outcome(status_code=503, retry_after="9" * 40), 1, NOW)) == H


def test_the_cap_never_brings_a_retry_sooner_than_the_schedule():
    policy = RetryPolicy(jitter=0, max_retry_after=MIN)

    decision = policy.decide(Outcome(status_code=503, retry_after="86400"), 3, NOW)

    assert retry_delay(decision) == 30 * MIN


def test_retry_after_sooner_than_the_schedule_loses_to_the_schedule():
    decision = exact().decide(Outcome(status_code=503, retry_after="60"), 3, NOW)

    assert retry_delay(decision) == 30 * MIN
    assert decision.reason == "HTTP 503, Retry-After 60 s is sooner than the schedule's 1800 s"


def test_retry_after_is_compared_with_the_jittered_delay():
    # Random 0 with 20% jitter: 5 min becomes 4 min, so a 270 s Retry-After wins.
    policy = RetryPolicy(random=lambda: 0.0)

    assert retry_delay(policy.decide(Outcome(status_code=429, retry_after="270"), 2, NOW)) == 270 * S
    assert retry_delay(policy.decide(Outcome(status_code=429, retry_after="200"), 2, NOW)) == 4 * MIN


@pytest.mark.parametrize("status", [500, 502, 400, 302])
def test_retry_after_on_other_statuses_is_ignored(status):
    decision = exact().decide(Outcome(status_code=status, retry_after="3600"), 1, NOW)

    assert retry_delay(decision) == 5 * S
    assert "Retry-After" not in decision.reason


def test_retry_after_on_the_last_attempt_still_gives_up():
    decision = exact().decide(Outcome(status_code=503, retry_after="60"), 10, NOW)

    assert decision.verdict is Verdict.GAVE_UP
    assert decision.retry_at is None


def test_custom_max_retry_after():
    policy = RetryPolicy(jitter=0, max_retry_after=10 * MIN)

    assert retry_delay(policy.decide(Outcome(status_code=429, retry_after="3600"), 1, NOW)) == 10 * MIN


# --- construction and from_config -------------------------------------------------------------


def test_from_config_reads_seconds():
    policy = RetryPolicy.from_config([0, 5, 0.5, 300])

    assert policy.schedule == (0 * S, 5 * S, dt.timedelta(milliseconds=500), 5 * MIN)
    assert policy.max_attempts == 4


def test_from_config_reads_duration_strings():
    policy = RetryPolicy.from_config(["0s", "5s", "5m", "2h", "1d", "1.5h", " 10 m ", "7"])

    assert policy.schedule == (0 * S, 5 * S, 5 * MIN, 2 * H, 24 * H, 90 * MIN, 10 * MIN, 7 * S)


def test_from_config_accepts_timedeltas_and_tuples():
    assert RetryPolicy.from_config((0 * S, "1m")).schedule == (0 * S, MIN)


def test_from_config_passes_policy_options_through():
    policy = RetryPolicy.from_config([0, 60], jitter=0.5, max_retry_after=H, random=lambda: 0.0)

    assert policy.next_delay(1) == 30 * S
    assert policy.max_retry_after == H


def test_from_config_reproduces_the_default_schedule():
    config = ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h"]

    assert RetryPolicy.from_config(config).schedule == DEFAULT_SCHEDULE


@pytest.mark.parametrize(
    "bad", ["5x", "five", "-5s", "5 minutes", "", "1e3", "m", -1, True, None, [5], float("nan"), float("inf")]
)
def test_from_config_names_the_bad_entry(bad):
    with pytest.raises(ValueError, match="retry schedule entry") as info:
        RetryPolicy.from_config([0, "5s", bad])

    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("huge", [10**20, 10**400, 1e300, "9999999999999999d", "366d", 365 * 86400 + 1])
def test_from_config_refuses_an_entry_too_large_for_a_timedelta(huge):
    with pytest.raises(ValueError, match="too large"):
        RetryPolicy.from_config([0, huge])


def test_the_longest_delay_a_schedule_may_hold_is_365_days_and_it_never_overflows():
    policy = RetryPolicy.from_config([0, "365d"], jitter=0.2)
    decision = policy.decide(Outcome(status_code=500), 1, dt.datetime.now(dt.UTC))
    assert decision.retry_at is not None
    with pytest.raises(ValueError, match="at most 365 days"):
        RetryPolicy([dt.timedelta(0), dt.timedelta(days=366)])


@pytest.mark.parametrize("value", [[], ()])
def test_from_config_refuses_an_empty_schedule(value):
    with pytest.raises(ValueError, match="at least one entry"):
        RetryPolicy.from_config(value)


@pytest.mark.parametrize("value", ["5m", b"5", 5, None, {"a": 1}])
def test_from_config_refuses_what_is_not_a_list(value):
    with pytest.raises(ValueError, match="list of delays"):
        RetryPolicy.from_config(value)


def test_policy_refuses_an_empty_schedule():
    with pytest.raises(ValueError, match="at least one entry"):
        RetryPolicy([])


def test_policy_refuses_a_negative_delay_naming_its_position():
    with pytest.raises(ValueError, match="entry 1 is negative"):
        RetryPolicy([0 * S, -S])


def test_policy_refuses_entries_that_are_not_timedeltas():
    with pytest.raises(ValueError, match="entry 1 is 5, not a timedelta"):
        RetryPolicy([0 * S, 5])  # type: ignore[list-item]


@pytest.mark.parametrize("jitter", [-0.1, 1, 1.5, float("nan")])
def test_policy_refuses_jitter_outside_zero_to_one(jitter):
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=jitter)


def test_policy_refuses_a_negative_max_retry_after():
    with pytest.raises(ValueError, match="max_retry_after"):
        RetryPolicy(max_retry_after=-S)


def test_policy_repr_shows_the_schedule():
    assert repr(RetryPolicy([0 * S, 5 * S], jitter=0.1)) == (
        "RetryPolicy([0 s, 5 s], jitter=0.1, max_retry_after=datetime.timedelta(days=1))"
    )


# --- circuit breaker --------------------------------------------------------------------------


@pytest.mark.parametrize("failures", [0, 1, 4])
def test_breaker_is_closed_below_the_threshold(failures):
    breaker = Breaker()

    assert not breaker.is_open(failures)
    assert breaker.probe_at(failures, NOW) is None


@pytest.mark.parametrize("failures", [5, 6, 100])
def test_breaker_is_open_from_the_threshold_on(failures):
    assert Breaker().is_open(failures)


def test_breaker_first_probe_waits_the_cooldown():
    assert Breaker().probe_at(5, NOW) == NOW + 30 * S


def test_breaker_probe_wait_doubles_per_further_failure_up_to_the_cap():
    breaker = Breaker()

    waits = [breaker.probe_at(n, NOW) - NOW for n in range(5, 12)]  # type: ignore[operator]

    assert waits == [30 * S, 60 * S, 120 * S, 240 * S, 480 * S, 600 * S, 600 * S]


def test_breaker_cap_holds_for_a_very_long_failure_streak():
    breaker = Breaker(threshold=1, cooldown=dt.timedelta(days=1), max_cooldown=dt.timedelta(days=7))

    assert breaker.probe_at(10**6, NOW) == NOW + dt.timedelta(days=7)


def test_breaker_with_custom_settings():
    breaker = Breaker(threshold=2, cooldown=10 * S, max_cooldown=25 * S)

    assert not breaker.is_open(1)
    assert [breaker.probe_at(n, NOW) for n in (2, 3, 4)] == [NOW + 10 * S, NOW + 20 * S, NOW + 25 * S]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 0}, "threshold"),
        ({"cooldown": 0 * S}, "cooldown must be positive"),
        ({"cooldown": MIN, "max_cooldown": S}, "max_cooldown"),
    ],
)
def test_breaker_refuses_settings_that_make_no_sense(options, message):
    with pytest.raises(ValueError, match=message):
        Breaker(**options)


def test_breaker_refuses_a_negative_failure_streak():
    with pytest.raises(ValueError, match="negative"):
        Breaker().is_open(-1)


# --- disabling failing endpoints --------------------------------------------------------------

FIVE_DAYS = dt.timedelta(days=5)


def test_should_disable_exactly_when_failing_for_the_whole_period():
    assert should_disable(NOW - FIVE_DAYS, NOW, FIVE_DAYS)


def test_should_disable_after_the_period():
    assert should_disable(NOW - FIVE_DAYS - S, NOW, FIVE_DAYS)


def test_should_not_disable_just_before_the_period_ends():
    assert not should_disable(NOW - FIVE_DAYS + dt.timedelta(microseconds=1), NOW, FIVE_DAYS)


def test_should_not_disable_an_endpoint_that_is_not_failing():
    assert not should_disable(None, NOW, FIVE_DAYS)


# --- timezone-aware datetimes only ------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: RetryPolicy().decide(Outcome(status_code=500), 1, NAIVE),
        lambda: RetryPolicy().decide(Outcome(status_code=200), 1, NAIVE),
        lambda: RetryPolicy().first_attempt_at(NAIVE),
        lambda: parse_retry_after("5", NAIVE),
        lambda: parse_retry_after(None, NAIVE),
        lambda: Breaker().probe_at(5, NAIVE),
        lambda: Breaker().probe_at(0, NAIVE),
        lambda: should_disable(None, NAIVE, FIVE_DAYS),
        lambda: should_disable(NAIVE, NOW, FIVE_DAYS),
    ],
    ids=[
        "decide-retry",
        "decide-delivered",
        "first_attempt_at",
        "parse_retry_after",
        "parse_retry_after-none",
        "probe_at-open",
        "probe_at-closed",
        "should_disable-now",
        "should_disable-failing_since",
    ],
)
def test_naive_datetimes_are_refused(call):
    with pytest.raises(ValueError, match="timezone-aware"):
        call()


# --- purity -----------------------------------------------------------------------------------


def test_retry_imports_nothing_from_django():
    assert django_modules_after_importing("hookpost.retry") == []


def test_retry_imports_no_other_hookpost_module():
    code = "import hookpost.retry, sys; print(sorted(m for m in sys.modules if m.startswith('hookpost')))"
    env = {**os.environ, "PYTHONPATH": "src"}

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "['hookpost', 'hookpost.retry']"
