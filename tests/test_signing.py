"""hookpost.signing: Standard Webhooks conformance, interop with the reference package, bad input.

Pure Python: this module must run without Django (``pytest -p no:django``).
"""

import base64
import hashlib
import hmac
import json
import os
import pickle
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from hookpost.signing import (
    DEFAULT_TOLERANCE,
    HEADER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    SignatureVerificationError,
    SigningKey,
    VerifiedMessage,
    VerifyingKey,
    generate_ed25519_keypair,
    generate_secret,
    hmac_sha256,
    parse_secret,
    parse_verifying_key,
    sign,
    sign_headers,
    signed_content,
    verify,
)
from tests.purity import django_modules_after_importing


def _conformance_dir() -> Path:
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "conformance"
    if beside_repo.is_dir():
        return beside_repo
    from_env = os.environ.get("HOOKPOST_CONFORMANCE_DIR")
    if from_env:
        return Path(from_env)
    pytest.fail(
        f"conformance vectors not found at {beside_repo} and HOOKPOST_CONFORMANCE_DIR is unset",
        pytrace=False,
    )


VECTORS = json.loads((_conformance_dir() / "standard-webhooks-vectors.json").read_text(encoding="utf-8"))[
    "vectors"
]
VALID_VECTORS = [v for v in VECTORS if v["valid"]]

SECRET_BYTES = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(SECRET_BYTES).decode()
MSG_ID = "msg_2Yh0f9LRHsNhcrNI0jXbJkM7"
TIMESTAMP = 1_700_000_000
BODY = b'{"type": "library.book.deleted", "data": {"pk": 7}}'


def _v1_entry(msg_id: str, timestamp: str, body: bytes, key: bytes = SECRET_BYTES) -> str:
    """Compute a v1 entry with the stdlib only, independent of the code under test."""
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _headers(msg_id: str = MSG_ID, timestamp: int = TIMESTAMP, body: bytes = BODY) -> dict[str, object]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": _v1_entry(msg_id, str(timestamp), body),
    }


