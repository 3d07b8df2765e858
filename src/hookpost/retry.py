"""The retry policy as pure objects: an attempt's outcome goes in, a decision comes out."""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import random as _random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DEFAULT_SCHEDULE",
    "Breaker",
    "Decision",
    "Outcome",
    "RetryPolicy",
    "Verdict",
    "parse_retry_after",
    "should_disable",
]

#: The Standard Webhooks schedule: the delay before each attempt, the first one included.
DEFAULT_SCHEDULE: tuple[dt.timedelta, ...] = (
    dt.timedelta(0),
    dt.timedelta(seconds=5),
    dt.timedelta(minutes=5),
    dt.timedelta(minutes=30),
    dt.timedelta(hours=2),
    dt.timedelta(hours=5),
    dt.timedelta(hours=10),
    dt.timedelta(hours=14),
    dt.timedelta(hours=20),
    dt.timedelta(hours=24),
)

_ZERO = dt.timedelta(0)
# ASCII digits only: str.isdigit() and \d also accept digits int() cannot read ("²").
_DELTA_SECONDS = re.compile(r"[0-9]+")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# The longest delay a timedelta holds, in whole seconds; a server may send any number of digits.
_MAX_SECONDS = dt.timedelta.max // dt.timedelta(seconds=1)
# A schedule's longest delay: far past any sane retry, and far from overflowing a datetime.
_MAX_DELAY = dt.timedelta(days=365)


def _require_aware(value: dt.datetime, name: str) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got the naive {value!r}")
    return value


def _require_attempt(attempt: int) -> int:
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt!r}")
    return attempt


def _seconds(delay: dt.timedelta) -> str:
    return f"{delay.total_seconds():g} s"


@dataclass(frozen=True)
class Outcome:
    """What one attempt produced: an HTTP status, or a short error kind when no response came."""

    status_code: int | None = None
    # When there is no response: "timeout", "connect", "address_not_allowed", "invalid_url", ...
    error: str | None = None
    # Kept raw so that the policy, which knows the status, decides whether it counts.
    retry_after: str | None = None

    @classmethod
    def response(cls, status_code: int, retry_after: str | None = None) -> Outcome:
        """An attempt that got an HTTP response."""
        return cls(status_code=status_code, retry_after=retry_after)

    @classmethod
    def failure(cls, error: str) -> Outcome:
        """An attempt that got no HTTP response, ``error`` saying why."""
        return cls(error=error)


class Verdict(StrEnum):
    """What becomes of a delivery after an attempt."""

    DELIVERED = "delivered"
    RETRY = "retry"
    GAVE_UP = "gave_up"
    ENDPOINT_GONE = "endpoint_gone"


@dataclass(frozen=True)
class Decision:
    """The policy's answer: a verdict, when to retry (RETRY only), and a reason for the attempt log."""

    verdict: Verdict
    retry_at: dt.datetime | None
    reason: str

    def __post_init__(self) -> None:
        # The outbox trusts retry_at to be set exactly when it must schedule a retry.
        if (self.verdict is Verdict.RETRY) != (self.retry_at is not None):
            raise ValueError(f"retry_at must be set for RETRY and only for RETRY, not for {self.verdict}")


def parse_retry_after(value: str | None, now: dt.datetime) -> dt.timedelta | None:
    """Read a Retry-After value (delta-seconds or HTTP-date, RFC 9110) as a delay from ``now``.

    Returns None when the value is missing or unusable (garbage, negative); a date
    already past gives a zero delay.
    """
    _require_aware(now, "now")
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        # Past this length the value exceeds _MAX_SECONDS anyway, and int() of thousands of digits raises.
        seconds = int(text) if len(text) <= 20 else _MAX_SECONDS
        return dt.timedelta(seconds=min(seconds, _MAX_SECONDS))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # "-0000" comes back naive, yet an HTTP-date is always GMT.
        when = when.replace(tzinfo=dt.UTC)
    try:
        return max(when - now, _ZERO)
    except OverflowError:
        return None


class DelayTooLarge(ValueError):
    """A schedule entry longer than a schedule may hold (365 days)."""


