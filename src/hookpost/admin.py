"""The admin for the receiving side: sources to accept webhooks from, and the received webhooks."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from hookpost import inbox, signing
from hookpost.models import InboundWebhook, Source, validate_verifying_keys

# Django's classes are generic only to type checkers (django-stubs), not at run time.
if TYPE_CHECKING:
    _SourceForm = forms.ModelForm[Source]
    _SourceAdmin = admin.ModelAdmin[Source]
    _InboundAdmin = admin.ModelAdmin[InboundWebhook]
else:
    _SourceForm = forms.ModelForm
    _SourceAdmin = _InboundAdmin = admin.ModelAdmin


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
    list_display = ("name", "description", "mode", "types", "key_fingerprints", "is_active")
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
