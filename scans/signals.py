"""An anonymous visitor's scans follow them into their account when they log in."""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver

from scans.models import Scan


@receiver(user_logged_in)
def adopt_visitor_scans(sender, request, user, **kwargs) -> None:
    key = request.session.get("visitor_key") if request is not None else None
    if key:
        Scan.objects.filter(owner=None, visitor_key=key).update(owner=user, visitor_key="")
