"""A scan against the owner's previous scans: how each URL's size and time changed."""

from __future__ import annotations

from scans.models import Result, Scan


def previous_results(scan: Scan) -> dict[str, dict]:
    """For each URL of ``scan``: the owner's latest earlier successful fetch of it."""
    earlier = Scan.objects.filter(created__lt=scan.created)
    if scan.owner_id:
        earlier = earlier.filter(owner_id=scan.owner_id)
    else:
        earlier = earlier.filter(owner=None, visitor_key=scan.visitor_key)
    urls = set(scan.results.values_list("url", flat=True))
    rows = (
        Result.objects.filter(scan__in=earlier, url__in=urls, state=Result.OK)
        .order_by("url", "-scan__created")
        .values("url", "size", "elapsed_ms", "scan_id")
    )
    previous: dict[str, dict] = {}
    for row in rows:
        previous.setdefault(row["url"], row)
    return previous