def parse_delay(entry: object) -> dt.timedelta:
    """One schedule entry (seconds, or a string such as ``"5m"``) as a delay; ValueError if it is none.

    Raises :class:`DelayTooLarge` (a ValueError) past 365 days.
    """
    seconds: float | None = None
    if isinstance(entry, dt.timedelta):
        seconds = entry.total_seconds()
    # bool is an int, but True in a schedule is a mistake, not one second.
    elif isinstance(entry, int | float) and not isinstance(entry, bool):
        seconds = entry
    elif isinstance(entry, str) and (match := _DURATION.fullmatch(entry.strip())):
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    # Only floats are checked for nan/inf: an int like 10**400 is too large for a float.
    if seconds is None or (isinstance(seconds, float) and not math.isfinite(seconds)):
        raise ValueError(
            f"retry schedule entry {entry!r} is not a delay: use seconds (5, 0.5) "
            "or a duration string ('5s', '5m', '2h', '1d')"
        )
    if seconds < 0:
        raise ValueError(f"retry schedule entry {entry!r} is negative")
    if seconds > _MAX_DELAY.total_seconds():
        raise DelayTooLarge(f"retry schedule entry {entry!r} is too large: at most 365 days")
    return dt.timedelta(seconds=seconds)


class RetryPolicy:
    """Decides, from one attempt's outcome, whether a delivery is done, retried (and when) or dropped.

    ``schedule[0]`` is the delay of the first attempt and ``schedule[n]`` the
    delay after attempt ``n``, so the schedule's length is the number of
    attempts in all. Delays after the first get ±``jitter`` (a fraction) so that
    deliveries that failed together do not retry together.
    """

    def __init__(
        self,
        schedule: Sequence[dt.timedelta] = DEFAULT_SCHEDULE,
        *,
        jitter: float = 0.2,
        max_retry_after: dt.timedelta = dt.timedelta(hours=24),
        random: Callable[[], float] | None = None,
    ) -> None:
        schedule = tuple(schedule)
        if not schedule:
            raise ValueError("a retry schedule needs at least one entry: the delay of the first attempt")
        entry: object
        for index, entry in enumerate(schedule):
            if not isinstance(entry, dt.timedelta):
                raise ValueError(
                    f"retry schedule entry {index} is {entry!r}, not a timedelta "
                    "(RetryPolicy.from_config reads seconds and duration strings)"
                )
            if entry < _ZERO:
                raise ValueError(f"retry schedule entry {index} is negative: {entry!r}")
            if entry > _MAX_DELAY:
                raise ValueError(f"retry schedule entry {index} is too large: at most 365 days")
        if not (isinstance(jitter, int | float) and 0 <= jitter < 1):
            raise ValueError(f"jitter is a fraction in [0, 1), got {jitter!r}")
        if max_retry_after < _ZERO:
            raise ValueError(f"max_retry_after cannot be negative, got {max_retry_after!r}")
        self.schedule: tuple[dt.timedelta, ...] = schedule
        self.jitter = float(jitter)
        self.max_retry_after = max_retry_after
        self._random = _random.random if random is None else random

    def __repr__(self) -> str:
        delays = ", ".join(_seconds(delay) for delay in self.schedule)
        return f"RetryPolicy([{delays}], jitter={self.jitter}, max_retry_after={self.max_retry_after!r})"

    @classmethod
    def from_config(
        cls,
        value: object,
        *,
        jitter: float = 0.2,
        max_retry_after: dt.timedelta = dt.timedelta(hours=24),
        random: Callable[[], float] | None = None,
    ) -> RetryPolicy:
        """Build a policy from settings-like data.

        ``value`` is a non-empty list of delays, each in seconds (``0``, ``5``,
        ``0.5``) or a duration string (``"5s"``, ``"5m"``, ``"2h"``, ``"1d"``).
        Raises ValueError naming the first bad entry.
        """
        # A string is a Sequence too, but "5m" as a schedule would be two entries.
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise ValueError(f"a retry schedule is a list of delays such as [0, '5s', '5m'], got {value!r}")
        if not value:
            raise ValueError("a retry schedule needs at least one entry: the delay of the first attempt")
        schedule = tuple(parse_delay(entry) for entry in value)
        return cls(schedule, jitter=jitter, max_retry_after=max_retry_after, random=random)

    @property
    def max_attempts(self) -> int:
        """Attempts in all, the first one included."""
        return len(self.schedule)

    def first_attempt_at(self, now: dt.datetime) -> dt.datetime:
        """When a new delivery's first attempt is due (never jittered)."""
        return _require_aware(now, "now") + self.schedule[0]

    def next_delay(self, attempt: int) -> dt.timedelta | None:
        """The jittered delay after attempt number ``attempt`` (1-based); None when none remain."""
        _require_attempt(attempt)
        if attempt >= self.max_attempts:
            return None
        nominal = self.schedule[attempt]
        if not self.jitter or not nominal:
            return nominal
        draw = self._random()
        if not 0 <= draw < 1:
            raise ValueError(f"random() must return a float in [0, 1), got {draw!r}")
        # Maps [0, 1) onto [-jitter, +jitter): an even spread around the nominal delay.
        return nominal * (1 + (2 * draw - 1) * self.jitter)

    def decide(self, outcome: Outcome, attempt: int, now: dt.datetime) -> Decision:
        """Decide what follows attempt number ``attempt`` (1-based), which produced ``outcome``."""
        _require_aware(now, "now")
        _require_attempt(attempt)
        status = outcome.status_code
        if status is not None and 200 <= status < 300:
            return Decision(Verdict.DELIVERED, None, f"HTTP {status}")
        if status == 410:
            return Decision(Verdict.ENDPOINT_GONE, None, "HTTP 410 Gone: the endpoint is to be disabled")

        if status is None:
            reason = outcome.error or "no response"
        elif 300 <= status < 400:
            # Following a redirect would send a signed payload to an address nobody approved.
            reason = f"HTTP {status}: 3xx redirects are not followed"
        else:
            reason = f"HTTP {status}"

        delay = self.next_delay(attempt)
        if delay is None:
            return Decision(Verdict.GAVE_UP, None, f"{reason}; gave up after {attempt} attempts")
        if status in (429, 503) and outcome.retry_after is not None:
            delay, note = self._honour_retry_after(outcome.retry_after, delay, now)
            reason = f"{reason}, {note}"
        return Decision(Verdict.RETRY, now + delay, reason)

    def _honour_retry_after(
        self, value: str, scheduled: dt.timedelta, now: dt.datetime
    ) -> tuple[dt.timedelta, str]:
        asked = parse_retry_after(value, now)
        if asked is None:
            return scheduled, f"Retry-After {value!r} ignored (not delta-seconds or an HTTP-date)"
        # The schedule is a floor: a server asking for "0" must not turn retries into a tight loop.
        if asked <= scheduled:
            return (
                scheduled,
                f"Retry-After {_seconds(asked)} is sooner than the schedule's {_seconds(scheduled)}",
            )
        if asked > self.max_retry_after:
            # A ceiling keeps one endpoint from parking its deliveries for months.
            capped = max(self.max_retry_after, scheduled)
            return capped, f"Retry-After {_seconds(asked)} capped at {_seconds(capped)}"
        return asked, f"Retry-After {_seconds(asked)} honoured"


