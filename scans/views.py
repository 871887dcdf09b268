"""Pages and the JSON snapshot. Every scan page is its owner's or staff's only."""

from __future__ import annotations

import uuid

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from scans import store
from scans.forms import ScanForm
from scans.models import Scan
from scans.runner import announce
from scans.snapshots import snapshot
from scans.submit import create_scan, visitor_key


def _get_scan_for_visitor(request: HttpRequest, scan_id: uuid.UUID) -> Scan:
    scan = Scan.objects.filter(pk=scan_id).first()
    if scan is None or not scan.owned_by(request.user, visitor_key(request)):
        raise Http404("No such scan.")
    return scan


def _visitor_scans(request: HttpRequest):
    if request.user.is_authenticated:
        return Scan.objects.filter(owner=request.user)
    return Scan.objects.filter(owner=None, visitor_key=visitor_key(request) or "-")


def _too_many_active(request: HttpRequest) -> str | None:
    active = _visitor_scans(request).filter(status__in=Scan.ACTIVE).count()
    if active >= settings.SCANS_MAX_ACTIVE_PER_OWNER:
        return (
            f"You already have {active} scans running; wait for one to finish or cancel one"
            f" (at most {settings.SCANS_MAX_ACTIVE_PER_OWNER} at once)."
        )
    return None


def new_scan(request: HttpRequest) -> HttpResponse:
    if settings.SCANS_REQUIRE_LOGIN and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    form = ScanForm(request.POST or None)
    if request.method == "POST" and form.is_valid() and (busy := _too_many_active(request)):
        form.add_error(None, busy)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        scan = create_scan(request, data["urls"], data["concurrency"], data["timeout"])
        return redirect("scans:detail", scan_id=scan.id)
    status = 400 if form.is_bound else 200
    return render(request, "scans/new.html", {"form": form}, status=status)


def scan_list(request: HttpRequest) -> HttpResponse:
    scans = _visitor_scans(request)[:100]
    return render(request, "scans/list.html", {"scans": scans})


def scan_detail(request: HttpRequest, scan_id: uuid.UUID) -> HttpResponse:
    scan = _get_scan_for_visitor(request, scan_id)
    return render(request, "scans/detail.html", {"scan": scan, "results": scan.results.all()})


def scan_snapshot(request: HttpRequest, scan_id: uuid.UUID) -> JsonResponse:
    scan = _get_scan_for_visitor(request, scan_id)
    data = snapshot(scan.id)
    return JsonResponse({"scan": data["scan"], "results": data["results"]})


@require_POST
def cancel_scan(request: HttpRequest, scan_id: uuid.UUID) -> HttpResponse:
    scan = _get_scan_for_visitor(request, scan_id)
    message = store.cancel_scan(scan.id)
    if message is not None:
        async_to_sync(announce)(scan.id, message)
    return redirect("scans:detail", scan_id=scan.id)
