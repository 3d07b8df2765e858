"""The receiver under attack: random and mutated requests through the real view, in-process.

Properties, for every request hypothesis makes up:
- the answer is 2xx or 4xx, never 5xx;
- ``webhook_received`` fires only for content the sender's key signed (its id,
  timestamp and body exactly), and at most once per webhook-id, however often it
  arrives or whatever was sent before it;
- a mutated copy of a valid request (a bit flipped in its body, id, timestamp or
  signature, headers dropped, duplicated or renamed, another method) is refused,
  unless the mutation left the signed content and signature bytes intact;
- a captured request replayed after the tolerance window is refused with 400.

Everything goes through Django's test client and the URL ``/webhooks/<source>/``
(``tests/urls.py``), so the whole request path runs: URL resolution, CSRF exemption,
the view's pipeline and the inbox insert on the test database.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.test.utils import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookpost import events, signals, signing
from hookpost.models import InboundWebhook
from tests.reliability.conftest import report, size

pytestmark = pytest.mark.django_db

SECRET = signing.generate_secret()
PRIVATE, PUBLIC = signing.generate_ed25519_keypair()
LIMIT = 8192
TOLERANCE = 300
SOURCES = {
    "fuzz": {"secrets": [SECRET], "tolerance": TOLERANCE, "max_body_bytes": LIMIT},
    "fuzzed": {"secrets": [PUBLIC], "tolerance": TOLERANCE, "max_body_bytes": LIMIT},
    "strict": {"secrets": [SECRET], "tolerance": 5},
}
SIGNING_KEY = {"fuzz": SECRET, "fuzzed": PRIVATE}
WEBHOOK = ("webhook-id", "webhook-timestamp", "webhook-signature")
SVIX = ("svix-id", "svix-timestamp", "svix-signature")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT", "PROPFIND"]
CONFIG = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def examples(ci: int, soak: int) -> settings:
    """The shared settings with a bounded number of examples (the CI total stays near 300)."""
    return settings(CONFIG, max_examples=size(ci=ci, soak=soak))


# Examples run, per test, and the statuses answered, for the report.
RUN: Counter[str] = Counter()
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="session", autouse=True)
def _report_examples():
    """Record how many examples the fuzz tests ran, once they all have."""
    yield
    if RUN:
        statuses = dict(sorted(STATUSES.items()))
        report("receiver fuzz", examples=dict(RUN), total=sum(RUN.values()), statuses=statuses)
        print(f"\nreceiver fuzz examples: {dict(RUN)}, statuses answered: {statuses}")


@dataclass
class Handled:
    """Every ``webhook_received`` call, and the content the test's keys signed."""

    calls: list[InboundWebhook] = field(default_factory=list)
    signed: set[tuple[str, int, str]] = field(default_factory=set)

    def __call__(self, sender: object, *, webhook: InboundWebhook, **kwargs: Any) -> None:
        self.calls.append(webhook)

    def start(self, name: str) -> None:
        """A new example: count it, and judge only its own calls (a failure must not leak into the next)."""
        RUN[name] += 1
        self.calls.clear()

    def check(self) -> None:
        """Only signed content was handled, each webhook-id once."""
        for row in self.calls:
            assert (row.webhook_id, int(row.sent_at.timestamp()), row.body) in self.signed
        ids = Counter((row.source, row.webhook_id) for row in self.calls)
        assert [key for key, n in ids.items() if n > 1] == []


@pytest.fixture
def handled():
    seen = Handled()
    signals.webhook_received.connect(seen, weak=False, dispatch_uid="reliability-fuzz")
    try:
        with override_settings(HOOKPOST={**django_settings.HOOKPOST, "RECEIVER_SOURCES": SOURCES}):
            yield seen
    finally:
        signals.webhook_received.disconnect(dispatch_uid="reliability-fuzz")


def send(
    method: str, path: str, body: bytes, headers: dict[str, str], content_type: str = "application/json"
) -> Any:
    # raise_request_exception=False: an exception in the view must show up as the 500 it
    # would be in production, and fail the status property below rather than escape.
    client = Client(raise_request_exception=False)
    response = client.generic(method, path, data=body, content_type=content_type, headers=headers)
    STATUSES[response.status_code] += 1
    return response


