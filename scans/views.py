"""Pages: the form, the history, the live page and what a visitor can do to a scan."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from scans import exports
from scans.access import get_scan_for_visitor, too_many_active, visitor_scans
from scans.forms import ScanForm
from scans.history import previous_results
from scans.models import ERROR_LABELS
from scans.submit import cancel, create_scan, run_again


def new_scan(request: HttpRequest) -> HttpResponse:
    if settings.SCANS_REQUIRE_LOGIN and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    form = ScanForm(request.POST or None)
    if request.method == "POST" and form.is_valid() and (busy := too_many_active(request)):
        form.add_error(None, busy)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        scan = create_scan(request, data["urls"], data["concurrency"], data["timeout"])
        return redirect("scans:detail", scan_id=scan.id)
    status = 400 if form.is_bound else 200
    return render(request, "scans/new.html", {"form": form}, status=status)


def scan_list(request: HttpRequest) -> HttpResponse:
    scans = visitor_scans(request).with_cancelled_rows()
    page = Paginator(scans, 25).get_page(request.GET.get("page"))
    return render(request, "scans/list.html", {"scans": page, "page": page})


def scan_detail(request: HttpRequest, scan_id: uuid.UUID) -> HttpResponse:
    scan = get_scan_for_visitor(request, scan_id)
    results = list(scan.results.all())
    previous = previous_results(scan)
    for result in results:
        result.previous = previous.get(result.url)
    scan.cancelled_rows = sum(result.is_cancelled for result in results)
    context = {"scan": scan, "results": results, "error_labels": ERROR_LABELS}
    return render(request, "scans/detail.html", context)


@require_POST
def scan_again(request: HttpRequest, scan_id: uuid.UUID) -> HttpResponse:
    scan = get_scan_for_visitor(request, scan_id)
    if busy := too_many_active(request):
        messages.error(request, busy)
        return redirect("scans:detail", scan_id=scan.id)
    return redirect("scans:detail", scan_id=run_again(scan).id)


@require_POST
def cancel_scan(request: HttpRequest, scan_id: uuid.UUID) -> HttpResponse:
    scan = get_scan_for_visitor(request, scan_id)
    cancel(scan)
    return redirect("scans:detail", scan_id=scan.id)


def _download(response: HttpResponse, filename: str) -> HttpResponse:
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response


def export_csv(request: HttpRequest, scan_id: uuid.UUID) -> HttpResponse:
    scan = get_scan_for_visitor(request, scan_id)
    response = HttpResponse(exports.as_csv(scan), content_type="text/csv; charset=utf-8")
    return _download(response, exports.filename(scan, "csv"))


def export_json(request: HttpRequest, scan_id: uuid.UUID) -> HttpResponse:
    scan = get_scan_for_visitor(request, scan_id)
    response = JsonResponse(exports.as_json(scan), json_dumps_params={"indent": 1})
    return _download(response, exports.filename(scan, "json"))
