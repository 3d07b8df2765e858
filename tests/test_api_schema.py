"""The REST API against its own OpenAPI schema: schemathesis drives every operation of the running server.

Each operation gets generated inputs (valid and invalid) as a logged-in user over
real HTTP; no answer may be a 5xx, and every documented answer must match its schema.
Path ids are half the time swapped for ids of the user's real endpoint and delivery,
so the operations are exercised on rows that exist, not only answered with 404.
"""

from __future__ import annotations

import hashlib

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.cache import cache
from django.utils import timezone
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from hookpost import outbox
from hookpost.models import Attempt, Delivery, Endpoint

USERNAME, PASSWORD = "fuzzer", "fuzzer-password"


@pytest.fixture
def api_schema(live_server):
    User.objects.create_user(USERNAME, password=PASSWORD)
    cache.clear()
    return schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json")


def real_rows() -> tuple[int, int]:
    """The fuzzing user's endpoint and one of its finished deliveries, made again if a case deleted them."""
    user = User.objects.get(username=USERNAME)
    endpoint = Endpoint.objects.filter(owner=user).order_by("id").first()
    if endpoint is None:
        endpoint = Endpoint.objects.create(owner=user, url="https://hooks.example.com/in", event_types=["*"])
    delivery = Delivery.objects.filter(endpoint=endpoint).exclude(status=Delivery.Status.PENDING).first()
    if delivery is None:
        delivery = outbox.send_test_event(endpoint)
        Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.DEAD, attempt_count=1)
        Attempt.objects.create(
            delivery=delivery, number=1, started_at=timezone.now(), status_code=503, verdict="gave_up"
        )
    return endpoint.pk, delivery.pk


def aim_at_real_rows(case) -> None:
    """Swap the generated path ids for real ones in half the cases, chosen by the ids themselves.

    Deterministic in the generated input, as Hypothesis requires for replaying a failure.
    """
    params = case.path_parameters
    if not params or hashlib.sha256(repr(sorted(params.items())).encode()).digest()[0] % 2:
        return
    endpoint_id, delivery_id = real_rows()
    if "endpoint_id" in params:
        params.update(endpoint_id=endpoint_id, id=delivery_id)
    else:
        params["id"] = endpoint_id


# Per operation: examples of valid input, then of invalid input (wrong types, missing fields…).
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}


# Hypothesis drives each operation's strategy here rather than schemathesis' pytest plugin
# (schemathesis.pytest.from_fixture), which reads Node._nodeid, gone in pytest 9.2.
@pytest.mark.django_db(transaction=True)
def test_every_operation_holds_for_generated_input(api_schema, live_server):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 17
    auth = (USERNAME, PASSWORD)
    for operation in operations:
        for mode, examples in EXAMPLES.items():

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
            )
            def exercise(case):
                aim_at_real_rows(case)
                case.call_and_validate(
                    base_url=live_server.url,
                    auth=auth,
                    checks=[not_a_server_error, response_schema_conformance],
                )

            exercise()
