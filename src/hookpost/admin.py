"""The admin: endpoints (secrets shown once, then masked) with their tools and health, the outbox read-only.

The sending side: endpoints are edited here, their signing secret is shown once, on
the page that follows its creation or rotation, and only as fingerprints after that;
events, deliveries and attempts are records, read-only, with replay actions. The
receiving side: sources with write-only keys, and received webhooks with reprocess.
"""

from __future__ import annotations

import datetime as dt
import json
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_permission_codename, get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Exists, JSONField, OuterRef, Q, QuerySet
from django.db.models.functions import Cast
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import formats, timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator
from django.utils.timesince import timesince, timeuntil

from hookpost import events, inbox, outbox, signing
from hookpost.conf import hookpost_settings
from hookpost.models import (
    Attempt,
    Delivery,
    Endpoint,
    Event,
    InboundWebhook,
    Source,
    validate_verifying_keys,
)
from hookpost.registry import registry
from hookpost.stats import EndpointStats, endpoint_stats

# Django's classes are generic only to type checkers (django-stubs), not at run time.
if TYPE_CHECKING:
    _SourceForm = forms.ModelForm[Source]
    _SourceAdmin = admin.ModelAdmin[Source]
    _InboundAdmin = admin.ModelAdmin[InboundWebhook]
    _EndpointForm = forms.ModelForm[Endpoint]
    _EndpointAdmin = admin.ModelAdmin[Endpoint]
    _EventAdmin = admin.ModelAdmin[Event]
    _DeliveryAdmin = admin.ModelAdmin[Delivery]
    _AttemptAdmin = admin.ModelAdmin[Attempt]
    _DeliveryInline = admin.TabularInline[Delivery, Event]
    _AttemptInline = admin.TabularInline[Attempt, Delivery]
    _AnyAdmin = admin.ModelAdmin[Any]
else:
    _SourceForm = _EndpointForm = forms.ModelForm
    _SourceAdmin = _InboundAdmin = _EndpointAdmin = _EventAdmin = admin.ModelAdmin
    _DeliveryAdmin = _AttemptAdmin = _AnyAdmin = admin.ModelAdmin
    _DeliveryInline = _AttemptInline = admin.TabularInline

#: The window of the health figures shown per endpoint.
HEALTH_WINDOW = dt.timedelta(hours=24)

_STATUS_COLOURS = {
    # text, background: readable in the admin's light and dark themes alike.
    "active": ("#1b5e20", "#c8e6c9"),
    "delivered": ("#1b5e20", "#c8e6c9"),
    "paused": ("#6d4c00", "#ffe9a8"),
    "pending": ("#6d4c00", "#ffe9a8"),
    "disabled": ("#8e1b1b", "#f8d0d0"),
    "dead": ("#8e1b1b", "#f8d0d0"),
    "cancelled": ("#424242", "#e0e0e0"),
}


def _badge(value: str, label: str, title: str = "") -> SafeString:
    text, background = _STATUS_COLOURS.get(value, ("#424242", "#e0e0e0"))
    return format_html(
        '<span class="hookpost-badge" title="{}" style="color:{};background:{};padding:1px 8px;'
        'border-radius:9px;font-weight:600;white-space:nowrap">{}</span>',
        title,
        text,
        background,
        label,
    )


def _when(value: dt.datetime | str | None) -> str:
    """A moment as the admin shows dates, or a dash."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return str(formats.date_format(timezone.localtime(value), "DATETIME_FORMAT"))


def _ago(value: dt.datetime | None) -> str:
    """A past moment as time ago, or "never"."""
    if value is None:
        return "never"
    if timezone.now() - value < dt.timedelta(minutes=1):
        return "just now"
    return f"{timesince(value)} ago"


def _admin_link(obj: Any, text: Any) -> SafeString:
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text)


def _pretty_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def _object_pk(payload: str) -> str:
    """The ``data.pk`` of an event's payload, for the columns that show which object it was about."""
    try:
        data = json.loads(payload).get("data")
    except (ValueError, AttributeError):
        return "-"
    if isinstance(data, dict) and "pk" in data:
        return str(data["pk"])
    return "-"


def _on_commit(notices: Sequence[Any], using: str) -> None:
    if notices:
        transaction.on_commit(lambda: [notice() for notice in notices], using=using)


# --- the event-type picker ------------------------------------------------------------------------


class EventTypePicker(forms.MultiWidget):
    """Checkboxes for the registry's event types, and a textarea for other types or ``*`` patterns.

    Its value is one flat list of patterns: the ticked types, then the typed ones.
    """

    template_name = "admin/hookpost/widgets/event_type_picker.html"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        """Build the two parts; the catalog is set per form (:meth:`set_catalog`)."""
        super().__init__(
            (
                forms.CheckboxSelectMultiple(),
                forms.Textarea(attrs={"rows": 3, "cols": 60, "spellcheck": "false", "autocomplete": "off"}),
            ),
            attrs,
        )
        self.catalog: list[str] = []

    def set_catalog(self, event_types: Iterable[str]) -> None:
        """Offer ``event_types`` as checkboxes."""
        self.catalog = list(event_types)
        checkboxes: forms.CheckboxSelectMultiple = self.widgets[0]  # type: ignore[assignment]
        checkboxes.choices = [(t, t) for t in self.catalog]

    def decompress(self, value: Any) -> list[Any]:
        """Split the stored patterns into ticked catalog types and the rest, one per line."""
        patterns = value if isinstance(value, list) else []
        ticked = [p for p in patterns if p in self.catalog]
        typed = [str(p) for p in patterns if p not in self.catalog]
        return [ticked, "\n".join(typed)]

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        """Render the flat list of patterns as ticks and typed lines."""
        return super().get_context(name, self.decompress(value), attrs)

    def value_from_datadict(self, data: Any, files: Any, name: str) -> list[str]:
        """The ticked types, then each typed line (commas separate too)."""
        ticked = self.widgets[0].value_from_datadict(data, files, f"{name}_0") or []
        typed = self.widgets[1].value_from_datadict(data, files, f"{name}_1") or ""
        lines = [part.strip() for line in str(typed).splitlines() for part in line.split(",")]
        return [*ticked, *(line for line in lines if line)]


