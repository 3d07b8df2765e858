"""Turn a delivery into the signed HTTP request that carries it."""

from __future__ import annotations

import datetime as dt
import functools

from django.utils import timezone

import hookpost
from hookpost import signing
from hookpost.models import Endpoint, Event
from hookpost.transports import Request

USER_AGENT = f"django-hookpost/{hookpost.__version__}"
SEQUENCE_HEADER = "webhook-sequence"

# Header names whose values the attempt log must not keep (custom headers often carry
# credentials for the receiving side).
_SECRET_HINTS = ("auth", "token", "secret", "key", "password", "cookie", "session", "signature")


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    """A copy of ``headers`` fit for the attempt log: values of credential-like headers masked."""
    return {name: "[redacted]" if _is_secret(name) else value for name, value in headers.items()}


@functools.lru_cache(maxsize=1024)
def _is_secret(name: str) -> bool:
    # Cached: the worker asks about the same few header names for every request it logs.
    lowered = name.lower()
    return lowered != "webhook-signature" and any(hint in lowered for hint in _SECRET_HINTS)


def build_request(
    event: Event, endpoint: Endpoint, *, now: dt.datetime | None = None, sequence: int | None = None
) -> Request:
    """Return the request that delivers ``event`` to ``endpoint``: the exact payload, signed.

    The body is the payload stored at capture, byte for byte. ``webhook-id`` is
    the event's id, the same on every attempt, so receivers can drop duplicates;
    the timestamp is the time of this attempt; every secret of the endpoint that
    is in force (a rotated one during its grace period too) signs it. Custom
    headers of the endpoint cannot override these.
    """
    now = now or timezone.now()
    body = event.body
    secrets = endpoint.signing_keys(now)
    if not secrets:
        raise ValueError(f"endpoint {endpoint.pk} has no signing secret; rotate one in")
    headers = {
        **endpoint.headers,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        **signing.sign_headers(event.id, int(now.timestamp()), body, secrets),
    }
    if sequence is not None:
        # FIFO endpoints: the delivery's place in the endpoint's order, so receivers can
        # spot a gap or a reordering.
        headers[SEQUENCE_HEADER] = str(sequence)
    return Request(url=endpoint.url, headers=headers, body=body, msg_id=event.id)
