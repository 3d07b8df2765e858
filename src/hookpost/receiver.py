"""The receiving edge: a view that verifies webhooks and turns them into ``webhook_received`` signals.

Mount every source at once, or one source at a path of its own::

    from hookpost import receiver

    urlpatterns = [
        path("webhooks/", receiver.urls()),                                   # /webhooks/<source>/
        path("partner-hook/", receiver.WebhookView.as_view(source="partner")),
    ]

and handle events with a plain signal receiver or the :func:`on_webhook` decorator::

    @receiver.on_webhook("library.book.deleted", source="library")
    def forget_book(*, payload, webhook, **kwargs): ...

The view's pipeline is fixed; each step is a method to override (see
:class:`WebhookView`). Its answers: 200 handled (or a duplicate, or an event type
the source ignores), 202 stored for later, 400 bad signature, headers or JSON,
404 unknown source, 405 not POST, 413 body too large, 500 a handler raised (so
the sender retries) or the source is misconfigured. Bodies are JSON
``{"status": …}`` or ``{"error": …}`` with a short reason that tells an
attacker nothing a sender's log would not.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.urls import URLPattern, URLResolver, include, path
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from hookpost import events, inbox, signals, signing
from hookpost.exceptions import PayloadTooLarge, UnknownSource, WebhookRejected
from hookpost.inbox import Outcome
from hookpost.sources import SourceConfig, get_source

__all__ = ["WebhookView", "on_webhook", "urls"]

logger = logging.getLogger("hookpost.receiver")

F = TypeVar("F", bound=Callable[..., Any])

#: Request headers kept on the inbox row (the rest may hold cookies or tokens).
KEPT_HEADERS = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "content-type",
    "user-agent",
)
# Fits the inbox columns: longer values are refused with 400, not failed on with a 500.
_MAX_ID_LENGTH = 255

_REASONS = {
    "timestamp": "timestamp outside the tolerance",
    "signature": "invalid signature",
}
_STATUS_CODES = {
    Outcome.PROCESSED: 200,
    Outcome.DUPLICATE: 200,
    Outcome.IGNORED: 200,
    Outcome.QUEUED: 202,
    Outcome.FAILED: 500,
}


class _Misconfigured(Exception):
    """The receiver's own configuration is unusable: answered 500 and logged, never blamed on the sender."""