def assert_never_5xx(response: Any) -> None:
    assert 200 <= response.status_code < 500, (response.status_code, response.content[:500])
    assert SECRET.encode() not in response.content


def new_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def sign(source: str, msg_id: str, timestamp: int, body: bytes, handled: Handled) -> dict[str, str]:
    headers = signing.sign_headers(msg_id, timestamp, body, [SIGNING_KEY[source]])
    try:
        text = body.decode()
    except UnicodeDecodeError:
        text = ""
    handled.signed.add((msg_id, timestamp, text))
    return headers


# --- strategies -----------------------------------------------------------------------------------

# Header values as a WSGI server hands them over: latin-1 text (UTF-8 bytes arrive as mojibake).
latin1 = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=60)
header_value = st.one_of(
    latin1,
    st.text(st.characters(codec="utf-8"), max_size=30).map(lambda t: t.encode().decode("latin-1")),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.binary(min_size=1, max_size=64).map(lambda b: "v1," + base64.b64encode(b).decode()),
    st.binary(min_size=1, max_size=64).map(lambda b: "v1a," + base64.b64encode(b).decode()),
    st.lists(st.sampled_from(["v1,", "v1a,", "v2,", " ", "=", "AAAA", "x"]), max_size=12).map("".join),
    st.integers(min_value=1, max_value=20_000).map(lambda n: "x" * n),
    st.just(str(int(time.time()))),
    st.sampled_from(["msg_1", "msg_1.2", "msg 1", "whsec_" + "A" * 10, "", " ", ","]),
)
signature_entries = st.tuples(
    st.sampled_from(["v1", "v1a", "v2"]), st.binary(min_size=1, max_size=64).map(base64.b64encode)
).map(lambda t: f"{t[0]},{t[1].decode()}")
header_name = st.one_of(
    st.sampled_from(
        [
            *WEBHOOK,
            *SVIX,
            "Webhook-Id",
            "WEBHOOK-SIGNATURE",
            "webhook_id",
            "webhook-signature-v1",
            "content-type",
            "content-encoding",
            "transfer-encoding",
            "x-forwarded-for",
            "cookie",
            "authorization",
        ]
    ),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,30}", fullmatch=True),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20),
)
extra_headers = st.lists(st.tuples(header_name, header_value), max_size=12)
# All three headers of one naming, with made-up values: gets past the "missing header" check.
complete_headers = st.tuples(
    st.sampled_from([WEBHOOK, SVIX]),
    st.one_of(header_value, st.from_regex(r"msg_[A-Za-z0-9]{1,40}", fullmatch=True)),
    st.one_of(
        header_value, st.integers(min_value=-10, max_value=10).map(lambda d: str(int(time.time()) + d))
    ),
    st.one_of(header_value, st.lists(signature_entries, min_size=1, max_size=4).map(" ".join)),
).map(lambda t: list(zip(t[0], t[1:], strict=True)))
headers_strategy = st.one_of(
    extra_headers, st.tuples(complete_headers, extra_headers).map(lambda t: [*t[0], *t[1]])
)


