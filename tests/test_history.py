from __future__ import annotations

import pytest

from scans.history import previous_results
from scans.models import Result, Scan

pytestmark = pytest.mark.django_db


def make_scan(visitor: str, results: dict[str, tuple[str, int | None, float | None]]) -> Scan:
    scan = Scan.objects.create(visitor_key=visitor, concurrency=1, timeout_s=1, total=len(results))
    for i, (url, (state, size, ms)) in enumerate(results.items()):
        Result.objects.create(scan=scan, position=i, url=url, state=state, size=size, elapsed_ms=ms)
    return scan


def test_it_finds_the_latest_earlier_success_of_each_url_for_the_same_owner():
    a, b, c = "http://a.example/", "http://b.example/", "http://c.example/"
    oldest = make_scan("me", {a: ("ok", 100, 10.0), b: ("ok", 5, 1.0)})
    older = make_scan("me", {a: ("ok", 120, 12.0), b: ("error", None, 3.0)})
    make_scan("someone-else", {a: ("ok", 999, 99.0), c: ("ok", 1, 1.0)})
    current = make_scan(
        "me", {a: ("pending", None, None), b: ("pending", None, None), c: ("pending", None, None)}
    )
    previous = previous_results(current)
    assert previous[a]["size"] == 120 and previous[a]["scan_id"] == older.id
    assert previous[b]["size"] == 5 and previous[b]["scan_id"] == oldest.id
    assert c not in previous
    assert previous_results(oldest) == {}
