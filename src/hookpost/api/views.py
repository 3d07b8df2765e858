"""The API's views: the user's endpoints, REST Hooks subscriptions, deliveries and attempts, the catalog.

Every lookup goes through :func:`hookpost.api.permissions.endpoints_for`, so an
endpoint the user may not act on answers 404 exactly like one that does not exist.
State changes go through :mod:`hookpost.outbox`, the only writer of delivery state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from django.db import router, transaction
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from hookpost import outbox
from hookpost.api.catalog import event_catalog
from hookpost.api.pagination import DeliveryCursorPagination, PagePagination
from hookpost.api.permissions import Need, endpoints_for
from hookpost.api.schema import document
from hookpost.api.serializers import (
    AttemptSerializer,
    DeliveryDetailSerializer,
    DeliverySerializer,
    EndpointCreatedSerializer,
    EndpointSerializer,
    EventTypeSerializer,
    HookSerializer,
    NewSecretSerializer,
    RotateSecretSerializer,
)
from hookpost.api.throttling import ApiRateThrottle, SendTestRateThrottle
from hookpost.models import Attempt, Delivery, Endpoint

_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

_ENDPOINT_STATUS = OpenApiParameter(
    "status",
    str,
    enum=[value for value, _ in Endpoint.Status.choices],
    description="Only endpoints with this status.",
)
_DELIVERY_STATUS = OpenApiParameter(
    "status",
    str,
    enum=[value for value, _ in Delivery.Status.choices],
    description="Only deliveries with this status.",
)
_NOT_FOUND = OpenApiResponse(description="No such endpoint among those you may see.")


def _owner(request: Request) -> Any:
    """The requesting user, as an endpoint's owner (``IsAuthenticated`` let only users in)."""
    return request.user


def _db() -> str:
    return router.db_for_write(Endpoint)


def _status_filter(request: Request, choices: list[tuple[str, str]]) -> str | None:
    """The ``?status=`` filter, checked against ``choices`` (400 otherwise)."""
    field = serializers.ChoiceField(choices=choices, required=False)
    value = request.query_params.get("status")
    if value is None:
        return None
    try:
        return cast("str", field.run_validation(value))
    except ValidationError as exc:
        raise ValidationError({"status": exc.detail}) from None


def set_status(endpoint: Endpoint, new_status: str, *, using: str) -> None:
    """Move ``endpoint`` to ``new_status`` through the outbox (pausing, resuming or disabling it)."""
    if new_status == endpoint.status:
        return
    if new_status == Endpoint.Status.PAUSED:
        outbox.pause_endpoint(endpoint, using=using)
    elif new_status == Endpoint.Status.ACTIVE:
        outbox.resume_endpoint(endpoint, using=using)
    else:
        notices: list[Callable[[], object]] = outbox.disable_endpoint(
            endpoint, "disabled by its owner", using=using
        )
        for notice in notices:
            transaction.on_commit(notice, using=using)


class HookpostAPIView(GenericAPIView):  # type: ignore[type-arg]
    """What every view of the API shares: JSON in, logged-in users, the ``hookpost`` rate limit.

    The schema class is set here, so the OpenAPI schema is right whatever the
    project's ``DEFAULT_SCHEMA_CLASS``.
    """

    schema = AutoSchema()
    parser_classes = (JSONParser,)
    permission_classes = (IsAuthenticated,)
    throttle_classes = (ApiRateThrottle,)

    def endpoints(self, need: Need) -> QuerySet[Endpoint]:
        """The endpoints the requesting user may act on for ``need``."""
        return endpoints_for(self.request.user, need)


# --- endpoints ---------------------------------------------------------------------------------------