class TitleCaseHeaders(Mapping[str, str]):
    """Behaves like Django's request.headers: title-cased names, case-insensitive lookup."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = {name.title(): value for name, value in headers.items()}

    def __getitem__(self, name: str) -> str:
        return self._headers[name.title()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)


# --- conformance vectors ---------------------------------------------------------------------


def _vector_key(vector: dict[str, object]) -> str:
    if "secret" in vector:
        return str(vector["secret"])
    return "whpk_" + str(vector["public_key_base64"])


def _vector_headers(vector: dict[str, object]) -> dict[str, str]:
    return {
        HEADER_ID: str(vector["msg_id"]),
        HEADER_TIMESTAMP: str(vector["timestamp"]),
        HEADER_SIGNATURE: str(vector["signature"]),
    }


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_conformance_vector_verifies_as_expected(vector):
    headers = _vector_headers(vector)
    body = vector["body"].encode()
    if vector["valid"]:
        result = verify(headers, body, [_vector_key(vector)], now=vector["timestamp"])
        assert result == VerifiedMessage(
            msg_id=vector["msg_id"],
            timestamp=vector["timestamp"],
            scheme=vector["signature"].split(" ")[-1].split(",")[0],
        )
    else:
        with pytest.raises(SignatureVerificationError, match="no signature matches"):
            verify(headers, body, [_vector_key(vector)], now=vector["timestamp"])


@pytest.mark.parametrize("vector", VALID_VECTORS, ids=[v["name"] for v in VALID_VECTORS])
def test_sign_reproduces_the_conformance_signature(vector):
    secret = vector.get("secret") or "whsk_" + vector["signing_key_base64"]
    produced = sign(vector["msg_id"], vector["timestamp"], vector["body"].encode(), [secret])
    # The multi-entry vector ends with the one valid signature.
    assert produced == vector["signature"].split(" ")[-1]


def test_conformance_includes_both_schemes():
    schemes = {v["signature"].split(" ")[-1].split(",")[0] for v in VALID_VECTORS}
    assert schemes == {"v1", "v1a"}


def test_conformance_ed25519_private_key_derives_the_published_public_key():
    vector = next(v for v in VECTORS if "signing_key_base64" in v)
    signing_key = parse_secret("whsk_" + vector["signing_key_base64"])
    assert signing_key.verifying_key() == parse_verifying_key("whpk_" + vector["public_key_base64"])


# --- interop with the reference package (standardwebhooks) -----------------------------------

msg_ids = st.text(
    alphabet=st.characters(exclude_categories=("C", "Z"), exclude_characters="."),
    min_size=1,
    max_size=40,
)
text_bodies = st.one_of(st.just(""), st.text(), st.sampled_from(['{"név": "Ünal"}', "日本語 ✓"]))
hmac_secrets = st.binary(min_size=1, max_size=64).map(lambda raw: "whsec_" + base64.b64encode(raw).decode())


@given(msg_id=msg_ids, body=text_bodies, secret=hmac_secrets)
def test_reference_package_verifies_our_headers(msg_id, body, secret):
    # The reference verifier reads the real clock, so the message must be fresh.
    headers = sign_headers(msg_id, int(time.time()), body.encode(), [secret])
    # json_parse=False: the reference otherwise json.loads the body after verifying it.
    Webhook(secret).verify(body.encode(), headers, json_parse=False)


@given(
    msg_id=msg_ids,
    timestamp=st.integers(min_value=0, max_value=2**33),
    body=text_bodies,
    secret=hmac_secrets,
)
def test_we_verify_reference_package_signatures(msg_id, timestamp, body, secret):
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body)
    headers = {HEADER_ID: msg_id, HEADER_TIMESTAMP: str(timestamp), HEADER_SIGNATURE: signature}
    result = verify(headers, body.encode(), [secret], now=timestamp)
    assert result == VerifiedMessage(msg_id, timestamp, "v1")


def test_reference_package_rejects_our_headers_for_another_body():
    secret = generate_secret()
    headers = sign_headers(MSG_ID, int(time.time()), b"signed", [secret])
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(secret).verify(b"tampered", headers, json_parse=False)


# --- round trips -----------------------------------------------------------------------------

binary_bodies = st.one_of(st.just(b""), st.binary(), st.text().map(str.encode))
signing_keys = st.one_of(
    st.binary(min_size=1, max_size=64).map(lambda raw: SigningKey("v1", raw)),
    st.binary(min_size=32, max_size=32).map(lambda seed: SigningKey("v1a", seed)),
)


@given(
    msg_id=msg_ids,
    timestamp=st.integers(min_value=0, max_value=2**40),
    body=binary_bodies,
    key=signing_keys,
)
def test_signed_message_round_trips_with_the_verifying_key(msg_id, timestamp, body, key):
    headers = sign_headers(msg_id, timestamp, body, [key])
    result = verify(headers, body, [key.verifying_key()], now=timestamp)
    assert result == VerifiedMessage(msg_id, timestamp, key.scheme)


@given(body=st.binary(min_size=1), key=signing_keys, data=st.data())
def test_changing_one_body_byte_breaks_the_signature(body, key, data):
    headers = sign_headers(MSG_ID, TIMESTAMP, body, [key])
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    tampered = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
    with pytest.raises(SignatureVerificationError, match="no signature matches"):
        verify(headers, tampered, [key.verifying_key()], now=TIMESTAMP)


def test_signed_content_joins_id_timestamp_and_body_with_dots():
    assert signed_content("msg_1", 1614265330, b"a.b") == b"msg_1.1614265330.a.b"


def test_sign_headers_returns_exactly_the_three_standard_headers():
    headers = sign_headers(MSG_ID, TIMESTAMP, BODY, [SECRET])
    assert headers == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": _v1_entry(MSG_ID, str(TIMESTAMP), BODY),
    }


def test_pre_parsed_keys_sign_and_verify_like_strings():
    assert sign(MSG_ID, TIMESTAMP, BODY, [parse_secret(SECRET)]) == sign(MSG_ID, TIMESTAMP, BODY, [SECRET])
    headers = sign_headers(MSG_ID, TIMESTAMP, BODY, [SECRET])
    assert verify(headers, BODY, [parse_verifying_key(SECRET)], now=TIMESTAMP).scheme == "v1"


# --- rotation --------------------------------------------------------------------------------


def test_rotation_header_carries_one_entry_per_secret_separated_by_one_space():
    old, new = generate_secret(), generate_secret()
    header = sign(MSG_ID, TIMESTAMP, BODY, [old, new])
    entries = header.split(" ")
    assert entries == [
        sign(MSG_ID, TIMESTAMP, BODY, [old]),
        sign(MSG_ID, TIMESTAMP, BODY, [new]),
    ]
    assert header == " ".join(entries)


@pytest.mark.parametrize("which", ["old", "new"])
def test_rotation_header_verifies_with_either_secret_alone(which):
    secrets = {"old": generate_secret(), "new": generate_secret()}
    headers = sign_headers(MSG_ID, int(time.time()), BODY, [secrets["old"], secrets["new"]])
    assert verify(headers, BODY, [secrets[which]]).scheme == "v1"
    # The reference splits on single spaces; a stray one would crash it.
    Webhook(secrets[which]).verify(BODY, headers, json_parse=False)


def test_rotation_header_fails_for_an_unrelated_secret():
    headers = sign_headers(MSG_ID, TIMESTAMP, BODY, [generate_secret(), generate_secret()])
    with pytest.raises(SignatureVerificationError, match="no signature matches"):
        verify(headers, BODY, [generate_secret()], now=TIMESTAMP)


def test_mixed_scheme_header_keeps_the_order_of_the_secrets():
    private, _ = generate_ed25519_keypair()
    header = sign(MSG_ID, TIMESTAMP, BODY, [SECRET, private, SECRET])
    assert [entry.split(",")[0] for entry in header.split(" ")] == ["v1", "v1a", "v1"]


# --- malformed input -------------------------------------------------------------------------


def _without(name: str) -> dict[str, object]:
    headers = _headers()
    del headers[name]
    return headers


def _with(**changes: object) -> dict[str, object]:
    headers = _headers()
    headers.update({name.replace("_", "-"): value for name, value in changes.items()})
    return headers


def _resigned_with_timestamp_text(text: str) -> dict[str, object]:
    # Signed over the odd text itself, so only the timestamp format check can reject it.
    return {
        "webhook-id": MSG_ID,
        "webhook-timestamp": text,
        "webhook-signature": _v1_entry(MSG_ID, text, BODY),
    }


def _signed_with_id(msg_id: str) -> dict[str, object]:
    # Signed over the bad id itself, so only the id check can reject it.
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": _v1_entry(msg_id, str(TIMESTAMP), BODY),
    }


GOOD_ENTRY = _v1_entry(MSG_ID, str(TIMESTAMP), BODY)

MALFORMED = {
    "missing id": (_without("webhook-id"), "missing webhook-id"),
    "missing timestamp": (_without("webhook-timestamp"), "missing webhook-timestamp"),
    "missing signature": (_without("webhook-signature"), "missing webhook-signature"),
    "no headers at all": ({}, "missing webhook-id"),
    "empty id": (_with(webhook_id=""), "webhook-id header is empty"),
    "empty timestamp": (_with(webhook_timestamp=""), "webhook-timestamp header is empty"),
    "empty signature": (_with(webhook_signature=""), "webhook-signature header is empty"),
    "fractional timestamp": (_resigned_with_timestamp_text("1700000000.5"), "whole number"),
    "timestamp with .0": (_resigned_with_timestamp_text("1700000000.0"), "whole number"),
    "timestamp 1.5": (_with(webhook_timestamp="1.5"), "whole number"),
    "timestamp with leading space": (_resigned_with_timestamp_text(" 1700000000"), "whole number"),
    "timestamp with trailing space": (_resigned_with_timestamp_text("1700000000 "), "whole number"),
    "timestamp with plus sign": (_resigned_with_timestamp_text("+1700000000"), "whole number"),
    "timestamp with leading zero": (_resigned_with_timestamp_text("01700000000"), "whole number"),
    "timestamp in full-width digits": (
        _resigned_with_timestamp_text("\uff11\uff17" + "\uff10" * 8),
        "whole number",
    ),
    "timestamp in exponent form": (_resigned_with_timestamp_text("1.7e9"), "whole number"),
    "negative timestamp": (_with(webhook_timestamp="-1700000000"), "whole number"),
    "timestamp beyond int() digit limit": (_with(webhook_timestamp="9" * 5000), "whole number"),
    "signature not base64": (_with(webhook_signature="v1,@@@@"), "not valid base64"),
    "signature base64 without padding": (
        _with(webhook_signature=GOOD_ENTRY.rstrip("=")),
        "not valid base64",
    ),
    "signature with non-ASCII": (_with(webhook_signature="v1,é"), "not valid base64"),
    "signature entry without comma": (
        _with(webhook_signature=GOOD_ENTRY.replace(",", "")),
        "no ','",
    ),
    "signature entry with empty signature": (_with(webhook_signature="v1,"), "empty"),
    "signature with leading space": (_with(webhook_signature=" " + GOOD_ENTRY), "space"),
    "signature with trailing space": (_with(webhook_signature=GOOD_ENTRY + " "), "space"),
    "signatures with double space": (
        _with(webhook_signature="v1,AAAA " + " " + GOOD_ENTRY),
        "space",
    ),
    "only unknown signature versions": (_with(webhook_signature="v2,AAAA"), "no v1 or v1a"),
    "msg id with dot": (_signed_with_id("msg.1"), "'.'"),
    "msg id with space": (_signed_with_id("msg 1"), "whitespace"),
    "msg id with tab": (_signed_with_id("msg\t1"), "whitespace"),
    "msg id with control character": (_signed_with_id("msg\x001"), "control character"),
    "msg id with lone surrogate": (_with(webhook_id="msg\udc801"), "control character"),
    "id is bytes": (_with(webhook_id=MSG_ID.encode()), "webhook-id header is not a str"),
    "timestamp is int": (_with(webhook_timestamp=TIMESTAMP), "webhook-timestamp header is not a"),
    "signature is list": (_with(webhook_signature=[GOOD_ENTRY]), "webhook-signature header is not"),
    "conflicting ids in two cases": (
        {**_headers(), "Webhook-Id": "msg_other"},
        "conflicting webhook-id",
    ),
}


@pytest.mark.parametrize(("headers", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_headers_raise_signature_verification_error(headers, reason):
    with pytest.raises(SignatureVerificationError, match=reason):
        verify(headers, BODY, [SECRET], now=TIMESTAMP)


def test_same_header_repeated_in_two_cases_with_one_value_is_accepted():
    headers = {**_headers(), "Webhook-Id": MSG_ID}
    assert verify(headers, BODY, [SECRET], now=TIMESTAMP).msg_id == MSG_ID


BAD_KEYS = {
    "no keys": ([], "no verification keys"),
    "key not base64": (["whsec_not*base64"], "unusable verification key"),
    "empty whsec_ key": (["whsec_"], "unusable verification key"),
    "private whsk_ key": ([generate_ed25519_keypair()[0]], "unusable verification key"),
    "whpk_ key of wrong length": (["whpk_" + base64.b64encode(b"x" * 31).decode()], "unusable"),
    "key is bytes": ([SECRET.encode()], "unusable verification key"),
    "one bad key among good ones": ([SECRET, "whsec_!!"], "unusable verification key"),
}


@pytest.mark.parametrize(("keys", "reason"), BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_unusable_keys_raise_signature_verification_error(keys, reason):
    with pytest.raises(SignatureVerificationError, match=reason):
        verify(_headers(), BODY, keys, now=TIMESTAMP)


def test_verify_rejects_a_bare_string_as_the_key_list():
    with pytest.raises(TypeError, match="wrap a single key in a list"):
        verify(_headers(), BODY, SECRET, now=TIMESTAMP)


def test_verify_rejects_a_negative_tolerance():
    with pytest.raises(ValueError, match="tolerance"):
        verify(_headers(), BODY, [SECRET], tolerance=-1, now=TIMESTAMP)


# --- timestamp tolerance ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "now",
    [
        TIMESTAMP,
        TIMESTAMP + DEFAULT_TOLERANCE,
        TIMESTAMP - DEFAULT_TOLERANCE,
        TIMESTAMP + DEFAULT_TOLERANCE + 0.0,
    ],
)
def test_timestamp_within_tolerance_passes(now):
    assert verify(_headers(), BODY, [SECRET], now=now).timestamp == TIMESTAMP


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (TIMESTAMP + DEFAULT_TOLERANCE + 1, "too old"),
        (TIMESTAMP + DEFAULT_TOLERANCE + 0.5, "too old"),
        (TIMESTAMP - DEFAULT_TOLERANCE - 1, "future"),
        (TIMESTAMP - DEFAULT_TOLERANCE - 0.5, "future"),
    ],
)
def test_timestamp_just_outside_tolerance_fails(now, reason):
    with pytest.raises(SignatureVerificationError, match=reason):
        verify(_headers(), BODY, [SECRET], now=now)


def test_custom_tolerance_is_honoured_in_both_directions():
    assert verify(_headers(), BODY, [SECRET], tolerance=10, now=TIMESTAMP + 10)
    assert verify(_headers(), BODY, [SECRET], tolerance=10, now=TIMESTAMP - 10)
    with pytest.raises(SignatureVerificationError, match="too old"):
        verify(_headers(), BODY, [SECRET], tolerance=10, now=TIMESTAMP + 11)
    with pytest.raises(SignatureVerificationError, match="future"):
        verify(_headers(), BODY, [SECRET], tolerance=10, now=TIMESTAMP - 11)


def test_verify_uses_the_current_time_when_now_is_not_given():
    fresh = int(time.time())
    assert verify(_headers(timestamp=fresh), BODY, [SECRET]).timestamp == fresh
    with pytest.raises(SignatureVerificationError, match="too old"):
        verify(_headers(), BODY, [SECRET])


# --- header lookup ---------------------------------------------------------------------------


def test_header_names_are_matched_case_insensitively_in_a_plain_dict():
    headers = _headers()
    mixed = {
        "Webhook-Id": headers["webhook-id"],
        "WEBHOOK-TIMESTAMP": headers["webhook-timestamp"],
        "wEbHoOk-SiGnAtUrE": headers["webhook-signature"],
    }
    assert verify(mixed, BODY, [SECRET], now=TIMESTAMP).msg_id == MSG_ID


def test_django_style_title_cased_headers_are_accepted():
    headers = TitleCaseHeaders({**_headers(), "content-type": "application/json"})
    assert "Webhook-Signature" in list(headers)
    assert verify(headers, BODY, [SECRET], now=TIMESTAMP).msg_id == MSG_ID


def test_svix_headers_are_accepted_when_webhook_headers_are_absent():
    headers = {name.replace("webhook-", "Svix-"): value for name, value in _headers().items()}
    assert verify(headers, BODY, [SECRET], now=TIMESTAMP) == VerifiedMessage(MSG_ID, TIMESTAMP, "v1")


def test_webhook_headers_are_not_completed_from_svix_headers():
    headers = _without("webhook-signature")
    headers["svix-signature"] = GOOD_ENTRY
    with pytest.raises(SignatureVerificationError, match="missing webhook-signature"):
        verify(headers, BODY, [SECRET], now=TIMESTAMP)


# --- ed25519 (v1a) ---------------------------------------------------------------------------


def test_v1a_signature_verifies_with_the_public_key():
    private, public = generate_ed25519_keypair()
    headers = sign_headers(MSG_ID, TIMESTAMP, BODY, [private])
    assert headers[HEADER_SIGNATURE].startswith("v1a,")
    assert verify(headers, BODY, [public], now=TIMESTAMP) == VerifiedMessage(MSG_ID, TIMESTAMP, "v1a")


def test_v1a_signature_fails_with_another_public_key():
    private, _ = generate_ed25519_keypair()
    _, other_public = generate_ed25519_keypair()
    headers = sign_headers(MSG_ID, TIMESTAMP, BODY, [private])
    with pytest.raises(SignatureVerificationError, match="no signature matches"):
        verify(headers, BODY, [other_public], now=TIMESTAMP)


def test_v1a_entry_is_ignored_when_only_hmac_keys_are_given():
    private, _ = generate_ed25519_keypair()
    headers = sign_headers(MSG_ID, TIMESTAMP, BODY, [private])
    with pytest.raises(SignatureVerificationError, match="no signature matches"):
        verify(headers, BODY, [SECRET], now=TIMESTAMP)


def test_v1_entry_matches_after_an_unverifiable_v1a_entry():
    private, _ = generate_ed25519_keypair()
    headers = sign_headers(MSG_ID, TIMESTAMP, BODY, [private, SECRET])
    assert verify(headers, BODY, [SECRET], now=TIMESTAMP).scheme == "v1"


def test_hmac_signature_does_not_verify_against_an_ed25519_key_of_the_same_bytes():
    seed = bytes(range(32))
    hmac_key = SigningKey("v1", seed)
    ed_public = SigningKey("v1a", seed).verifying_key()
    headers = sign_headers(MSG_ID, TIMESTAMP, BODY, [hmac_key])
    with pytest.raises(SignatureVerificationError, match="no signature matches"):
        verify(headers, BODY, [ed_public], now=TIMESTAMP)


# --- keys and secrets ------------------------------------------------------------------------


def test_generate_secret_is_whsec_with_32_random_bytes():
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert generate_secret() != secret


def test_generated_secret_signs_and_verifies():
    secret = generate_secret()
    headers = sign_headers(MSG_ID, TIMESTAMP, BODY, [secret])
    assert verify(headers, BODY, [secret], now=TIMESTAMP).scheme == "v1"


def test_generated_keypair_holds_seed_and_public_key():
    private, public = generate_ed25519_keypair()
    private_raw = base64.b64decode(private.removeprefix("whsk_"), validate=True)
    public_raw = base64.b64decode(public.removeprefix("whpk_"), validate=True)
    assert private.startswith("whsk_")
    assert public.startswith("whpk_")
    assert len(private_raw) == 64
    assert private_raw[32:] == public_raw
    assert parse_secret(private).verifying_key() == parse_verifying_key(public)


def test_whsk_key_may_be_the_seed_alone():
    private, _ = generate_ed25519_keypair()
    seed = base64.b64decode(private.removeprefix("whsk_"))[:32]
    assert parse_secret("whsk_" + base64.b64encode(seed).decode()) == parse_secret(private)


def test_whsk_key_with_a_foreign_public_half_is_rejected():
    seed = base64.b64decode(generate_ed25519_keypair()[0].removeprefix("whsk_"))[:32]
    foreign = base64.b64decode(generate_ed25519_keypair()[1].removeprefix("whpk_"))
    with pytest.raises(ValueError, match="does not belong"):
        parse_secret("whsk_" + base64.b64encode(seed + foreign).decode())


@pytest.mark.parametrize(
    "variant",
    [
        SECRET.removeprefix("whsec_"),
        SECRET.rstrip("="),
        f"  {SECRET}\n",
    ],
    ids=["without prefix", "without padding", "surrounding whitespace"],
)
def test_hmac_secret_variants_parse_to_the_same_key(variant):
    assert parse_secret(variant) == parse_secret(SECRET)
    assert parse_verifying_key(variant) == parse_verifying_key(SECRET)


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("whsec_", "empty"),
        ("", "empty"),
        ("whsec_abc*def", "not valid base64"),
        ("whsec_a", "not valid base64"),
        ("whsk_" + base64.b64encode(b"x" * 48).decode(), "not 48 bytes"),
        ("whpk_" + base64.b64encode(b"x" * 32).decode(), "cannot sign"),
    ],
)
def test_parse_secret_rejects_bad_input_with_a_clear_value_error(secret, reason):
    with pytest.raises(ValueError, match=reason):
        parse_secret(secret)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("whsec_", "empty"),
        ("whpk_" + base64.b64encode(b"x" * 31).decode(), "32 bytes"),
        ("whpk_%%%", "not valid base64"),
        ("whsk_" + base64.b64encode(b"x" * 64).decode(), "private"),
    ],
)
def test_parse_verifying_key_rejects_bad_input_with_a_clear_value_error(key, reason):
    with pytest.raises(ValueError, match=reason):
        parse_verifying_key(key)


def test_parse_error_does_not_echo_the_secret():
    secret = "whsec_c2VjcmV0LXZhbHVl*"
    with pytest.raises(ValueError, match="base64") as excinfo:
        parse_secret(secret)
    assert "c2VjcmV0LXZhbHVl" not in str(excinfo.value)


def test_key_reprs_show_scheme_and_fingerprint_but_not_the_secret():
    private, _ = generate_ed25519_keypair()
    keys = [parse_secret(SECRET), parse_verifying_key(SECRET), parse_secret(private)]
    for key in keys:
        shown = repr(key) + str(key)
        assert f"scheme='{key.scheme}'" in shown
        assert f"fingerprint='{key.fingerprint}'" in shown
        assert repr(key.material) not in shown
        assert base64.b64encode(key.material).decode().rstrip("=") not in shown
    assert SECRET.removeprefix("whsec_").rstrip("=") not in repr(keys[0])


def test_signing_and_verifying_keys_share_a_fingerprint():
    private, public = generate_ed25519_keypair()
    assert parse_secret(private).fingerprint == parse_verifying_key(public).fingerprint
    assert parse_secret(SECRET).fingerprint == parse_verifying_key(SECRET).fingerprint
    assert parse_secret(SECRET).fingerprint != parse_secret(generate_secret()).fingerprint


def test_parsed_keys_survive_pickling():
    private, public = generate_ed25519_keypair()
    for key in (parse_secret(private), parse_verifying_key(public), parse_secret(SECRET)):
        assert pickle.loads(pickle.dumps(key)) == key
    restored = pickle.loads(pickle.dumps(parse_secret(private)))
    headers = sign_headers(MSG_ID, TIMESTAMP, BODY, [restored])
    assert verify(headers, BODY, [public], now=TIMESTAMP).scheme == "v1a"
    # An HMAC key's prepared state is rebuilt too, not lost.
    restored = pickle.loads(pickle.dumps(parse_secret(SECRET)))
    assert sign(MSG_ID, TIMESTAMP, BODY, [restored]) == sign(MSG_ID, TIMESTAMP, BODY, [SECRET])


def test_one_hmac_key_signs_message_after_message_as_a_fresh_key_would():
    # The key's prepared HMAC state is copied for each message, never fed one itself.
    key = parse_secret(SECRET)
    webhook = Webhook(SECRET)
    for body in (BODY, b"", BODY * 40, ("é" * 2600).encode(), BODY):
        content = signed_content(MSG_ID, TIMESTAMP, body)
        expected = "v1," + base64.b64encode(hmac.digest(key.material, content, "sha256")).decode()
        assert sign(MSG_ID, TIMESTAMP, body, [key]) == expected
        sent_at = datetime.fromtimestamp(TIMESTAMP, UTC)
        assert webhook.sign(MSG_ID, sent_at, body.decode()) == expected


@pytest.mark.parametrize(
    ("make_key", "reason"),
    [
        (lambda: SigningKey("v2", b"secret"), "unknown signature scheme"),
        (lambda: SigningKey("v1", b""), "empty"),
        (lambda: SigningKey("v1a", b"short"), "32 bytes"),
        (lambda: VerifyingKey("v1a", b"x" * 33), "32 bytes"),
    ],
)
def test_key_classes_validate_their_material(make_key, reason):
    with pytest.raises(ValueError, match=reason):
        make_key()


# --- sign() argument checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg_id", "reason"),
    [
        ("", "empty"),
        ("msg.1", "'.'"),
        ("msg 1", "whitespace"),
        ("msg\n1", "whitespace"),
        ("msg\u20031", "whitespace"),
        ("msg\x7f1", "control character"),
    ],
)
def test_sign_rejects_invalid_message_ids(msg_id, reason):
    with pytest.raises(ValueError, match=reason):
        sign(msg_id, TIMESTAMP, BODY, [SECRET])


def test_sign_rejects_a_message_id_holding_any_whitespace_python_knows():
    spaces = [char for char in map(chr, range(sys.maxunicode + 1)) if char.isspace()]
    assert len(spaces) > 20
    for char in spaces:
        with pytest.raises(ValueError, match="whitespace"):
            sign(f"msg{char}1", TIMESTAMP, BODY, [SECRET])


@pytest.mark.parametrize(
    ("timestamp", "error"),
    [(-1, ValueError), (True, TypeError), (1.5, TypeError), ("1700000000", TypeError)],
)
def test_sign_rejects_invalid_timestamps(timestamp, error):
    with pytest.raises(error, match="timestamp"):
        sign(MSG_ID, timestamp, BODY, [SECRET])


def test_sign_needs_at_least_one_secret():
    with pytest.raises(ValueError, match="at least one secret"):
        sign(MSG_ID, TIMESTAMP, BODY, [])


def test_sign_rejects_a_bare_string_as_the_secret_list():
    with pytest.raises(TypeError, match="wrap a single secret in a list"):
        sign(MSG_ID, TIMESTAMP, BODY, SECRET)


# --- purity ----------------------------------------------------------------------------------


def test_signing_module_imports_nothing_from_django():
    assert django_modules_after_importing("hookpost.signing") == []


@pytest.mark.parametrize("size", [0, 1, 600, 2046, 2047, 2048, 2049, 4094, 4095, 100_003])
def test_the_gil_holding_hmac_equals_the_standard_one_at_every_chunk_boundary(size):
    key, content = os.urandom(24), os.urandom(size)
    assert hmac_sha256(key, content) == hmac.digest(key, content, "sha256")
