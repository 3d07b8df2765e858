"""Admin for the mirror app (hookpost's own admin shows the received webhooks)."""

from django.contrib import admin

from mirror.models import RemovedBook


@admin.register(RemovedBook)
class RemovedBookAdmin(admin.ModelAdmin):
    list_display = ("book_pk", "title", "deleted_with", "removed_at", "webhook_id")
