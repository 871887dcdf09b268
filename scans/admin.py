from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import F
from django.http import HttpResponse
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.html import format_html

from scans import exports, submit
from scans.models import Result, Scan


class ResultInline(admin.TabularInline):
    model = Result
    fields = (
        "line",
        "url",
        "state",
        "http_status",
        "size_bytes",
        "ttfb_ms",
        "elapsed_ms",
        "redirected_to",
        "error_class",
        "error_message",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="line")
    def line(self, result: Result) -> int:
        """The line of the pasted list, as the live page numbers its rows (from 1)."""
        return result.position + 1

    @admin.display(description="size (bytes)")
    def size_bytes(self, result: Result) -> str:
        return _count(result.size)

    @admin.display(description="redirected to")
    def redirected_to(self, result: Result) -> str:
        return result.final_url if result.redirects else ""

    @admin.display(description="error")
    def error_class(self, result: Result) -> str:
        """In the live page's words ("connection failed", not "connect")."""
        return result.error_label if result.error else ""


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


@admin.register(Scan)
class ScanAdmin(admin.ModelAdmin):
    list_display = (
        "created",
        "owner_name",
        "status",
        "total",
        "fetched",
        "size",
        "duration",
        "live_page",
    )
    list_filter = ("status", ("owner", admin.RelatedOnlyFieldListFilter), "created")
    date_hierarchy = "created"
    search_fields = ("results__url",)
    fields = readonly_fields = (
        "id",
        "owner_name",
        "status",
        "concurrency",
        "timeout",
        "total",
        "fetched",
        "total_size",
        "sum_of_times",
        "duration",
        "created",
        "started",
        "finished",
        "live_page",
    )
    inlines = [ResultInline]
    actions = ["run_again", "cancel", "export_csv"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("owner").with_cancelled_rows()

    @admin.display(description="owner")
    def owner_name(self, scan: Scan) -> str:
        return scan.owner.get_username() if scan.owner else "anonymous visitor"

    @admin.display(description="done", ordering=F("done") - F("cancelled_rows"))
    def fetched(self, scan: Scan) -> str:
        """As the live page counts: a cancelled scan's unfetched rows are not done."""
        if not scan.cancelled_rows:
            return str(scan.done)
        return f"{scan.fetched} ({scan.cancelled_rows} cancelled)"

    @admin.display(description="size", ordering="total_bytes")
    def size(self, scan: Scan) -> str:
        return filesizeformat(scan.total_bytes)

    @admin.display(description="total size")
    def total_size(self, scan: Scan) -> str:
        return f"{scan.total_bytes:,} bytes ({filesizeformat(scan.total_bytes)})"

    @admin.display(description="sum of per-site times")
    def sum_of_times(self, scan: Scan) -> str:
        return f"{scan.sum_ms:,.1f} ms"

    @admin.display(description="wall time")
    def duration(self, scan: Scan) -> str:
        """As the live page gives it."""
        return f"{scan.wall_ms:,.0f} ms" if scan.wall_ms is not None else "-"

    @admin.display(description="timeout per URL")
    def timeout(self, scan: Scan) -> str:
        return f"{scan.timeout_s:g} s"

    @admin.display(description="live page")
    def live_page(self, scan: Scan) -> str:
        return format_html('<a href="{}">open</a>', reverse("scans:detail", args=[scan.id]))

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # Scans are records: staff read them (and act on them), never edit them.
        return False

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff

    @admin.action(description="Export the selected scans' results as CSV")
    def export_csv(self, request, queryset) -> HttpResponse:
        scans = list(queryset.order_by("created"))
        body = exports.many_as_csv(scans)
        response = HttpResponse(body, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="scans.csv"'
        return response

    @admin.action(description="Run the selected scans again")
    def run_again(self, request, queryset) -> None:
        for scan in queryset:
            submit.run_again(scan)
        self.message_user(request, f"Started {len(queryset)} new scan(s).", messages.SUCCESS)

    @admin.action(description="Cancel the selected scans")
    def cancel(self, request, queryset) -> None:
        cancelled = sum(submit.cancel(scan) for scan in queryset.filter(status__in=Scan.ACTIVE))
        self.message_user(request, f"Cancelled {cancelled} scan(s).", messages.SUCCESS)

    def get_search_results(self, request, queryset, search_term):
        queryset, _ = super().get_search_results(request, queryset, search_term)
        return queryset.distinct(), False