@dataclass(frozen=True)
class Breaker:
    """Per-endpoint circuit breaker decisions; the failure streak itself lives in the database.

    After ``threshold`` consecutive failures the circuit opens: deliveries wait,
    and one probe may go ``cooldown`` after the last failure. Each further
    failure doubles that wait, up to ``max_cooldown``; a success closes it.
    """

    threshold: int = 5
    cooldown: dt.timedelta = dt.timedelta(seconds=30)
    max_cooldown: dt.timedelta = dt.timedelta(minutes=10)

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"the breaker threshold must be at least 1, got {self.threshold!r}")
        if self.cooldown <= _ZERO:
            raise ValueError(f"the breaker cooldown must be positive, got {self.cooldown!r}")
        if self.max_cooldown < self.cooldown:
            raise ValueError(
                f"max_cooldown ({self.max_cooldown!r}) cannot be shorter than cooldown ({self.cooldown!r})"
            )

    def is_open(self, consecutive_failures: int) -> bool:
        """Whether an endpoint with this failure streak has its deliveries held back."""
        if consecutive_failures < 0:
            raise ValueError(f"a failure streak cannot be negative, got {consecutive_failures!r}")
        return consecutive_failures >= self.threshold

    def probe_at(self, consecutive_failures: int, last_failure_at: dt.datetime) -> dt.datetime | None:
        """When one probe may be sent to an open circuit; None while the circuit is closed."""
        _require_aware(last_failure_at, "last_failure_at")
        if not self.is_open(consecutive_failures):
            return None
        wait = self.cooldown
        # Doubling step by step stops at the cap, where 2**n could overflow a timedelta.
        for _ in range(consecutive_failures - self.threshold):
            if wait >= self.max_cooldown:
                break
            wait *= 2
        return last_failure_at + min(wait, self.max_cooldown)


def should_disable(failing_since: dt.datetime | None, now: dt.datetime, after: dt.timedelta) -> bool:
    """Whether an endpoint failing since ``failing_since`` with no success has failed for ``after``."""
    _require_aware(now, "now")
    if failing_since is None:
        return False
    return now - _require_aware(failing_since, "failing_since") >= after
