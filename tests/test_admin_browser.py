"""The endpoint admin in a real browser: add an endpoint, see its secret once, test it, see the attempt.

Headless Chromium (Debian's, installed by ``scripts/ensure-chromium``; ``make test`` runs
it) driven by Playwright against pytest-django's live server, delivering to a real
receiver on 127.0.0.1. With ``HOOKPOST_SCREENSHOTS=<dir>`` the screenshots of the
README are written there (``docs/screenshots.py`` does that); otherwise to a temporary
directory, so taking them is tested too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connections

from hookpost import signing
from hookpost.models import Attempt, Delivery, Endpoint
from hookpost.worker import Worker
from library.models import Author
from tests.receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SECRET_RE = re.compile(r"whsec_[A-Za-z0-9+/=]+")


@pytest.fixture(autouse=True)
def orm_beside_playwright(monkeypatch):
    # Playwright's sync API keeps an asyncio loop running in this thread; the test's own
    # ORM calls are synchronous all the same, so Django may allow them here.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def page() -> Iterator:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the admin's browser test needs Debian's Chromium. "
            "Run scripts/ensure-chromium (make test runs it for you)."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.set_default_timeout(20_000)
            yield context.new_page()
        finally:
            # While Playwright's loop runs, Django keeps this thread's connections apart (asgiref
            # stores them per context then): close those here, or they outlive the test database.
            connections.close_all()
            browser.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def screenshots(tmp_path) -> Path:
    target = Path(os.environ.get("HOOKPOST_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


def follow(page, selector: str) -> None:
    """Click what leads to another page and wait for that page to load."""
    with page.expect_navigation(wait_until="load"):
        page.click(selector)


def drain() -> None:
    """Run the worker until nothing is due, in a thread of its own (this one has Playwright's loop)."""

    def run() -> None:
        try:
            Worker(concurrency=4, poll_interval=0.01).run(burst=True)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(run).result(timeout=60)


def test_an_operator_adds_an_endpoint_sees_its_secret_once_tests_it_and_sees_the_attempt(
    live_server, page, receiver, screenshots
):
    User.objects.create_superuser("ops", "ops@example.com", "correct horse")
    # The first request fails, so the attempt log has a retry to show; the rest succeed.
    receiver.script(
        "/hooks", (503, {"content-type": "text/plain"}, "busy, try again"), (200, {}, '{"ok":true}')
    )
    admin = f"{live_server.url}/admin"

    # Log in.
    page.goto(f"{admin}/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "correct horse")
    follow(page, "input[type=submit]")
    assert page.locator("#user-tools").inner_text().upper().startswith("WELCOME")

    # Add an endpoint: a ticked type from the catalog, a typed pattern, retries without delay.
    page.goto(f"{admin}/hookpost/endpoint/add/")
    page.fill("#id_url", receiver.url("/hooks"))
    page.fill("#id_description", "Partner mirror")
    page.check("input[name=event_types_0][value='library.book.deleted']")
    page.fill("textarea[name=event_types_1]", "library.author.*")
    page.click("summary:has-text('Delivery options')")
    page.fill("#id_retry_schedule", "[0, 0, 0]")
    follow(page, "input[name=_continue]")

    # The secret, once.
    secret = page.locator("code.hookpost-secret").inner_text()
    assert SECRET_RE.fullmatch(secret)
    assert page.content().count(secret) == 1
    endpoint = Endpoint.objects.get()
    assert endpoint.signing_secrets() == [secret]
    assert endpoint.event_types == ["library.book.deleted", "library.author.*"]
    fingerprint = signing.parse_secret(secret).fingerprint

    # Continue to the endpoint: fingerprints only, never the secret.
    follow(page, "#hookpost-continue")
    assert page.url.endswith(f"/admin/hookpost/endpoint/{endpoint.pk}/change/")
    html = page.content()
    assert secret not in html and secret.removeprefix("whsec_") not in html and not SECRET_RE.search(html)
    assert f"whsec_…{fingerprint}" in html

    # Send a test event, and follow the message's link to its delivery.
    follow(page, "button[data-action=send_test_event]")
    follow(page, ".messagelist a")
    delivery = Delivery.objects.get()
    assert page.url.endswith(f"/admin/hookpost/delivery/{delivery.pk}/change/")
    assert "Pending" in page.locator(".field-status_badge").inner_text()

    # The worker sends it (503, then 200 at once); reload: the attempts are there.
    drain()
    assert [r.headers["webhook-id"] for r in receiver.received()] == [delivery.event_id] * 2
    page.reload()
    assert "Delivered" in page.locator(".field-status_badge").inner_text()
    rows = page.locator("#attempts-group tbody tr.form-row")
    assert rows.count() == 2
    first, second = rows.nth(0).inner_text(), rows.nth(1).inner_text()
    assert "503" in first and "Will retry" in first and "busy, try again" in first
    assert "200" in second and "Delivered" in second and '{"ok":true}' in second
    assert list(Attempt.objects.order_by("number").values_list("status_code", flat=True)) == [503, 200]
    assert not SECRET_RE.search(page.content())
    page.screenshot(path=str(screenshots / "delivery-attempts.png"), full_page=True)

    # More traffic, then a rotation: the new secret once, the old one in its grace period.
    for name in ("Le Guin", "Butler", "Jemisin"):
        Author.objects.create(name=name)
    drain()
    page.goto(f"{admin}/hookpost/endpoint/{endpoint.pk}/change/")
    follow(page, "button[data-action=rotate_secret]")
    new_secret = page.locator("code.hookpost-secret").inner_text()
    assert SECRET_RE.fullmatch(new_secret) and new_secret != secret
    assert page.content().count(new_secret) == 1
    follow(page, "#hookpost-continue")
    html = page.content()
    assert not SECRET_RE.search(html)
    assert f"whsec_…{signing.parse_secret(new_secret).fingerprint}" in html
    assert "(grace period)" in html
    health = page.locator(".field-health").inner_text()
    assert "80%" in health and "(4/5)" in health and "4 delivered, 0 dead, 0 pending" in health
    page.screenshot(path=str(screenshots / "endpoint-admin.png"), full_page=True)

    # The changelist: health at a glance.
    page.goto(f"{admin}/hookpost/endpoint/")
    row = page.locator("#result_list tbody tr").first.inner_text()
    assert "Active" in row and "80%" in row and "(4/5)" in row
    for name in ("delivery-attempts.png", "endpoint-admin.png"):
        assert (screenshots / name).stat().st_size > 10_000