class EventTypesField(forms.Field):
    """A list of event types or ``*`` patterns, each validated, without repeats."""

    widget = EventTypePicker
    default_error_messages = {
        "required": "Pick at least one event type, or type a pattern such as library.book.* (or * for all).",
    }

    def to_python(self, value: Any) -> list[str]:
        """Strip, drop blanks and repeats, keep the order."""
        if not value:
            return []
        if isinstance(value, str):
            value = [value]
        patterns: list[str] = []
        for pattern in value:
            text = str(pattern).strip()
            if text and text not in patterns:
                patterns.append(text)
        return patterns

    def validate(self, value: Any) -> None:
        """Each pattern must be a valid event type, where ``*`` matches any run of characters."""
        super().validate(value)
        errors = []
        for pattern in value:
            try:
                events.validate_type_pattern(pattern)
            except ValueError as exc:
                errors.append(ValidationError(str(exc)[0].upper() + str(exc)[1:] + "."))
        if errors:
            raise ValidationError(errors)

    def has_changed(self, initial: Any, data: Any) -> bool:
        """Changed when the set of patterns differs (the order they are shown in is the picker's)."""
        return set(self.to_python(initial)) != set(self.to_python(data))


# --- endpoints ------------------------------------------------------------------------------------


class EndpointForm(_EndpointForm):
    """An endpoint's settings; its secrets are not a field: they are made on save and by rotation."""

    url = forms.URLField(
        label="URL",
        max_length=2048,
        assume_scheme="https",
        widget=forms.URLInput(attrs={"size": 80}),
        help_text="Where webhooks are POSTed. https:// (http only with HOOKPOST['ALLOW_HTTP']).",
    )
    event_types = EventTypesField(
        label="Event types",
        help_text="Tick the types to receive, or type patterns: '*' matches any run of characters.",
    )

    class Meta:
        model = Endpoint
        fields = (
            "owner",
            "url",
            "description",
            "event_types",
            "status",
            "headers",
            "rate_limit",
            "fifo",
            "max_in_flight",
            "timeout",
            "retry_schedule",
        )
        labels = {"fifo": "FIFO", "headers": "Custom headers"}
        help_texts = {
            "headers": 'Sent with every request, as a JSON object: {"Authorization": "Bearer …"}. '
            "The attempt log masks credential-like values.",
        }
        widgets = {
            "headers": forms.Textarea(attrs={"rows": 3, "cols": 60, "spellcheck": "false"}),
            "retry_schedule": forms.Textarea(attrs={"rows": 2, "cols": 60, "spellcheck": "false"}),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Offer the registry's catalog of event types (read now: registrations can change)."""
        super().__init__(*args, **kwargs)
        picker = self.fields["event_types"].widget
        if isinstance(picker, EventTypePicker):
            picker.set_catalog(registry.event_types())

    def clean_headers(self) -> dict[str, str]:
        """A blank field means no custom headers: an empty mapping, not NULL."""
        value: dict[str, str] | None = self.cleaned_data.get("headers")
        return value or {}


# Plaintext secrets made while handling a request, until its response shows them: held by
# the request only (never the session, a message or the model), gone with it.
_new_secrets: weakref.WeakKeyDictionary[HttpRequest, list[dict[str, Any]]] = weakref.WeakKeyDictionary()


class ObjectToolsMixin(_AnyAdmin):
    """Buttons on the change page that run one of the admin's actions on that one object.

    Each button POSTs (with the CSRF token) to ``<pk>/run/<action>/``; the action runs
    with the same permission checks as from the changelist, then the change page comes
    back, unless the action answered with a page of its own.
    """

    change_form_template = "admin/hookpost/change_form.html"

    def object_tools(self, request: HttpRequest, obj: Any) -> list[dict[str, Any]]:
        """The buttons and links for ``obj``: ``{"action": name, "label": text}`` or ``{"url", "label"}``."""
        return []

    def get_urls(self) -> list[URLPattern]:
        """The tools' URL, before the admin's catch-all ``<pk>/``."""
        name = f"{self.opts.app_label}_{self.opts.model_name}_run"
        tools = path(
            "<path:object_id>/run/<str:action>/", self.admin_site.admin_view(self.run_tool), name=name
        )
        return [tools, *super().get_urls()]

    def run_tool(self, request: HttpRequest, object_id: str, action: str) -> HttpResponseBase:
        """Run ``action`` on one object, as its change page's button asks."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"No {self.opts.verbose_name} with id {object_id!r}.")
        offered = {tool.get("action") for tool in self.object_tools(request, obj)}
        available = self.get_actions(request)
        if action not in offered or action not in available:
            raise PermissionDenied
        # Tools are this class's own action methods; ``available`` only vouched for the permission.
        response = getattr(type(self), action)(self, request, self.get_queryset(request).filter(pk=obj.pk))
        if isinstance(response, HttpResponseBase):
            return response
        return HttpResponseRedirect(
            reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk])
        )

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        """Add the object's tools to the page, those the user may run."""
        if obj is not None and obj.pk is not None:
            available = self.get_actions(request)
            run = f"admin:{self.opts.app_label}_{self.opts.model_name}_run"
            tools = []
            for tool in self.object_tools(request, obj):
                if "action" in tool:
                    if tool["action"] not in available:
                        continue
                    tool = {**tool, "url": reverse(run, args=[obj.pk, tool["action"]]), "post": True}
                tools.append(tool)
            context["hookpost_tools"] = tools
        return super().render_change_form(request, context, add, change, form_url, obj)


def _stats_of(endpoint: Endpoint) -> EndpointStats | None:
    stats: EndpointStats | None = getattr(endpoint, "_hookpost_stats", None)
    return stats


def _rate(stats: EndpointStats | None) -> SafeString:
    if stats is None or stats.success_rate is None:
        return format_html('<span title="{}">{}</span>', "No requests in the last 24 h", "-")
    rate = stats.success_rate
    colour = "#1b5e20" if rate >= 0.99 else "#6d4c00" if rate >= 0.9 else "#8e1b1b"
    return format_html(
        '<span style="color:{};font-weight:600" title="{} of {} requests got a 2xx in the last 24 h">'
        "{}%</span> ({}/{})",
        colour,
        stats.successful_attempts,
        stats.attempts,
        f"{rate * 100:.1f}".removesuffix(".0"),
        stats.successful_attempts,
        stats.attempts,
    )


@admin.register(Endpoint)
class EndpointAdmin(ObjectToolsMixin, _EndpointAdmin):
    """Endpoints: edited here; the secret shown once; health at a glance; tools to test, rotate, resume."""

    form = EndpointForm
    list_display = (
        "endpoint_url",
        "status_badge",
        "types",
        "success_rate",
        "last_success",
        "last_failure",
        "consecutive_failures",
        "owner",
    )
    list_display_links = ("endpoint_url",)
    list_filter = ("status", "fifo")
    list_select_related = ("owner",)
    search_fields = ("url", "description")
    raw_id_fields = ("owner",)
    readonly_fields = (
        "status_reason",
        "signing_secrets",
        "health",
        "deliveries_link",
        "created_at",
        "updated_at",
    )
    actions = (
        "send_test_event",
        "rotate_secret",
        "rotate_leaked_secret",
        "pause",
        "resume",
        "reenable",
        "replay_failed",
    )

    _OPTIONS: ClassVar[tuple[str, ...]] = (
        "headers",
        "rate_limit",
        "fifo",
        "max_in_flight",
        "timeout",
        "retry_schedule",
    )

    def get_fieldsets(self, request: HttpRequest, obj: Endpoint | None = None) -> Any:
        """The add page asks for settings; the change page also shows secrets, health and dates."""
        options = ("Delivery options", {"fields": self._OPTIONS, "classes": ("collapse",)})
        if obj is None:
            main = {
                "fields": ("url", "description", "event_types", "status", "owner"),
                "description": "A signing secret is made when you save, and shown once, on the next page.",
            }
            return [(None, main), options]
        return [
            (None, {"fields": ("url", "description", "event_types", ("status", "status_reason"), "owner")}),
            (
                "Signing secrets",
                {
                    "fields": ("signing_secrets",),
                    "description": "Shown in full once, when made; here only as fingerprints. "
                    "Rotate with the buttons above.",
                },
            ),
            ("Health", {"fields": ("health", "deliveries_link")}),
            options,
            ("Record", {"fields": ("created_at", "updated_at")}),
        ]

    def get_search_fields(self, request: HttpRequest) -> Any:
        """URL, description, and the owner by the user model's own username field."""
        return (*self.search_fields, f"owner__{get_user_model().USERNAME_FIELD}")

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        """A new endpoint belongs to whoever adds it, unless they pick someone else."""
        return {"owner": request.user.pk, **super().get_changeform_initial_data(request)}

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        """The page's endpoints with their health figures, read in one batch for the whole page."""
        changelist = super().get_changelist_instance(request)
        shown = list(changelist.result_list)
        if shown:
            found = endpoint_stats(
                since=timezone.now() - HEALTH_WINDOW,
                endpoint_ids=[e.pk for e in shown],
                using=changelist.queryset.db,
            )
            for endpoint in shown:
                endpoint._hookpost_stats = found.get(endpoint.pk)
        return changelist

    # -- saving --

    def save_model(self, request: HttpRequest, obj: Endpoint, form: Any, change: bool) -> None:
        """Create with a secret shown once; on change save the form's columns, the status via the outbox."""
        using = obj._state.db or "default"
        if not change:
            secret = obj.add_secret()
            obj.save()
            _new_secrets[request] = [{"endpoint": obj, "secret": secret, "previous": None}]
            return
        # Only the form's columns: a whole-row save would undo what the worker wrote meanwhile
        # (health, FIFO sequence) and what a concurrent rotation did to the secrets.
        columns = [name for name in form.changed_data if name in EndpointForm.Meta.fields]
        obj.save(update_fields=[*columns, "updated_at"])
        if "status" in form.changed_data:
            self._apply_status(obj, using)

    def _apply_status(self, endpoint: Endpoint, using: str) -> None:
        """Make a status picked in the form take effect the way the outbox does it."""
        if endpoint.status == Endpoint.Status.PAUSED:
            outbox.pause_endpoint(endpoint, using=using)
        elif endpoint.status == Endpoint.Status.ACTIVE:
            outbox.resume_endpoint(endpoint, using=using)
        else:
            _on_commit(outbox.disable_endpoint(endpoint, "disabled by an operator", using=using), using)

    def response_add(
        self, request: HttpRequest, obj: Endpoint, post_url_continue: str | None = None
    ) -> HttpResponse:
        """Show the new endpoint's signing secret, once, then go where the admin would have gone."""
        response = super().response_add(request, obj, post_url_continue)
        made = _new_secrets.pop(request, None)
        if not made:
            return response
        next_url = getattr(response, "url", None) or reverse("admin:hookpost_endpoint_change", args=[obj.pk])
        return self._secret_page(request, made, next_url, created=True)

    def _secret_page(
        self, request: HttpRequest, made: list[dict[str, Any]], next_url: str, *, created: bool = False
    ) -> TemplateResponse:
        rows = []
        for item in made:
            endpoint: Endpoint = item["endpoint"]
            rows.append(
                {
                    "endpoint": endpoint,
                    "url": reverse("admin:hookpost_endpoint_change", args=[endpoint.pk]),
                    "secret": item["secret"],
                    "fingerprint": signing.parse_secret(item["secret"]).fingerprint,
                    "previous": item["previous"],
                }
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "New signing secret" if len(rows) == 1 else "New signing secrets",
            "rows": rows,
            "created": created,
            "next_url": next_url,
        }
        response = TemplateResponse(request, "admin/hookpost/endpoint/secret.html", context)
        # The page holds a secret: no cache may keep it, not even the browser's back button.
        add_never_cache_headers(response)
        return response

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        """What deleting shows and needs: an endpoint's deliveries and attempts go with it.

        They are read-only records nobody may delete on their own, so their delete
        permission is not asked for: the permission to delete the endpoint is enough.
        """
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        owned = {str(Delivery._meta.verbose_name), str(Attempt._meta.verbose_name)}
        return deleted, counts, {p for p in perms_needed if str(p) not in owned}, protected

    # -- columns and fields --

    @admin.display(description="URL", ordering="url")
    def endpoint_url(self, obj: Endpoint) -> str:
        """The URL, any password in it masked."""
        return obj.display_url

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Endpoint) -> SafeString:
        """The status as a coloured badge; its reason as the tooltip."""
        return _badge(obj.status, obj.get_status_display(), obj.status_reason)

    @admin.display(description="event types")
    def types(self, obj: Endpoint) -> str:
        """The subscribed types and patterns, shortened."""
        return str(Truncator(", ".join(obj.event_types) or "none").chars(60))

    @admin.display(description="success (24 h)")
    def success_rate(self, obj: Endpoint) -> SafeString:
        """Share of requests answered 2xx over the last 24 hours."""
        return _rate(_stats_of(obj))

    @admin.display(description="last success", ordering="last_success_at")
    def last_success(self, obj: Endpoint) -> str:
        """When a request last got a 2xx, as time ago."""
        return _ago(obj.last_success_at)

    @admin.display(description="last failure", ordering="last_failure_at")
    def last_failure(self, obj: Endpoint) -> str:
        """When a request last failed, as time ago."""
        return _ago(obj.last_failure_at)

    @admin.display(description="signing secrets")
    def signing_secrets(self, obj: Endpoint) -> SafeString:
        """Each secret as fingerprint, dates and state; never the secret."""
        now = timezone.now()
        rows = []
        for summary in obj.secret_summaries(now):
            if summary["primary"]:
                state = "primary"
            elif summary["in_force"]:
                expires = dt.datetime.fromisoformat(summary["expires_at"])
                state = f"still signing for {timeuntil(expires, now)} (grace period)"
            else:
                state = "retired"
            rows.append(
                (
                    summary["fingerprint"] or "?",
                    _when(summary["created_at"]),
                    _when(summary["expires_at"]) if summary["expires_at"] else "-",
                    state,
                )
            )
        body = format_html_join(
            "", "<tr><td><code>whsec_…{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>", rows
        )
        return format_html(
            '<table class="hookpost-secrets"><thead><tr><th>fingerprint</th><th>created</th>'
            "<th>stops signing</th><th>state</th></tr></thead><tbody>{}</tbody></table>",
            body,
        )

    @admin.display(description="last 24 hours")
    def health(self, obj: Endpoint) -> SafeString:
        """Outcomes, success rate and latency over the last day; the failure streak and circuit."""
        stats = endpoint_stats(
            since=timezone.now() - HEALTH_WINDOW, endpoint_ids=[obj.pk], using=obj._state.db or "default"
        )[obj.pk]
        latency = (
            f"p50 {stats.p50_ms:.0f} ms, p95 {stats.p95_ms:.0f} ms"
            if stats.p50_ms is not None and stats.p95_ms is not None
            else "-"
        )
        rows = [
            ("success rate", _rate(stats)),
            (
                "deliveries",
                f"{stats.delivered} delivered, {stats.dead} dead, {stats.pending} pending (now)",
            ),
            ("requests", f"{stats.attempts} ({stats.failed_attempts} failed)"),
            ("latency", latency),
            ("last success", _when(obj.last_success_at)),
            ("last failure", _when(obj.last_failure_at)),
            ("consecutive failures", str(obj.consecutive_failures)),
            ("failing since", _when(obj.failing_since)),
            ("circuit open until", _when(obj.blocked_until)),
        ]
        return format_html(
            '<table class="hookpost-health"><tbody>{}</tbody></table>',
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows),
        )

    @admin.display(description="deliveries")
    def deliveries_link(self, obj: Endpoint) -> SafeString:
        """Links to this endpoint's deliveries: all, and the dead ones."""
        url = reverse("admin:hookpost_delivery_changelist")
        return format_html(
            '<a href="{}?endpoint__id__exact={}">All deliveries</a> · '
            '<a href="{}?endpoint__id__exact={}&amp;status__exact=dead">dead ones</a> · '
            '<a href="{}?delivery__endpoint__id__exact={}">attempt log</a>',
            url,
            obj.pk,
            url,
            obj.pk,
            reverse("admin:hookpost_attempt_changelist"),
            obj.pk,
        )

    # -- tools --

    def object_tools(self, request: HttpRequest, obj: Any) -> list[dict[str, Any]]:
        """Test, rotate, pause or resume, replay, for this endpoint."""
        tools: list[dict[str, Any]] = [{"action": "send_test_event", "label": "Send test event"}]
        tools.append({"action": "rotate_secret", "label": "Rotate secret"})
        tools.append({"action": "rotate_leaked_secret", "label": "Rotate now (leaked)"})
        if obj.status == Endpoint.Status.ACTIVE:
            tools.append({"action": "pause", "label": "Pause"})
        elif obj.status == Endpoint.Status.PAUSED:
            tools.append({"action": "resume", "label": "Resume"})
        else:
            tools.append({"action": "reenable", "label": "Re-enable"})
        tools.append({"action": "replay_failed", "label": "Replay failed"})
        return tools

    def _log(self, request: HttpRequest, endpoints: Iterable[Endpoint], message: str) -> None:
        for endpoint in endpoints:
            self.log_change(request, endpoint, message)

    @admin.action(description="Send a test event", permissions=("change",))
    def send_test_event(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        """Queue a ``hookpost.test`` event to each endpoint; the worker sends it and logs the answer."""
        sent = []
        for endpoint in queryset:
            delivery = outbox.send_test_event(endpoint, using=queryset.db)
            sent.append((endpoint, delivery))
        self._log(request, (e for e, _ in sent), "Sent a test event.")
        waiting = sum(1 for endpoint, _ in sent if endpoint.status != Endpoint.Status.ACTIVE)
        links = format_html_join(", ", "{}", ((_admin_link(d, f"delivery {d.pk}"),) for _, d in sent))
        message = format_html(
            "Test event queued for {} endpoint(s); the worker sends it: {}.", len(sent), links
        )
        if waiting:
            message = format_html(
                "{} {} of them not active: the event waits until resumed.", message, waiting
            )
        self.message_user(request, message, messages.SUCCESS)

    def _rotate(
        self, request: HttpRequest, queryset: QuerySet[Endpoint], grace: dt.timedelta
    ) -> TemplateResponse:
        made: list[dict[str, Any]] = []
        with transaction.atomic(using=queryset.db):
            # No joins (the changelist's select_related): PostgreSQL cannot lock an outer join.
            for endpoint in queryset.select_related(None).select_for_update():
                secret = endpoint.rotate_secret(grace)
                # Only the secrets: the worker may be writing the health columns meanwhile.
                endpoint.save(update_fields=["secrets", "updated_at"])
                previous = _when(timezone.now() + grace) if grace else None
                made.append({"endpoint": endpoint, "secret": secret, "previous": previous})
                fingerprint = signing.parse_secret(secret).fingerprint
                how = "no grace: the old secrets stopped signing" if not grace else "old secrets in grace"
                self.log_change(request, endpoint, f"Rotated the signing secret (new {fingerprint}; {how}).")
        if len(made) == 1:
            next_url = reverse("admin:hookpost_endpoint_change", args=[made[0]["endpoint"].pk])
        else:
            next_url = reverse("admin:hookpost_endpoint_changelist")
        return self._secret_page(request, made, next_url)

    @admin.action(
        description="Rotate the signing secret (the old one signs on for the grace period)",
        permissions=("change",),
    )
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> TemplateResponse:
        """Make a new primary secret; the old ones keep signing for ``SECRET_ROTATION_GRACE``."""
        return self._rotate(request, queryset, dt.timedelta(seconds=hookpost_settings.SECRET_ROTATION_GRACE))

    @admin.action(
        description="Rotate the signing secret now, the old one leaked (no grace)", permissions=("change",)
    )
    def rotate_leaked_secret(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> TemplateResponse:
        """Make a new primary secret; the old ones stop signing at once."""
        return self._rotate(request, queryset, dt.timedelta(0))

    @admin.action(description="Pause: deliveries wait", permissions=("change",))
    def pause(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        """Pause the active endpoints among those selected."""
        self._move(request, queryset, Endpoint.Status.ACTIVE, outbox.pause_endpoint, "paused", "active")

    @admin.action(description="Resume paused endpoints", permissions=("change",))
    def resume(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        """Resume the paused endpoints among those selected: their waiting deliveries go."""
        self._move(request, queryset, Endpoint.Status.PAUSED, outbox.resume_endpoint, "resumed", "paused")

    def _move(
        self,
        request: HttpRequest,
        queryset: QuerySet[Endpoint],
        status: str,
        change: Callable[..., None],
        done_verb: str,
        status_name: str,
    ) -> list[Endpoint]:
        """Apply ``change`` to the selected endpoints that are in ``status``; log and report it."""
        chosen = list(queryset)
        done = [e for e in chosen if e.status == status]
        for endpoint in done:
            change(endpoint, using=queryset.db)
        self._log(request, done, f"{done_verb.capitalize()}.")
        self._report(request, len(done), len(chosen), done_verb, f"not {status_name}")
        return done

    @admin.action(description="Re-enable disabled endpoints", permissions=("change",))
    def reenable(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        """Re-enable the disabled endpoints among those selected, with their health reset."""
        done = self._move(
            request, queryset, Endpoint.Status.DISABLED, outbox.resume_endpoint, "re-enabled", "disabled"
        )
        cancelled = (
            Delivery.objects.using(queryset.db)
            .cancelled()
            .filter(endpoint__in=[e.pk for e in done], replays__isnull=True)
            .count()
            if done
            else 0
        )
        if cancelled:
            self.message_user(
                request,
                f"{cancelled} deliveries were cancelled when they were disabled: "
                "send them with “Replay failed deliveries”.",
                messages.INFO,
            )

    def _report(self, request: HttpRequest, done: int, chosen: int, verb: str, skipped_because: str) -> None:
        skipped = f"; {chosen - done} skipped ({skipped_because})" if chosen > done else ""
        level = messages.SUCCESS if done else messages.WARNING
        self.message_user(request, f"{done} endpoint(s) {verb}{skipped}.", level)

    @admin.action(description="Replay failed deliveries (dead or cancelled)", permissions=("change",))
    def replay_failed(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        """Send each dead or cancelled delivery of these endpoints again (the last of each replay chain)."""
        endpoints = list(queryset)
        failed = Delivery.objects.using(queryset.db).filter(
            endpoint__in=[e.pk for e in endpoints],
            status__in=[Delivery.Status.DEAD, Delivery.Status.CANCELLED],
            # A delivery already replayed is done with: its replay is the one to send again.
            replays__isnull=True,
        )
        new = outbox.replay(failed.only("id", "event_id", "endpoint_id", "status"), using=queryset.db)
        if not new:
            self.message_user(request, "No failed deliveries to replay.", messages.WARNING)
            return
        replayed = {d.endpoint_id for d in new}
        self._log(request, (e for e in endpoints if e.pk in replayed), "Replayed its failed deliveries.")
        waiting = sum(1 for e in endpoints if e.status != Endpoint.Status.ACTIVE)
        note = f" {waiting} endpoint(s) not active: their deliveries wait until resumed." if waiting else ""
        self.message_user(
            request, f"{len(new)} failed deliveries queued again (same webhook-id).{note}", messages.SUCCESS
        )


# --- the outbox's records: read-only ----------------------------------------------------------------


class EventTypeFilter(admin.SimpleListFilter):
    """Filter by event type, from the registry's catalog (no query over the table to list them)."""

    title = "event type"
    parameter_name = "type"
    #: The lookup from the admin's model to the event type.
    field = "type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        """Every registered type, and the test event's."""
        return [(t, t) for t in sorted({*registry.event_types(), outbox.TEST_EVENT_TYPE})]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """Rows of the chosen type."""
        value = self.value()
        return queryset.filter(**{self.field: value}) if value else queryset


class EventEndpointFilter(admin.SimpleListFilter):
    """Events that went (or are going) to one endpoint: a semi-join, so no row is listed twice."""

    title = "endpoint"
    parameter_name = "endpoint"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        """Every endpoint, by URL."""
        return [(str(pk), url) for pk, url in Endpoint.objects.values_list("pk", "url")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """Events with a delivery to the chosen endpoint."""
        value = self.value()
        if not value or not value.isdigit():
            return queryset
        return queryset.filter(Exists(Delivery.objects.filter(event=OuterRef("pk"), endpoint_id=int(value))))


class EventStateFilter(admin.SimpleListFilter):
    """Events by where they are: waiting for fan-out, fanned out, or invalid (never sent)."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        """The three states."""
        return [
            ("awaiting", "awaiting fan-out"),
            ("fanned_out", "fanned out"),
            ("invalid", "invalid: not sent"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """Events in the chosen state."""
        value = self.value()
        if value == "invalid":
            return queryset.exclude(error="")
        if value == "awaiting":
            return queryset.filter(error="", fanned_out_at__isnull=True)
        if value == "fanned_out":
            return queryset.filter(error="", fanned_out_at__isnull=False)
        return queryset


class DeliveryEventTypeFilter(EventTypeFilter):
    """Filter deliveries by their event's type."""

    field = "event__type"


class AttemptEventTypeFilter(EventTypeFilter):
    """Filter attempts by their event's type."""

    field = "delivery__event__type"


class ObjectPkSearchMixin(_AnyAdmin):
    """Search terms ``pk:42`` find events about that object (the payload's ``data.pk``)."""

    #: The lookup from the admin's model to the event payload.
    payload_field = "payload"

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Apply ``pk:`` terms to the payload as JSON; the other terms search as usual."""
        rest = []
        for term in search_term.split():
            key, colon, value = term.partition(":")
            if colon and key.lower() == "pk" and value:
                queryset = self._about_object(queryset, value)
            else:
                rest.append(term)
        return super().get_search_results(request, queryset, " ".join(rest))

    def _about_object(self, queryset: QuerySet[Any], value: str) -> QuerySet[Any]:
        lookup = "_hookpost_payload__data__pk"
        # A pk may be sent as a number or as a string (UUID, slug): try both.
        wanted = Q(**{lookup: value})
        if value.lstrip("-").isdigit():
            wanted |= Q(**{lookup: int(value)})
        found: QuerySet[Any] = queryset.alias(_hookpost_payload=Cast(self.payload_field, JSONField()))
        return found.filter(wanted)


class ReadOnlyMixin(_AnyAdmin):
    """Records: nobody adds, edits or deletes them here; replaying takes the right to change deliveries."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Records are written by hookpost, not by hand."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Records are kept as they were."""
        return False

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> Any:
        """The admin's actions, without "delete selected": records go with ``hookpost_prune``."""
        # ``action_location`` exists from Django 6.1 on (actions on the change form too).
        if action_location is None:
            actions = super().get_actions(request)
        else:
            actions = super().get_actions(request, action_location=action_location)  # type: ignore[call-arg]
        actions.pop("delete_selected", None)
        return actions

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> Any:
        """Refused: records are deleted by ``hookpost_prune`` past the retention period.

        Deleting what owns them (an endpoint, a user) still takes them along, which is
        why the delete permission itself stays as the user's permissions say.
        """
        raise PermissionDenied

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        """The record, without a delete link."""
        return super().change_view(
            request, object_id, form_url, {**(extra_context or {}), "show_delete": False}
        )

    def has_replay_permission(self, request: HttpRequest) -> bool:
        """Replaying creates deliveries: it takes the permission to change deliveries."""
        codename = get_permission_codename("change", Delivery._meta)
        return bool(request.user.has_perm(f"{Delivery._meta.app_label}.{codename}"))

    def _report_replay(self, request: HttpRequest, new: Sequence[Delivery], considered: int) -> None:
        skipped = considered - len(new)
        if new:
            self.message_user(
                request, f"{len(new)} deliveries queued again (same webhook-id).", messages.SUCCESS
            )
        if skipped:
            self.message_user(request, f"{skipped} skipped: still pending, sent anyway.", messages.WARNING)
        if not considered:
            self.message_user(request, "Nothing to replay: no deliveries.", messages.WARNING)


class DeliveryInline(_DeliveryInline):
    """An event's deliveries, one per endpoint (and replay)."""

    model = Delivery
    extra = 0
    can_delete = False
    show_change_link = True
    fields = (
        "endpoint",
        "status",
        "attempt_count",
        "created_at",
        "last_attempt_at",
        "finished_at",
        "replay_of",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        """With each endpoint in the same query."""
        return super().get_queryset(request).select_related("endpoint")

    def has_add_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        """Deliveries come from fan-out and replay."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        """Read-only."""
        return False


@admin.register(Event)
class EventAdmin(ObjectPkSearchMixin, ReadOnlyMixin, ObjectToolsMixin, _EventAdmin):
    """Events, read-only: what happened, its payload and where it went; replay to its endpoints."""

    list_display = ("id", "type", "object_pk", "occurred_at", "state")
    list_filter = (EventTypeFilter, EventStateFilter, EventEndpointFilter)
    search_fields = ("=id", "type")
    search_help_text = "Message id (msg_…), event type, or the object's pk as pk:42."
    date_hierarchy = "occurred_at"
    fields = ("id", "type", "object_pk", "occurred_at", "fanned_out_at", "origin", "error", "pretty_payload")
    readonly_fields = fields
    inlines = (DeliveryInline,)
    actions = ("replay",)

    @admin.display(description="object pk")
    def object_pk(self, obj: Event) -> str:
        """The pk of the object the event is about (``data.pk``)."""
        return _object_pk(obj.payload)

    @admin.display(description="state")
    def state(self, obj: Event) -> str:
        """Invalid (never sent), awaiting fan-out, or fanned out."""
        if obj.error:
            return "invalid: not sent"
        return "fanned out" if obj.fanned_out_at else "awaiting fan-out"

    @admin.display(description="payload")
    def pretty_payload(self, obj: Event) -> SafeString:
        """The request body, indented."""
        return format_html("<pre>{}</pre>", _pretty_json(obj.payload))

    def object_tools(self, request: HttpRequest, obj: Any) -> list[dict[str, Any]]:
        """Replay the event to its endpoints."""
        return [{"action": "replay", "label": "Replay to its endpoints"}]

    @admin.action(description="Replay to all their endpoints", permissions=("replay",))
    def replay(self, request: HttpRequest, queryset: QuerySet[Event]) -> None:
        """Send each event again to every endpoint that had it: once per endpoint, same webhook-id."""
        latest: dict[tuple[str, int], Delivery] = {}
        rows = (
            Delivery.objects.using(queryset.db)
            .filter(event__in=queryset.values("pk"))
            .only("id", "event_id", "endpoint_id", "status")
            .order_by("event_id", "endpoint_id", "id")
        )
        for delivery in rows:
            latest[(delivery.event_id, delivery.endpoint_id)] = delivery
        self._report_replay(request, outbox.replay(latest.values(), using=queryset.db), len(latest))


class AttemptInline(_AttemptInline):
    """A delivery's attempt log: one row per HTTP request."""

    model = Attempt
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("number",)
    fields = ("number", "started_at", "status_code", "duration", "verdict", "error_text", "response_snippet")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Delivery | None = None) -> bool:
        """Attempts come from the worker."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Delivery | None = None) -> bool:
        """Read-only."""
        return False

    @admin.display(description="duration")
    def duration(self, obj: Attempt) -> str:
        """Milliseconds the request took."""
        return f"{obj.duration_ms} ms" if obj.duration_ms is not None else "-"

    @admin.display(description="error")
    def error_text(self, obj: Attempt) -> str:
        """What went wrong without a response (timeout, refused connection…)."""
        return obj.error or "-"

    @admin.display(description="response")
    def response_snippet(self, obj: Attempt) -> SafeString:
        """The start of the response body."""
        return (
            format_html("<code>{}</code>", Truncator(obj.response_body).chars(200))
            if obj.response_body
            else mark_safe("-")
        )


@admin.register(Delivery)
class DeliveryAdmin(ObjectPkSearchMixin, ReadOnlyMixin, ObjectToolsMixin, _DeliveryAdmin):
    """Deliveries, read-only, with their attempt log; replay."""

    payload_field = "event__payload"
    list_display = (
        "id",
        "event_link",
        "event_type",
        "object_pk",
        "endpoint_link",
        "status_badge",
        "attempt_count",
        "created_at",
        "last_attempt_at",
        "next_attempt",
    )
    list_select_related = ("event", "endpoint")
    list_filter = ("status", DeliveryEventTypeFilter, "endpoint")
    search_fields = ("=event__id", "event__type", "endpoint__url")
    search_help_text = "Message id (msg_…), event type, endpoint URL, or the object's pk as pk:42."
    date_hierarchy = "created_at"
    fields = (
        "event_link",
        "event_type",
        "object_pk",
        "endpoint_link",
        "status_badge",
        "attempt_count",
        "sequence",
        "replay_of",
        "created_at",
        "next_attempt",
        "last_attempt_at",
        "finished_at",
        "lease_owner",
        "lease_expires_at",
        "pretty_payload",
    )
    readonly_fields = fields
    inlines = (AttemptInline,)
    actions = ("replay",)

    @admin.display(description="event", ordering="event_id")
    def event_link(self, obj: Delivery) -> SafeString:
        """The event (its webhook-id), linked."""
        return _admin_link(obj.event, obj.event_id)

    @admin.display(description="event type", ordering="event__type")
    def event_type(self, obj: Delivery) -> str:
        """The event's type."""
        return obj.event.type

    @admin.display(description="object pk")
    def object_pk(self, obj: Delivery) -> str:
        """The pk of the object the event is about."""
        return _object_pk(obj.event.payload)

    @admin.display(description="endpoint", ordering="endpoint__url")
    def endpoint_link(self, obj: Delivery) -> SafeString:
        """The endpoint, linked."""
        return _admin_link(obj.endpoint, obj.endpoint.display_url)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Delivery) -> SafeString:
        """The status as a coloured badge."""
        return _badge(obj.status, obj.get_status_display())

    @admin.display(description="next attempt at", ordering="next_attempt_at")
    def next_attempt(self, obj: Delivery) -> str:
        """When it is due; for a paused endpoint's delivery, when it will be once resumed."""
        shown = _when(obj.due_at)
        return f"{shown} (endpoint paused)" if obj.paused else shown

    @admin.display(description="payload")
    def pretty_payload(self, obj: Delivery) -> SafeString:
        """The request body, indented."""
        return format_html("<pre>{}</pre>", _pretty_json(obj.event.payload))

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        """With the event and endpoint in the same query (the change page needs them too)."""
        return super().get_queryset(request).select_related("event", "endpoint")

    def object_tools(self, request: HttpRequest, obj: Any) -> list[dict[str, Any]]:
        """Replay a finished delivery."""
        if obj.status == Delivery.Status.PENDING:
            return []
        return [{"action": "replay", "label": "Replay"}]

    @admin.action(description="Replay: send again (same webhook-id)", permissions=("replay",))
    def replay(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        """Queue each finished delivery again to its endpoint; pending ones are skipped."""
        chosen = list(queryset.only("id", "event_id", "endpoint_id", "status"))
        self._report_replay(request, outbox.replay(chosen, using=queryset.db), len(chosen))


class StatusClassFilter(admin.SimpleListFilter):
    """Filter attempts by the class of their response status, or by having none."""

    title = "response"
    parameter_name = "response"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        """2xx to 5xx, and no response."""
        return [("2", "2xx"), ("3", "3xx"), ("4", "4xx"), ("5", "5xx"), ("none", "no response")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """Attempts whose status is in the chosen class."""
        value = self.value()
        if value == "none":
            return queryset.filter(status_code__isnull=True)
        if value in {"2", "3", "4", "5"}:
            low = int(value) * 100
            return queryset.filter(status_code__gte=low, status_code__lt=low + 100)
        return queryset


@admin.register(Attempt)
class AttemptAdmin(ObjectPkSearchMixin, ReadOnlyMixin, _AttemptAdmin):
    """The attempt log, read-only: one row per HTTP request."""

    payload_field = "delivery__event__payload"
    list_display = (
        "started_at",
        "delivery_link",
        "endpoint",
        "event_type",
        "number",
        "status_code",
        "duration",
        "verdict",
        "error_snippet",
    )
    list_select_related = ("delivery__endpoint", "delivery__event")
    list_filter = ("verdict", StatusClassFilter, AttemptEventTypeFilter, "delivery__endpoint")
    search_fields = ("=delivery__event__id", "delivery__event__type", "delivery__endpoint__url")
    search_help_text = "Message id (msg_…), event type, endpoint URL, or the object's pk as pk:42."
    date_hierarchy = "started_at"
    fields = (
        "delivery_link",
        "endpoint",
        "event_type",
        "number",
        "started_at",
        "duration",
        "status_code",
        "verdict",
        "error",
        "pretty_request_headers",
        "pretty_response_body",
    )
    readonly_fields = fields
    actions = ("replay",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Attempt]:
        """With delivery, event and endpoint in the same query; payloads are not needed here."""
        return (
            super()
            .get_queryset(request)
            .select_related("delivery__endpoint", "delivery__event")
            .defer("delivery__event__payload")
        )

    @admin.display(description="delivery", ordering="delivery_id")
    def delivery_link(self, obj: Attempt) -> SafeString:
        """The delivery, linked."""
        return _admin_link(obj.delivery, f"{obj.delivery_id} ({obj.delivery.event_id})")

    @admin.display(description="endpoint", ordering="delivery__endpoint__url")
    def endpoint(self, obj: Attempt) -> str:
        """The endpoint's URL."""
        return obj.delivery.endpoint.display_url

    @admin.display(description="event type", ordering="delivery__event__type")
    def event_type(self, obj: Attempt) -> str:
        """The event's type."""
        return obj.delivery.event.type

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj: Attempt) -> str:
        """Milliseconds the request took."""
        return f"{obj.duration_ms} ms" if obj.duration_ms is not None else "-"

    @admin.display(description="error")
    def error_snippet(self, obj: Attempt) -> str:
        """The start of the error, if any."""
        return str(Truncator(obj.error).chars(80)) if obj.error else ""

    @admin.display(description="request headers")
    def pretty_request_headers(self, obj: Attempt) -> SafeString:
        """The headers sent (credential-like values were masked when logged)."""
        return format_html("<pre>{}</pre>", json.dumps(obj.request_headers, indent=2, ensure_ascii=False))

    @admin.display(description="response body")
    def pretty_response_body(self, obj: Attempt) -> SafeString:
        """The response body, as far as it was read."""
        return format_html("<pre>{}</pre>", obj.response_body) if obj.response_body else mark_safe("-")

    @admin.action(description="Replay their deliveries (same webhook-id)", permissions=("replay",))
    def replay(self, request: HttpRequest, queryset: QuerySet[Attempt]) -> None:
        """Queue the deliveries of these attempts again, once each; pending ones are skipped."""
        chosen = list(
            Delivery.objects.using(queryset.db)
            .filter(pk__in=queryset.values("delivery_id"))
            .only("id", "event_id", "endpoint_id", "status")
        )
        self._report_replay(request, outbox.replay(chosen, using=queryset.db), len(chosen))


# --- the receiving side -------------------------------------------------------------------------------


class WriteOnlyTextarea(forms.Textarea):
    """A textarea that never renders a value: not the stored one, not the one just typed."""

    def format_value(self, value: Any) -> str | None:
        """Render empty, whatever the value."""
        return None


class SourceForm(_SourceForm):
    """Keys are write-only: the form never shows them, and a blank field keeps the current ones."""

    secrets = forms.CharField(
        widget=WriteOnlyTextarea(attrs={"rows": 3, "autocomplete": "off", "spellcheck": "false"}),
        required=False,
        help_text="One key per line: whsec_… secrets (several while the sender rotates) or whpk_… "
        "ed25519 public keys. Never shown again; leave blank to keep the current keys.",
    )

    class Meta:
        model = Source
        fields = ("name", "description", "secrets", "event_types", "mode", "tolerance", "max_body_bytes")

    def clean_secrets(self) -> str:
        """Validate new keys; blank on an existing source keeps its keys."""
        value: str = self.cleaned_data.get("secrets") or ""
        if not value.strip() and self.instance.pk is not None:
            return self.instance.secrets
        validate_verifying_keys(value)
        return value.strip()

    def clean_event_types(self) -> list[str]:
        """A blank field means every type: an empty list, not NULL."""
        value: list[str] | None = self.cleaned_data.get("event_types")
        return value or []


@admin.register(Source)
class SourceAdmin(_SourceAdmin):
    """Sources: keys shown only as fingerprints."""

    form = SourceForm
    list_display = ("name", "description", "mode", "types", "key_fingerprints", "is_active", "in_use")
    list_filter = ("is_active", "mode")
    search_fields = ("name", "description")
    readonly_fields = ("key_fingerprints", "created_at", "updated_at")
    fields = (
        "name",
        "description",
        "is_active",
        "secrets",
        "key_fingerprints",
        "event_types",
        "mode",
        "tolerance",
        "max_body_bytes",
        "created_at",
        "updated_at",
    )

    @admin.display(description="event types")
    def types(self, obj: Source) -> str:
        """The accepted event type patterns, or "all"."""
        return ", ".join(obj.event_types) or "all"

    @admin.display(description="in use")
    def in_use(self, obj: Source) -> str:
        """Whether requests reach this source, or why not."""
        if obj.is_shadowed:
            return "no: a source of this name in HOOKPOST['RECEIVER_SOURCES'] wins"
        return "yes" if obj.is_active else "no: inactive"

    @admin.display(description="keys")
    def key_fingerprints(self, obj: Source) -> str:
        """Each key as scheme and fingerprint, so keys can be told apart without being shown."""
        found = []
        for line in obj.keys().splitlines():
            if not line.strip():
                continue
            try:
                key = signing.parse_verifying_key(line)
            except ValueError:
                found.append("unusable key")
            else:
                found.append(f"{key.scheme} {key.fingerprint}")
        return ", ".join(found) or "none"


@admin.register(InboundWebhook)
class InboundWebhookAdmin(_InboundAdmin):
    """Received webhooks, read-only, with a "reprocess" action."""

    list_display = ("received_at", "source", "event_type", "webhook_id", "status", "attempts")
    list_filter = ("status", "source", "event_type")
    search_fields = ("=webhook_id", "event_type", "source")
    date_hierarchy = "received_at"
    actions = ("reprocess",)
    fields = (
        "source",
        "webhook_id",
        "event_type",
        "status",
        "attempts",
        "sent_at",
        "received_at",
        "processed_at",
        "next_attempt_at",
        "pretty_body",
        "headers",
        "error",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Webhooks arrive over HTTP, not through the admin."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: InboundWebhook | None = None) -> bool:
        """The inbox is a record: nobody edits it."""
        return False

    @admin.display(description="body")
    def pretty_body(self, obj: InboundWebhook) -> str:
        """The JSON body, indented."""
        try:
            text = json.dumps(json.loads(obj.body), indent=2, ensure_ascii=False)
        except ValueError:
            text = obj.body
        return format_html("<pre>{}</pre>", text)

    @admin.display(description="last error")
    def error(self, obj: InboundWebhook) -> str:
        """The last handler failure's traceback."""
        return format_html("<pre>{}</pre>", obj.last_error) if obj.last_error else "-"

    @admin.action(description="Reprocess: run the handlers again now", permissions=("view",))
    def reprocess(self, request: HttpRequest, queryset: QuerySet[InboundWebhook]) -> None:
        """Hand the selected webhooks to their handlers again, whatever their status."""
        errors: dict[int, Any] = inbox.reprocess(list(queryset.values_list("pk", flat=True)))
        failed = sum(1 for error in errors.values() if error is not None)
        if len(errors) - failed:
            self.message_user(request, f"{len(errors) - failed} webhook(s) processed.", messages.SUCCESS)
        if failed:
            self.message_user(
                request, f"{failed} webhook(s) failed again; see their last error.", messages.ERROR
            )
