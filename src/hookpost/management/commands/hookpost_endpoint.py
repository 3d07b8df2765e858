"""``manage.py hookpost_endpoint``: add, list, rotate the secret of, switch on and off, and test endpoints."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, transaction

from hookpost import outbox
from hookpost.conf import hookpost_settings
from hookpost.management.commands._options import argument_type, parse_duration, positive_int, table
from hookpost.models import Delivery, Endpoint

# What a header name may be (an HTTP token, RFC 9110 section 5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

# The command-line spelling of each model field, for validation messages.
_OPTION_OF = {
    "url": "URL",
    "description": "--description",
    "event_types": "--event",
    "headers": "--header",
    "rate_limit": "--rate-limit",
    "max_in_flight": "--max-in-flight",
    "fifo": "--fifo",
}

Output = tuple[dict[str, Any], list[str]]

_id_or_count = argument_type(positive_int)


class Command(BaseCommand):
    """Manage the endpoints webhooks are sent to; secrets are shown once, on add and rotate-secret."""

    help = (
        "Manage webhook endpoints: add, list, rotate-secret, disable, enable, pause, resume, test. "
        "A signing secret is printed once, by add and rotate-secret; nothing else ever shows it. "
        "Example: hookpost_endpoint add https://partner.example.com/hooks --event 'library.*'"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare one subcommand per action; each takes --json and --database."""
        common = CommandParser(add_help=False)
        common.add_argument("--json", action="store_true", help="Print JSON, for scripts.")
        common.add_argument("--database", default="default", help="Database alias (default).")
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        add = actions.add_parser("add", parents=[common], help="Subscribe a URL; prints its secret once.")
        add.add_argument("url", metavar="URL", help="Where to send webhooks (https).")
        add.add_argument(
            "--event",
            dest="events",
            action="append",
            default=[],
            metavar="TYPE",
            help="An event type to receive, '*' wildcards (repeat for more; '*' for everything).",
        )
        add.add_argument("--description", default="", help="What the endpoint is, for people.")
        add.add_argument("--owner", metavar="USERNAME", help="The user the endpoint belongs to.")
        add.add_argument(
            "--header",
            dest="headers",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="A custom header sent with every request (repeat for more).",
        )
        add.add_argument("--fifo", action="store_true", help="Deliver one at a time, in event order.")
        add.add_argument("--rate-limit", type=float, metavar="N", help="At most N requests per second.")
        add.add_argument(
            "--max-in-flight", type=_id_or_count, metavar="N", help="At most N requests at once."
        )

        listing = actions.add_parser(
            "list", parents=[common], help="Endpoints, their health and secret fingerprints."
        )
        listing.add_argument(
            "--status",
            dest="statuses",
            action="append",
            choices=Endpoint.Status.values,
            default=[],
            help="Only endpoints in this status (repeat for more).",
        )

        rotate = actions.add_parser(
            "rotate-secret", parents=[common], help="Make a new signing secret; prints it once."
        )
        rotate.add_argument("endpoint_id", type=_id_or_count, metavar="ID")
        rotate.add_argument(
            "--grace",
            type=argument_type(parse_duration),
            help="How long the old secret keeps signing beside the new one: 24h (the "
            "SECRET_ROTATION_GRACE setting), or 0 for a leaked secret, which stops at once.",
        )

        disable = actions.add_parser(
            "disable",
            parents=[common],
            help="Stop sending and CANCEL its pending deliveries (pause keeps them waiting).",
        )
        disable.add_argument("endpoint_id", type=_id_or_count, metavar="ID")
        disable.add_argument("--reason", default="disabled by an operator", help="Why, for the record.")

        for name, text in (
            ("enable", "Re-enable a disabled (or paused) endpoint; its health starts afresh."),
            ("pause", "Hold its deliveries: they wait, and new events still queue for it."),
            ("resume", "Send the deliveries of a paused endpoint again."),
            ("test", "Queue a hookpost.test event to this endpoint alone; the worker sends it."),
        ):
            actions.add_parser(name, parents=[common], help=text).add_argument(
                "endpoint_id", type=_id_or_count, metavar="ID"
            )

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the chosen action, then print its result as text or JSON."""
        using = options["database"]
        if using not in connections:
            raise CommandError(f"unknown database {using!r}; settings.DATABASES has {', '.join(connections)}")
        action: Callable[[dict[str, Any], str], Output] = {
            "add": self.handle_add,
            "list": self.handle_list,
            "rotate-secret": self.handle_rotate_secret,
            "disable": self.handle_disable,
            "enable": self.handle_enable,
            "pause": self.handle_pause,
            "resume": self.handle_resume,
            "test": self.handle_test,
        }[options["action"]]
        data, lines = action(options, using)
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2, default=_json_default))
        else:
            for line in lines:
                self.stdout.write(line)

    # --- actions ---------------------------------------------------------------------------------

    def handle_add(self, options: dict[str, Any], using: str) -> Output:
        """Validate as the model does, save, and show the first secret once."""
        if not options["events"]:
            raise CommandError("give at least one --event TYPE to subscribe to ('*' for every event type)")
        endpoint = Endpoint(
            url=options["url"],
            description=options["description"],
            event_types=options["events"],
            headers=_headers(options["headers"]),
            fifo=options["fifo"],
            rate_limit=options["rate_limit"],
            max_in_flight=options["max_in_flight"],
            owner=_user(options["owner"], using) if options["owner"] else None,
        )
        try:
            # The owner was looked up on ``using`` already; the secret is made below.
            endpoint.full_clean(exclude=["owner", "secrets"])
        except ValidationError as exc:
            raise CommandError(f"cannot add the endpoint: {_describe(exc)}") from None
        secret = endpoint.add_secret()
        endpoint.save(using=using)
        data = {**_summary(endpoint), "secret": secret}
        lines = [
            f"Added endpoint {endpoint.pk}: {endpoint.display_url}",
            f"  events: {_events(endpoint)}",
            "",
            "Signing secret (shown this once; store it now, only its fingerprint is kept in view):",
            f"  {secret}",
        ]
        return data, lines

    def handle_list(self, options: dict[str, Any], using: str) -> Output:
        """Every endpoint (or those in the given statuses), with health and secret fingerprints only."""
        endpoints = Endpoint.objects.using(using).select_related("owner").order_by("id")
        if options["statuses"]:
            endpoints = endpoints.filter(status__in=options["statuses"])
        summaries = [_summary(endpoint) for endpoint in endpoints]
        rows = [
            [
                str(s["id"]),
                s["status"],
                s["url"],
                ", ".join(s["event_types"]) or "-",
                str(s["health"]["consecutive_failures"]),
                _when(s["health"]["last_success_at"]),
                _when(s["health"]["last_failure_at"]),
                " ".join(x["fingerprint"] for x in s["secrets"] if x["in_force"]) or "-",
            ]
            for s in summaries
        ]
        lines = table(
            ["ID", "STATUS", "URL", "EVENTS", "FAILURES", "LAST SUCCESS", "LAST FAILURE", "SECRETS"], rows
        )
        lines += [f"endpoint {s['id']}: {s['status_reason']}" for s in summaries if s["status_reason"]]
        if not summaries:
            lines = ["No endpoints. Add one with: hookpost_endpoint add URL --event TYPE"]
        return {"endpoints": summaries}, lines

    def handle_rotate_secret(self, options: dict[str, Any], using: str) -> Output:
        """Make a new primary secret; older ones keep signing for the grace period, then stop."""
        grace: dt.timedelta | None = options["grace"]
        if grace is None:
            grace = dt.timedelta(seconds=hookpost_settings.SECRET_ROTATION_GRACE)
        with transaction.atomic(using=using):
            endpoint = _endpoint(options["endpoint_id"], using, lock=True)
            try:
                secret = endpoint.rotate_secret(grace)
            except OverflowError:
                raise CommandError(
                    f"a grace of {grace} ends after the year 9999; give a shorter one"
                ) from None
            endpoint.save(using=using, update_fields=["secrets", "updated_at"])
        [primary, *previous] = endpoint.secret_summaries()
        still = [entry for entry in previous if entry["in_force"]]
        data = {
            "id": endpoint.pk,
            "secret": secret,
            "fingerprint": primary["fingerprint"],
            "grace_seconds": grace.total_seconds(),
            "secrets": endpoint.secret_summaries(),
        }
        lines = [
            f"New signing secret for endpoint {endpoint.pk} (shown this once; store it now):",
            f"  {secret}",
        ]
        lines += [f"Secret {e['fingerprint']} keeps signing until {e['expires_at']}." for e in still]
        if not still:
            lines.append("Earlier secrets stopped signing at once.")
        return data, lines

    def handle_disable(self, options: dict[str, Any], using: str) -> Output:
        """Disable the endpoint and cancel its pending deliveries (they can be replayed later)."""
        with transaction.atomic(using=using):
            endpoint = _endpoint(options["endpoint_id"], using, lock=True)
            if endpoint.status == Endpoint.Status.DISABLED:
                return _unchanged(endpoint, "disabled")
            pending = Delivery.objects.using(using).pending().filter(endpoint_id=endpoint.pk)
            cancelled = pending.count()
            notices = outbox.disable_endpoint(endpoint, options["reason"], using=using)
        for notice in notices:
            notice()
        return {**_summary(endpoint), "cancelled": cancelled}, [
            f"Disabled endpoint {endpoint.pk}; cancelled {cancelled} pending deliveries.",
            f"Re-enable it with: hookpost_endpoint enable {endpoint.pk}",
        ]

    def handle_enable(self, options: dict[str, Any], using: str) -> Output:
        """Make a disabled or paused endpoint active, with fresh health."""
        with transaction.atomic(using=using):
            endpoint = _endpoint(options["endpoint_id"], using, lock=True)
            was = endpoint.status
            if was == Endpoint.Status.ACTIVE:
                return _unchanged(endpoint, "active")
            outbox.resume_endpoint(endpoint, using=using)
        lines = [f"Enabled endpoint {endpoint.pk} (it was {was}); its failure count starts at 0."]
        if was == Endpoint.Status.DISABLED:
            lines.append(
                "Deliveries cancelled when it was disabled stay cancelled; send them again with: "
                f"hookpost_replay --endpoint {endpoint.pk} --status cancelled"
            )
        return _summary(endpoint), lines

    def handle_pause(self, options: dict[str, Any], using: str) -> Output:
        """Hold an active endpoint's deliveries until it is resumed."""
        with transaction.atomic(using=using):
            endpoint = _endpoint(options["endpoint_id"], using, lock=True)
            if endpoint.status == Endpoint.Status.PAUSED:
                return _unchanged(endpoint, "paused")
            if endpoint.status == Endpoint.Status.DISABLED:
                raise CommandError(
                    f"endpoint {endpoint.pk} is disabled, so nothing is sent to it; "
                    f"`hookpost_endpoint enable {endpoint.pk}` first if you want it paused instead"
                )
            outbox.pause_endpoint(endpoint, using=using)
        return _summary(endpoint), [
            f"Paused endpoint {endpoint.pk}: its deliveries wait. "
            f"Resume with: hookpost_endpoint resume {endpoint.pk}"
        ]

    def handle_resume(self, options: dict[str, Any], using: str) -> Output:
        """Send a paused endpoint's deliveries again."""
        with transaction.atomic(using=using):
            endpoint = _endpoint(options["endpoint_id"], using, lock=True)
            if endpoint.status == Endpoint.Status.ACTIVE:
                return _unchanged(endpoint, "active")
            if endpoint.status == Endpoint.Status.DISABLED:
                why = f" ({endpoint.status_reason})" if endpoint.status_reason else ""
                raise CommandError(
                    f"endpoint {endpoint.pk} is disabled, not paused{why}; "
                    f"re-enable it with `hookpost_endpoint enable {endpoint.pk}`"
                )
            outbox.resume_endpoint(endpoint, using=using)
        return _summary(endpoint), [f"Resumed endpoint {endpoint.pk}: its deliveries go out again."]

    def handle_test(self, options: dict[str, Any], using: str) -> Output:
        """Queue a test event to this endpoint alone; the worker sends it and logs the answer."""
        endpoint = _endpoint(options["endpoint_id"], using)
        delivery = outbox.send_test_event(endpoint, using=using)
        data = {"endpoint": endpoint.pk, "delivery": delivery.pk, "event": delivery.event_id}
        lines = [
            f"Queued a {outbox.TEST_EVENT_TYPE} event (webhook-id {delivery.event_id}) as delivery "
            f"{delivery.pk} to endpoint {endpoint.pk}.",
            "hookpost_worker sends it; its attempt log shows what the endpoint answered.",
        ]
        if endpoint.status != Endpoint.Status.ACTIVE:
            lines.append(f"The endpoint is {endpoint.status}: the test waits until it is active again.")
        return data, lines


