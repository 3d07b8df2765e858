"""The API's URLs, to include under a prefix of your choice: ``path("api/", include("hookpost.api.urls"))``.

| path | |
|---|---|
| ``hooks/``, ``hooks/{id}/`` | REST Hooks: ``POST`` subscribes, ``DELETE`` unsubscribes |
| ``endpoints/`` … ``endpoints/{id}/rotate-secret/`` | endpoints, and their actions |
| ``endpoints/{id}/deliveries/`` … ``{id}/attempts/``, ``{id}/replay/`` | deliveries and attempts |
| ``event-types/`` | the event-type catalog |
| ``schema/`` | the OpenAPI 3 schema of these URLs |
"""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, include, path
from rest_framework.routers import SimpleRouter

from hookpost.api import schema, views

app_name = "hookpost-api"

router = SimpleRouter()
router.register("endpoints", views.EndpointViewSet, basename="endpoint")
router.register("hooks", views.HookViewSet, basename="hook")

_deliveries = views.DeliveryViewSet

urlpatterns: list[URLPattern | URLResolver] = [
    path("", include(router.urls)),
    path(
        "endpoints/<int:endpoint_id>/deliveries/",
        _deliveries.as_view({"get": "list"}),
        name="delivery-list",
    ),
    path(
        "endpoints/<int:endpoint_id>/deliveries/<int:pk>/",
        _deliveries.as_view({"get": "retrieve"}),
        name="delivery-detail",
    ),
    path(
        "endpoints/<int:endpoint_id>/deliveries/<int:pk>/attempts/",
        views.AttemptListView.as_view(),
        name="delivery-attempts",
    ),
    path(
        "endpoints/<int:endpoint_id>/deliveries/<int:pk>/replay/",
        _deliveries.as_view({"post": "replay"}),
        name="delivery-replay",
    ),
    path("event-types/", views.EventTypeListView.as_view(), name="event-types"),
    path("schema/", schema.SchemaView.as_view(), name="schema"),
]