class EndpointViewSet(
    HookpostAPIView,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,  # type: ignore[type-arg]
):
    """Endpoints of the requesting user (of everyone, for staff with the model permission)."""

    serializer_class = EndpointSerializer
    pagination_class = PagePagination
    lookup_value_regex = "[0-9]+"  # anything else is no id: 404 from the URL resolver

    def get_queryset(self) -> QuerySet[Endpoint]:
        """The endpoints this request may reach: viewing, changing or deleting."""
        need: Need = (
            "delete"
            if self.action == "destroy"
            else "view"
            if self.request.method in _SAFE_METHODS
            else "change"
        )
        endpoints = self.endpoints(need)
        if self.action == "list":
            wanted = _status_filter(self.request, Endpoint.Status.choices)
            if wanted is not None:
                endpoints = endpoints.filter(status=wanted)
        return endpoints

    @document(parameters=[_ENDPOINT_STATUS])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """List endpoints, oldest first."""
        return super().list(request, *args, **kwargs)

    @document(responses={200: EndpointSerializer, 404: _NOT_FOUND})
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Show one endpoint: its settings, health, and secrets as fingerprints."""
        return super().retrieve(request, *args, **kwargs)

    @document(request=EndpointSerializer, responses={201: EndpointCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create an endpoint; the answer holds its signing secret, shown this once."""
        serializer = EndpointSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint = Endpoint(owner=_owner(request), **serializer.validated_data)
        secret = endpoint.add_secret()
        endpoint.save(using=_db())
        return Response(
            {**EndpointSerializer(endpoint).data, "secret": secret}, status=status.HTTP_201_CREATED
        )

    @document(responses={200: EndpointSerializer, 404: _NOT_FOUND})
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Replace an endpoint's settings (a status change pauses, resumes or disables it)."""
        return self._update(request, partial=False)

    @document(responses={200: EndpointSerializer, 404: _NOT_FOUND})
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change some of an endpoint's settings (a status change pauses, resumes or disables it)."""
        return self._update(request, partial=True)

    def _update(self, request: Request, *, partial: bool) -> Response:
        using = _db()
        with transaction.atomic(using=using):
            # Locked: the worker keeps health fields on the same row.
            endpoint = get_object_or_404(
                self.endpoints("change").using(using).select_for_update(), pk=self.kwargs["pk"]
            )
            serializer = EndpointSerializer(endpoint, data=request.data, partial=partial)
            serializer.is_valid(raise_exception=True)
            new_status = serializer.validated_data.get("status")
            changed = [name for name in serializer.validated_data if name != "status"]
            for name in changed:
                setattr(endpoint, name, serializer.validated_data[name])
            if changed:
                endpoint.save(using=using, update_fields=[*changed, "updated_at"])
            if new_status is not None:
                set_status(endpoint, new_status, using=using)
        return Response(EndpointSerializer(endpoint).data)

    @document(responses={204: None, 404: _NOT_FOUND})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Delete an endpoint with its deliveries and attempt log."""
        self.get_object().delete(using=_db())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @document(request=None, responses={200: EndpointSerializer, 404: _NOT_FOUND})
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str) -> Response:
        """Pause: deliveries wait (new events still queue) until the endpoint is resumed."""
        return self._move(Endpoint.Status.PAUSED)

    @document(request=None, responses={200: EndpointSerializer, 404: _NOT_FOUND})
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        """Resume a paused endpoint, or re-enable a disabled one (its health starts afresh)."""
        return self._move(Endpoint.Status.ACTIVE)

    def _move(self, new_status: str) -> Response:
        using = _db()
        with transaction.atomic(using=using):
            endpoint = get_object_or_404(
                self.endpoints("change").using(using).select_for_update(), pk=self.kwargs["pk"]
            )
            set_status(endpoint, new_status, using=using)
        return Response(EndpointSerializer(endpoint).data)

    @document(request=RotateSecretSerializer, responses={200: NewSecretSerializer, 404: _NOT_FOUND})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str) -> Response:
        """Make a new primary secret, shown this once; the old ones sign alongside for the grace period."""
        serializer = RotateSecretSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        using = _db()
        with transaction.atomic(using=using):
            endpoint = get_object_or_404(self.endpoints("change").using(using).select_for_update(), pk=pk)
            secret = endpoint.rotate_secret(grace=serializer.grace_period())
            endpoint.save(using=using, update_fields=["secrets", "updated_at"])
        return Response({"secret": secret, "secrets": endpoint.secret_summaries()})

    @document(request=None, responses={202: DeliverySerializer, 404: _NOT_FOUND})
    @action(
        detail=True,
        methods=["post"],
        url_path="test",
        throttle_classes=[ApiRateThrottle, SendTestRateThrottle],
    )
    def send_test(self, request: Request, pk: str) -> Response:
        """Queue a hookpost.test event to this endpoint alone; its attempts show what it answered."""
        endpoint = get_object_or_404(self.endpoints("change"), pk=pk)
        delivery = outbox.send_test_event(endpoint, using=_db())
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)


# --- REST Hooks -------------------------------------------------------------------------------------


class HookViewSet(HookpostAPIView, viewsets.GenericViewSet):  # type: ignore[type-arg]
    """REST Hooks: subscribe a URL to one event type, unsubscribe by id (what Zapier-style clients do)."""

    serializer_class = HookSerializer
    lookup_value_regex = "[0-9]+"

    def get_queryset(self) -> QuerySet[Endpoint]:
        """The endpoints the user may unsubscribe."""
        return self.endpoints("delete")

    @document(responses={201: HookSerializer})
    def create(self, request: Request) -> Response:
        """Subscribe: an endpoint of yours receiving ``event`` at ``target_url``; the secret is shown once."""
        serializer = HookSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        url, event = serializer.validated_data["target_url"], serializer.validated_data["event"]
        endpoint = Endpoint(
            owner=_owner(request), url=url, event_types=[event], description="REST Hooks subscription"
        )
        secret = endpoint.add_secret()
        endpoint.save(using=_db())
        return Response(
            {"id": endpoint.pk, "target_url": url, "event": event, "secret": secret},
            status=status.HTTP_201_CREATED,
        )

    @document(responses={204: None, 404: _NOT_FOUND})
    def destroy(self, request: Request, pk: str) -> Response:
        """Unsubscribe: delete the endpoint."""
        self.get_object().delete(using=_db())
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- deliveries and attempts -----------------------------------------------------------------------


class DeliveryViewSet(HookpostAPIView, viewsets.GenericViewSet):  # type: ignore[type-arg]
    """The deliveries of one endpoint, newest first, with their attempts; replay sends one again."""

    serializer_class = DeliverySerializer
    pagination_class = DeliveryCursorPagination

    def get_queryset(self) -> QuerySet[Delivery]:
        """Deliveries of the endpoint in the URL, if the user may see (or, to replay, change) it."""
        need: Need = "view" if self.request.method in _SAFE_METHODS else "change"
        endpoint = get_object_or_404(self.endpoints(need), pk=self.kwargs["endpoint_id"])
        return Delivery.objects.filter(endpoint=endpoint).select_related("event")

    @document(parameters=[_DELIVERY_STATUS], responses={200: DeliverySerializer(many=True)})
    def list(self, request: Request, endpoint_id: str) -> Response:
        """List deliveries, newest first (``?status=dead`` for the failed ones)."""
        deliveries = self.get_queryset().defer("event__payload")
        wanted = _status_filter(request, Delivery.Status.choices)
        if wanted is not None:
            deliveries = deliveries.filter(status=wanted)
        page = self.paginate_queryset(deliveries)
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)

    @document(responses={200: DeliveryDetailSerializer, 404: _NOT_FOUND})
    def retrieve(self, request: Request, endpoint_id: str, pk: str) -> Response:
        """Show one delivery with the body it sends."""
        return Response(DeliveryDetailSerializer(self.get_object()).data)

    @document(
        request=None,
        responses={
            202: DeliverySerializer,
            404: _NOT_FOUND,
            409: OpenApiResponse(description="The delivery is still pending: it will be sent anyway."),
        },
    )
    @action(detail=True, methods=["post"])
    def replay(self, request: Request, endpoint_id: str, pk: str) -> Response:
        """Send a delivery again: a new delivery of the same event, with the same webhook-id."""
        delivery = self.get_object()
        replayed = outbox.replay([delivery], using=_db())
        if not replayed:
            return Response(
                {"detail": "This delivery is still pending: it will be sent anyway."},
                status=status.HTTP_409_CONFLICT,
            )
        return Response(DeliverySerializer(replayed[0]).data, status=status.HTTP_202_ACCEPTED)


class AttemptListView(HookpostAPIView):
    """The attempt log of one delivery."""

    serializer_class = AttemptSerializer
    pagination_class = PagePagination

    def get_queryset(self) -> QuerySet[Attempt]:
        """Attempts of the delivery in the URL, first attempt first, if the user may see its endpoint."""
        endpoint = get_object_or_404(self.endpoints("view"), pk=self.kwargs["endpoint_id"])
        delivery = get_object_or_404(Delivery.objects.filter(endpoint=endpoint), pk=self.kwargs["pk"])
        return Attempt.objects.filter(delivery=delivery).order_by("number", "id")

    @document(responses={200: AttemptSerializer(many=True), 404: _NOT_FOUND})
    def get(self, request: Request, endpoint_id: str, pk: str) -> Response:
        """List the HTTP requests made for a delivery: status code, duration, response, verdict."""
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(AttemptSerializer(page, many=True).data)


# --- the catalog ----------------------------------------------------------------------------------------


class EventTypeListView(HookpostAPIView):
    """The event-type catalog."""

    serializer_class = EventTypeSerializer
    pagination_class = None

    @document(responses={200: EventTypeSerializer(many=True)})
    def get(self, request: Request) -> Response:
        """Every event type endpoints can subscribe to, with the JSON Schema of its webhook body."""
        return Response(EventTypeSerializer(event_catalog(), many=True).data)