def fold(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Repeated headers joined with ", ", as a WSGI server folds them (names match as CGI names)."""
    folded: dict[str, tuple[str, str]] = {}
    for name, value in pairs:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            # Set from the body by the client: a test client cannot send a length that lies.
            continue
        if key in folded:
            folded[key] = (folded[key][0], f"{folded[key][1]}, {value}")
        else:
            folded[key] = (name, value)
    return dict(folded.values())


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
event_types = st.one_of(
    st.sampled_from(["library.book.deleted", "library.author.created", "x"]),
    st.text(max_size=40),
    st.integers(),
    st.none(),
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """A Standard Webhooks envelope around arbitrary JSON data, as a sender might encode it."""
    envelope = {"type": draw(event_types), "timestamp": "2025-01-01T00:00:00Z", "data": draw(json_values)}
    return json.dumps(envelope, ensure_ascii=draw(st.booleans())).encode()


def nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "{":
        return ('{"a":' * depth + "1" + closer * depth).encode()
    return (opener * depth + closer * depth).encode()


hostile_bodies = st.one_of(
    st.binary(max_size=LIMIT + 100),
    st.integers(min_value=1, max_value=20_000).map(lambda d: nested(d, "[")),
    st.integers(min_value=1, max_value=20_000).map(lambda d: nested(d, "{")),
    st.integers(min_value=1, max_value=LIMIT).map(lambda n: b"9" * n),
    st.integers(min_value=1, max_value=400).map(lambda n: b'{"type":"a","data":1e' + b"9" * n + b"}"),
    st.sampled_from(
        [
            b"NaN",
            b'{"data": Infinity}',
            b'{"data": -Infinity}',
            b'{"type": "a\\u0000b"}',
            b'{"data": "\\u0000"}',
            b'{"data": "\\ud800"}',
            b'{"type": "library.book.deleted", "data": {"\\u0000": 1}}',
            b"\xef\xbb\xbf{}",
            b"\xff\xfe{\x00}\x00",
            b"",
            b"null",
            b'"string"',
        ]
    ),
)
bodies = st.one_of(envelopes(), hostile_bodies)


# --- random requests ------------------------------------------------------------------------------


@examples(110, 5000)
@given(
    method=st.one_of(
        st.just("POST"),
        st.just("POST"),
        st.sampled_from(METHODS),
        st.from_regex(r"[A-Z]{1,12}", fullmatch=True),
    ),
    path=st.one_of(
        st.just("/webhooks/fuzz/"),
        st.sampled_from(
            ["/webhooks/fuzz/", "/webhooks/fuzzed/", "/webhooks/nobody/", "/fixed/partner/", "/fixed/nobody/"]
        ),
    ),
    pairs=headers_strategy,
    body=bodies,
    content_type=st.one_of(st.just("application/json"), latin1),
)
def test_random_requests_are_answered_2xx_or_4xx_and_never_reach_a_handler(
    handled, method, path, pairs, body, content_type
):
    handled.start("random")
    response = send(method, path, body, fold(pairs), content_type)
    assert_never_5xx(response)
    assert handled.calls == []


# --- mutations of valid requests ------------------------------------------------------------------


def flip(data: bytes, index: int, bit: int) -> bytes:
    index %= len(data)
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


def flip_text(text: str, index: int, bit: int) -> str:
    return flip(text.encode("latin-1"), index, bit).decode("latin-1")


def still_carries(signature_header: str, original: str) -> bool:
    """Whether a (mutated) signature header still holds the original signature's bytes, same version."""
    version, _, encoded = original.partition(",")
    wanted = base64.b64decode(encoded)
    for entry in signature_header.split(" "):
        entry_version, comma, text = entry.partition(",")
        if not comma or entry_version != version:
            continue
        try:
            if base64.b64decode(text, validate=True) == wanted:
                return True
        except ValueError:
            continue
    return False


def acceptable(body: bytes) -> bool:
    """Whether the receiver should take this (authentic) body: UTF-8 JSON with a sane type, if any."""
    try:
        payload = json.loads(body.decode())
    except (UnicodeDecodeError, ValueError):
        return False
    event_type = payload.get("type") if isinstance(payload, dict) else None
    return not isinstance(event_type, str) or (
        len(event_type) <= events.MAX_TYPE_LENGTH and event_type.isprintable()
    )


MUTATIONS = [
    "none",
    "svix names",
    "upper-case names",
    "extra signatures",
    "body bit",
    "id bit",
    "timestamp bit",
    "signature bit",
    "drop header",
    "repeat header",
    "method",
]


@examples(110, 4000)
@given(
    source=st.sampled_from(["fuzz", "fuzzed"]),
    body=envelopes(),
    mutation=st.sampled_from(MUTATIONS),
    data=st.data(),
)
def test_a_mutated_signed_request_is_refused_and_never_burns_the_real_one(
    handled, source, body, mutation, data
):
    handled.start("mutations")
    path = f"/webhooks/{source}/"
    msg_id = new_id()
    stamp = int(time.time())
    valid = sign(source, msg_id, stamp, body, handled)
    headers = dict(valid)
    sent_body, method = body, "POST"
    # Whether the request still carries the signed content and a signature over it.
    authentic = True
    if mutation == "svix names":
        headers = dict(zip(SVIX, valid.values(), strict=True))
    elif mutation == "upper-case names":
        headers = {name.upper(): value for name, value in valid.items()}
    elif mutation == "extra signatures":
        junk = data.draw(st.lists(st.sampled_from(["v1,AAAA", "v2,!!", "v1a,QUJD", "v9,x"]), max_size=3))
        headers["webhook-signature"] = " ".join([*junk, valid["webhook-signature"]])
    elif mutation == "body bit":
        sent_body = flip(body, data.draw(st.integers(0, len(body) - 1)), data.draw(st.integers(0, 7)))
        authentic = False
    elif mutation in ("id bit", "timestamp bit"):
        name = "webhook-id" if mutation == "id bit" else "webhook-timestamp"
        headers[name] = flip_text(valid[name], data.draw(st.integers(0, 100)), data.draw(st.integers(0, 7)))
        authentic = False
    elif mutation == "signature bit":
        value = valid["webhook-signature"]
        headers["webhook-signature"] = flip_text(
            value, data.draw(st.integers(0, len(value) - 1)), data.draw(st.integers(0, 7))
        )
        authentic = still_carries(headers["webhook-signature"], value)
    elif mutation == "drop header":
        del headers[data.draw(st.sampled_from(WEBHOOK))]
        authentic = False
    elif mutation == "repeat header":
        # Folded as a server folds a repeated header. Even for the signature this is refused:
        # "v1,<sig>, v1,<sig>" holds a malformed entry, which hookpost (like the reference
        # verifier) refuses rather than skips.
        name = data.draw(st.sampled_from(WEBHOOK))
        headers[name] = f"{valid[name]}, {valid[name]}"
        authentic = False
    elif mutation == "method":
        method = data.draw(st.sampled_from([m for m in METHODS if m != "POST"]))

    response = send(method, path, sent_body, headers)
    assert_never_5xx(response)
    takes = acceptable(body)
    if method == "HEAD" or method == "OPTIONS":
        assert response.status_code == 200
    elif method != "POST":
        assert response.status_code == 405
    elif authentic and takes:
        assert response.status_code == 200, response.content
        assert response.json() == {"status": "processed"}
    else:
        assert response.status_code == 400, response.content
    first_went_through = response.status_code == 200 and method == "POST"
    assert [c.webhook_id for c in handled.calls if c.webhook_id == msg_id] == (
        [msg_id] if first_went_through else []
    )

    # The real request, after whatever came first: handled once, never blocked by a forgery.
    real = send("POST", path, body, valid)
    assert_never_5xx(real)
    if takes:
        assert real.status_code == 200
        assert real.json() == {"status": "duplicate" if first_went_through else "processed"}
    else:
        assert real.status_code == 400
    assert [c.webhook_id for c in handled.calls if c.webhook_id == msg_id] == ([msg_id] if takes else [])
    handled.check()


@examples(30, 1000)
@given(body=hostile_bodies, svix=st.booleans())
def test_a_signed_hostile_body_is_answered_2xx_or_4xx_and_handled_only_when_accepted(handled, body, svix):
    """Valid signatures over bodies a parser or a database may choke on: huge, deep, NUL, not UTF-8."""
    handled.start("signed hostile bodies")
    msg_id = new_id()
    headers = sign("fuzz", msg_id, int(time.time()), body, handled)
    if svix:
        headers = dict(zip(SVIX, headers.values(), strict=True))
    response = send("POST", "/webhooks/fuzz/", body, headers)
    assert_never_5xx(response)
    went_through = response.status_code == 200
    assert [c.webhook_id for c in handled.calls if c.webhook_id == msg_id] == (
        [msg_id] if went_through else []
    )
    if len(body) > LIMIT:
        assert response.status_code == 413
    handled.check()


webhook_ids = st.one_of(
    st.builds(new_id),
    # What signing allows in an id: printable, no whitespace, no dot; any length.
    st.text(
        st.characters(
            exclude_categories=["Cs", "Cc", "Cf", "Co", "Cn", "Zs", "Zl", "Zp"], exclude_characters="."
        ),
        min_size=1,
        max_size=300,
    ).filter(lambda t: t.isprintable() and not any(c.isspace() for c in t)),
)


@examples(20, 1000)
@given(msg_id=webhook_ids)
def test_any_signable_webhook_id_is_handled_once_or_refused_with_400(handled, msg_id):
    """Ids of every length and alphabet: stored and handled once up to 255 characters, 400 past it."""
    handled.start("webhook ids")
    body = json.dumps({"type": "library.book.deleted", "data": {}}).encode()
    response = send("POST", "/webhooks/fuzz/", body, sign("fuzz", msg_id, int(time.time()), body, handled))
    assert_never_5xx(response)
    if len(msg_id) > 255:
        assert response.status_code == 400
    else:
        # Hypothesis may offer an id twice (all examples share the test's transaction).
        seen = InboundWebhook.objects.filter(source="fuzz", webhook_id=msg_id).count() == 1
        assert response.status_code == 200
        assert response.json()["status"] in ("processed", "duplicate")
        assert seen
        if response.json()["status"] == "processed":
            assert [c.webhook_id for c in handled.calls] == [msg_id]
        else:
            assert handled.calls == []
    handled.check()


# --- replay after the tolerance window ------------------------------------------------------------


def verifier_clock(at: float) -> Any:
    """Freeze the verifier's "now" (``hookpost.signing`` reads ``time.time()``) at ``at``."""
    return mock.patch.object(signing, "time", mock.Mock(time=mock.Mock(return_value=at)))


def test_a_captured_request_is_refused_once_the_tolerance_window_has_passed(handled):
    """Accepted when fresh, a duplicate while the window lasts, refused with 400 after it."""
    tolerance = SOURCES["strict"]["tolerance"]
    body = json.dumps({"type": "library.book.deleted", "data": {"pk": 1}}).encode()
    captured_at = int(time.time())
    msg_id = new_id()
    headers = sign("fuzz", msg_id, captured_at, body, handled)

    with verifier_clock(captured_at):
        first = send("POST", "/webhooks/strict/", body, headers)
    assert (first.status_code, first.json()) == (200, {"status": "processed"})
    with verifier_clock(captured_at + tolerance):
        inside = send("POST", "/webhooks/strict/", body, headers)
    assert (inside.status_code, inside.json()) == (200, {"status": "duplicate"})
    with verifier_clock(captured_at + tolerance + 1):
        after = send("POST", "/webhooks/strict/", body, headers)
    assert (after.status_code, after.json()) == (400, {"error": "timestamp outside the tolerance"})

    # The same capture, replayed late on a receiver that pruned its inbox (or never saw it):
    # only the timestamp check stands between it and a second handling.
    InboundWebhook.objects.filter(webhook_id=msg_id).delete()
    with verifier_clock(captured_at + tolerance + 1):
        pruned = send("POST", "/webhooks/strict/", body, headers)
    assert (pruned.status_code, pruned.json()) == (400, {"error": "timestamp outside the tolerance"})
    assert [c.webhook_id for c in handled.calls] == [msg_id]
    handled.check()


@examples(30, 500)
@given(offset=st.integers(min_value=-(10**6), max_value=10**6), svix=st.booleans())
def test_a_request_is_accepted_exactly_when_its_timestamp_is_within_the_tolerance(handled, offset, svix):
    handled.start("timestamps")
    tolerance = SOURCES["strict"]["tolerance"]
    now = int(time.time())
    body = json.dumps({"type": "library.book.deleted", "data": {"offset": offset}}).encode()
    stamp = max(now + offset, 0)
    headers = sign("fuzz", new_id(), stamp, body, handled)
    if svix:
        headers = dict(zip(SVIX, headers.values(), strict=True))
    with verifier_clock(now):
        response = send("POST", "/webhooks/strict/", body, headers)
    if abs(stamp - now) <= tolerance:
        assert (response.status_code, response.json()) == (200, {"status": "processed"})
    else:
        assert (response.status_code, response.json()) == (400, {"error": "timestamp outside the tolerance"})
    handled.check()