class WebhookView(View):
    """Receive Standard Webhooks for one source: verify, dedupe, store, signal, answer.

    The pipeline (:meth:`post`) calls, in order: :meth:`get_source`,
    :meth:`read_body`, :meth:`verify`, :meth:`parse`, :meth:`get_event_type`,
    :meth:`receive` and :meth:`respond`. Override a step to change it; raise
    :class:`~hookpost.exceptions.WebhookRejected` (or a subclass) from any of them
    to refuse the request with its status and reason.
    """

    http_method_names: ClassVar[list[str]] = ["post", "head", "options"]  # type: ignore[misc]
    #: The source this view serves; None reads it from the URL's ``source`` argument.
    source: str | None = None

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Callable[..., HttpResponseBase]:
        """The view function: CSRF-exempt (senders have no token), open under LoginRequiredMiddleware."""
        view = super().as_view(**initkwargs)
        return login_not_required(csrf_exempt(view))

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """Run the pipeline for one delivery."""
        try:
            source = self.get_source(kwargs.get("source") or self.source or "")
            body = self.read_body(request, source)
            message = self.verify(request, body, source)
            text, payload = self.parse(body)
            event_type = self.get_event_type(payload)
            received = self.receive(request, source, message, text, payload, event_type)
        except WebhookRejected as exc:
            return self.reject(request, exc)
        except _Misconfigured as exc:
            logger.error("receiver misconfigured: %s", exc)
            return JsonResponse({"error": "receiver misconfigured"}, status=500)
        return self.respond(received)

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """405 with the allowed methods, as JSON like every other refusal."""
        response = JsonResponse({"error": "method not allowed"}, status=405)
        response["Allow"] = ", ".join(m.upper() for m in self.http_method_names if hasattr(self, m))
        return response

    def head(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """Answer a sender's probe: the URL exists (the source is not checked, to reveal nothing)."""
        return HttpResponse(status=200)

    # -- the steps --

    def get_source(self, name: str) -> SourceConfig:
        """The source named in the URL (or given to ``as_view``); 404 when there is no active one."""
        try:
            source = get_source(name) if name else None
        except ValueError as exc:
            raise _Misconfigured(f"source {name!r}: {exc}") from exc
        if source is None:
            raise UnknownSource("unknown source")
        return source

    def read_body(self, request: HttpRequest, source: SourceConfig) -> bytes:
        """The raw body, refused with 413 past the source's limit (before reading it, when declared)."""
        limit = source.max_body_bytes
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        # Read at most one byte past the limit, whatever the headers claimed.
        body = request.read(limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        return body

    def verify(self, request: HttpRequest, body: bytes, source: SourceConfig) -> signing.VerifiedMessage:
        """Check the signature (``webhook-*`` or ``svix-*`` headers) against any of the source's keys."""
        try:
            message = signing.verify(request.headers, body, source.keys, tolerance=source.tolerance)
        except signing.SignatureVerificationError as exc:
            if exc.code == "keys":
                raise _Misconfigured(f"source {source.name!r}: {exc}") from exc
            logger.warning("webhook for %r rejected: %s", source.name, exc)
            # Header problems are the sender's format, safe to name; the rest stays vague.
            raise WebhookRejected(_REASONS.get(exc.code, str(exc))) from exc
        if len(message.msg_id) > _MAX_ID_LENGTH:
            raise WebhookRejected(f"webhook-id longer than {_MAX_ID_LENGTH} characters")
        return message

    def parse(self, body: bytes) -> tuple[str, Any]:
        """The body as text and decoded JSON; 400 when it is not UTF-8 JSON."""
        try:
            return inbox.decode(body)
        except ValueError as exc:
            raise WebhookRejected("body is not valid UTF-8 JSON") from exc

    def get_event_type(self, payload: Any) -> str:
        """The payload's ``type`` field (Standard Webhooks' envelope); "" when there is none."""
        event_type = payload.get("type") if isinstance(payload, dict) else None
        if not isinstance(event_type, str):
            return ""
        if len(event_type) > events.MAX_TYPE_LENGTH or not event_type.isprintable():
            raise WebhookRejected("invalid event type")
        return event_type

    def receive(
        self,
        request: HttpRequest,
        source: SourceConfig,
        message: signing.VerifiedMessage,
        text: str,
        payload: Any,
        event_type: str,
    ) -> inbox.Received:
        """Store the webhook once and handle it as the source's mode says."""
        headers = {
            name: value
            for name in KEPT_HEADERS
            if (value := request.headers.get(name)) is not None and "\x00" not in value
        }
        return inbox.receive(
            source, message, event_type=event_type, body=text, payload=payload, headers=headers
        )

    def respond(self, received: inbox.Received) -> HttpResponse:
        """The answer: 200 handled, duplicate or ignored; 202 stored for later; 500 a handler raised."""
        if received.outcome is Outcome.FAILED:
            return JsonResponse({"error": "handler failed"}, status=500)
        return JsonResponse({"status": received.outcome.value}, status=_STATUS_CODES[received.outcome])

    def reject(self, request: HttpRequest, exc: WebhookRejected) -> HttpResponse:
        """The answer to a refused request: its status and short reason."""
        return JsonResponse({"error": exc.reason}, status=exc.status)


def urls(
    view: type[WebhookView] = WebhookView, **initkwargs: Any
) -> tuple[Sequence[URLPattern | URLResolver], str | None, str | None]:
    """Return URL patterns serving every source at ``<source>/``; mount them under any prefix.

    The pattern is named ``hookpost_receiver:receive``:
    ``reverse("hookpost_receiver:receive", kwargs={"source": "library"})``.
    """
    patterns: list[URLPattern | URLResolver] = [
        path("<slug:source>/", view.as_view(**initkwargs), name="receive"),
    ]
    return include((patterns, "hookpost_receiver"))


def on_webhook(*patterns: str, source: str | None = None) -> Callable[[F], F]:
    """Decorate a function to be called for received webhooks whose type matches any of ``patterns``.

    ``*`` in a pattern matches any run of characters; ``source`` limits it to one source.
    The function is called with keyword arguments ``source``, ``event_type``, ``payload``
    and ``webhook`` (accept ``**kwargs`` for more to come), inside the handling transaction:
    raising fails the webhook, as for any ``webhook_received`` receiver. It stays connected
    as long as the function exists, like Django's ``@receiver``.
    """
    if not patterns:
        raise TypeError("on_webhook needs at least one event type pattern, such as 'library.book.*'")
    for pattern in patterns:
        events.validate_type_pattern(pattern)
    only = source

    def decorator(func: F) -> F:
        if inspect.iscoroutinefunction(func):
            raise TypeError(
                f"{func.__qualname__} is async; webhook handlers run inside a database transaction, "
                "so they must be plain functions"
            )

        def handler(sender: object, *, source: str, event_type: str, **kwargs: Any) -> Any:
            if only is not None and source != only:
                return None
            if not any(events.type_matches(p, event_type) for p in patterns):
                return None
            kwargs.pop("signal", None)
            return func(source=source, event_type=event_type, **kwargs)

        # The handler lives as long as the function does (a weak connection to it would
        # otherwise be dropped at once).
        func.__dict__.setdefault("_hookpost_handlers", []).append(handler)
        signals.webhook_received.connect(handler)
        return func

    return decorator
