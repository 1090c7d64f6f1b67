"""Admin views of the audit log (read-only, with the chain's status and a CSV export)."""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.urls import path
from django.utils import timezone

from chat.audit.chain import verify_chain
from chat.audit.models import AuditEvent
from chat.audit.record import record_log_entries

CSV_FIELDS = (
    "id", "created_at", "action", "actor_id", "actor_name", "ip", "user_agent", "request_id", "conversation_id",
    "message_id", "model", "input_sha256", "output_sha256", "prompt_tokens", "completion_tokens", "latency_ms",
    "status", "verdict", "detail", "prev_hash", "hash",
)
# A spreadsheet runs a cell that starts with one of these as a formula (user agents are the client's).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class _Echo:
    """A file-like object whose write() returns the line, for streaming csv.writer output."""

    def write(self, value: str) -> str:
        return value


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_lines(queryset: QuerySet) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_FIELDS)
    for row in queryset.values_list(*CSV_FIELDS).iterator(chunk_size=2000):
        yield writer.writerow([_cell(value) for value in row])


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "action", "actor_name", "model", "verdict", "status", "latency_ms",
                    "conversation_id")
    list_filter = ("action", "verdict", "model", ("actor", admin.RelatedOnlyFieldListFilter))
    date_hierarchy = "created_at"
    # Digests and UUIDs are looked up whole (an index, or a short scan); names and request ids by part.
    search_fields = ("actor_name", "request_id", "=conversation_id", "=message_id", "=input_sha256",
                     "=output_sha256", "=hash")
    readonly_fields = [field.name for field in AuditEvent._meta.fields]
    fields = readonly_fields
    actions = None
    list_per_page = 100
    show_full_result_count = False  # a COUNT(*) of the whole log on every page is slow once it is large

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        user = request.user
        return user.is_active and user.is_staff and (user.is_superuser or super().has_view_permission(request, obj))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list:
        export = path("export/", self.admin_site.admin_view(self.export_view), name="audit_auditevent_export")
        return [export, *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # Bounded: a full walk takes time in proportion to the log (manage.py verify_audit_chain does it).
        limit = int(getattr(settings, "AUDIT_ADMIN_VERIFY_LIMIT", 10_000))
        extra_context = {**(extra_context or {}), "audit_chain": verify_chain(limit=limit)}
        return super().changelist_view(request, extra_context)

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """The rows the change list shows with the same filters and search, all pages, as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("Those filters are not valid.")
        name = f"audit-events-{timezone.now():%Y%m%d-%H%M%S}.csv"
        response = StreamingHttpResponse(csv_lines(changelist.get_queryset(request)),
                                         content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["X-Content-Type-Options"] = "nosniff"
        return response


class AuditedDeletionsMixin:
    """The admin's bulk "delete selected" bulk-creates its LogEntry rows (no post_save): audit them here."""

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        entries = super().log_deletions(request, queryset)
        if isinstance(entries, list) and len(entries) > 1:
            record_log_entries(entries)
        return entries
