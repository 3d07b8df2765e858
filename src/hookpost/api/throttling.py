"""Rate limits of the API, per user (per address when anonymous), with defaults a project can override.

Rates come from ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` under the scopes
``"hookpost"`` (every request) and ``"hookpost_test"`` (sending test events, which
makes the worker send real requests); a scope the project does not name gets the
default below, and a rate of ``None`` switches that limit off.
"""

from __future__ import annotations

from typing import Final, cast

from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

#: The rates used when ``DEFAULT_THROTTLE_RATES`` does not name the scope.
DEFAULT_RATES: Final[dict[str, str | None]] = {
    "hookpost": "120/min",
    "hookpost_test": "10/min",
}


class ApiRateThrottle(SimpleRateThrottle):
    """Every request to the API counts against the ``hookpost`` rate."""

    scope = "hookpost"

    def get_rate(self) -> str | None:
        """The scope's rate, read from the settings on each request (so ``override_settings`` works)."""
        rates = api_settings.DEFAULT_THROTTLE_RATES or {}
        if self.scope in rates:
            return cast("str | None", rates[self.scope])
        return DEFAULT_RATES[self.scope]

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        """Count per user, or per client address when anonymous."""
        user = request.user
        ident = user.pk if user is not None and user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class SendTestRateThrottle(ApiRateThrottle):
    """Sending test events counts against the ``hookpost_test`` rate as well."""

    scope = "hookpost_test"