# --- helpers ---------------------------------------------------------------------------------------


def _endpoint(endpoint_id: int, using: str, *, lock: bool = False) -> Endpoint:
    endpoints = Endpoint.objects.using(using)
    if lock:
        endpoints = endpoints.select_for_update()
    try:
        return endpoints.get(pk=endpoint_id)
    except Endpoint.DoesNotExist:
        raise CommandError(
            f"no endpoint with id {endpoint_id}; `hookpost_endpoint list` shows the endpoints"
        ) from None


def _user(username: str, using: str) -> Any:
    user_model = get_user_model()
    try:
        return user_model._default_manager.db_manager(using).get_by_natural_key(username)
    except user_model.DoesNotExist:
        raise CommandError(
            f"no user with {user_model.USERNAME_FIELD} {username!r}; create the user first "
            "(manage.py createsuperuser) or leave --owner out"
        ) from None


def _headers(specs: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict; messages never repeat a value (it may be a credential)."""
    headers = {}
    for spec in specs:
        name, equals, value = spec.partition("=")
        name = name.strip()
        if not equals:
            raise CommandError("--header needs NAME=VALUE, e.g. --header 'X-Tenant=acme'")
        if not _TOKEN.fullmatch(name):
            raise CommandError(
                f"--header: {name[:64]!r} is not a header name (letters, digits and -, e.g. X-Tenant)"
            )
        if "\r" in value or "\n" in value:
            raise CommandError(f"--header: the value of {name} holds a line break")
        headers[name] = value.strip()
    return headers


def _describe(error: ValidationError) -> str:
    parts = []
    for field, messages in error.message_dict.items():
        label = _OPTION_OF.get(field, field)
        parts.append(f"{label}: {' '.join(messages)}")
    return "; ".join(parts)


def _events(endpoint: Endpoint) -> str:
    return ", ".join(endpoint.event_types) or "(none)"


def _summary(endpoint: Endpoint) -> dict[str, Any]:
    """What anyone may see of an endpoint: secrets as fingerprints, custom headers by name only."""
    return {
        "id": endpoint.pk,
        "url": endpoint.display_url,
        "description": endpoint.description,
        "owner": endpoint.owner.get_username() if endpoint.owner else None,
        "status": endpoint.status,
        "status_reason": endpoint.status_reason,
        "event_types": list(endpoint.event_types),
        "headers": sorted(endpoint.headers),
        "fifo": endpoint.fifo,
        "rate_limit": endpoint.rate_limit,
        "max_in_flight": endpoint.max_in_flight,
        "health": {
            "consecutive_failures": endpoint.consecutive_failures,
            "failing_since": endpoint.failing_since,
            "last_success_at": endpoint.last_success_at,
            "last_failure_at": endpoint.last_failure_at,
            "blocked_until": endpoint.blocked_until,
        },
        "secrets": endpoint.secret_summaries(),
    }


def _unchanged(endpoint: Endpoint, status: str) -> Output:
    return _summary(endpoint), [f"Endpoint {endpoint.pk} is already {status}; nothing changed."]


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__qualname__}")
