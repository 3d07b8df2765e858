"""The REST API (extra ``api``): owner-scoped endpoints, REST Hooks subscriptions, deliveries and the catalog.

Mount it with ``path("api/", include("hookpost.api.urls"))``; it needs Django REST
Framework and drf-spectacular (``pip install django-hookpost[api]``).
"""
