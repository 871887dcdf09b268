"""Who may see and start which scans: the helpers every view and the API share."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db.models import QuerySet
from django.http import Http404, HttpRequest

from scans.models import Scan
from scans.submit import visitor_key


def get_scan_for_visitor(request: HttpRequest, scan_id: uuid.UUID) -> Scan:
    """The scan if this visitor owns it (or is staff); 404 otherwise, so ids leak nothing."""
    scan = Scan.objects.filter(pk=scan_id).first()
    if scan is None or not scan.owned_by(request.user, visitor_key(request)):
        raise Http404("No such scan.")
    return scan


def visitor_scans(request: HttpRequest) -> QuerySet[Scan]:
    if request.user.is_authenticated:
        return Scan.objects.filter(owner=request.user)
    return Scan.objects.filter(owner=None, visitor_key=visitor_key(request) or "-")


def too_many_active(request: HttpRequest) -> str | None:
    active = visitor_scans(request).filter(status__in=Scan.ACTIVE).count()
    if active >= settings.SCANS_MAX_ACTIVE_PER_OWNER:
        return (
            f"You already have {active} scans running; wait for one to finish or cancel one"
            f" (at most {settings.SCANS_MAX_ACTIVE_PER_OWNER} at once)."
        )
    return None
