"""The admin: staff review past scans, search them by URL, re-run and cancel them."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

from scans.admin import ScanAdmin
from scans.models import Result, Scan

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client() -> Client:
    User.objects.create_superuser("root", password="pw-root-123")
    client = Client()
    client.login(username="root", password="pw-root-123")
    return client


def make_scan(urls: list[str], owner=None, status: str = Scan.DONE) -> Scan:
    scan = Scan.objects.create(
        owner=owner,
        visitor_key="" if owner else "v",
        concurrency=3,
        timeout_s=4,
        total=len(urls),
        status=status,
    )
    for i, url in enumerate(urls):
        Result.objects.create(scan=scan, position=i, url=url, state="ok", size=1_234_567 + i)
    return scan


def test_it_lists_scans_with_their_figures(admin_client):
    scan = make_scan(["http://a.example/"], owner=User.objects.create_user("ann"))
    page = admin_client.get("/admin/scans/scan/").text
    assert "ann" in page and f"/scans/{scan.id}/" in page
    for column in ("status", "total", "done", "size", "wall time"):
        assert column in page.lower()


def test_it_searches_by_url_and_filters_by_status(admin_client):
    wanted = make_scan(["http://needle.example/page"])
    other = make_scan(["http://hay.example/"], status=Scan.CANCELLED)
    found = admin_client.get("/admin/scans/scan/", {"q": "needle"}).text
    assert str(wanted.id) in found and str(other.id) not in found
    cancelled = admin_client.get("/admin/scans/scan/", {"status__exact": "cancelled"}).text
    assert str(other.id) in cancelled and str(wanted.id) not in cancelled


def test_a_scan_shows_its_results_read_only_with_exact_bytes(admin_client):
    scan = make_scan(["http://a.example/", "http://b.example/"])
    Scan.objects.filter(pk=scan.id).update(total_bytes=2_469_135, sum_ms=322475.0000000001)
    Result.objects.filter(scan=scan, position=1).update(state="error", error="connect", size=None)
    page = admin_client.get(f"/admin/scans/scan/{scan.id}/change/").text
    # The error class in the live page's words.
    assert re.search(r'field-error_class">\s*<p>connection failed</p>', page)
    assert "1,234,567" in page
    assert 'name="results-0-size"' not in page
    # The scan's figures read as on the live page, without a float's noise.
    assert "2,469,135 bytes (2.4\xa0MB)" in page and "322,475.0 ms" in page
    assert "Timeout per URL" in page and "4 s" in page
    # Rows are numbered by line, from 1, as on the live page.
    lines = [cell.split(">")[1] for cell in page.split('<td class="field-line">')[1:]]
    assert [line.split("<")[0].strip() for line in lines] == ["1", "2"]


def test_run_again_and_cancel_actions(admin_client):
    done = make_scan(["http://a.example/", "http://b.example/"])
    running = make_scan(["http://c.example/"], status=Scan.RUNNING)
    admin_client.post("/admin/scans/scan/", {"action": "run_again", "_selected_action": [done.id]})
    again = Scan.objects.exclude(pk__in=[done.id, running.id]).get()
    assert list(again.results.values_list("url", "state")) == [
        ("http://a.example/", "pending"),
        ("http://b.example/", "pending"),
    ]
    assert (again.concurrency, again.timeout_s, again.visitor_key) == (3, 4, "v")
    admin_client.post("/admin/scans/scan/", {"action": "cancel", "_selected_action": [running.id]})
    running.refresh_from_db()
    assert running.status == "cancelled"


def test_a_cancelled_scan_counts_what_was_fetched_as_the_live_page_does(admin_client):
    scan = make_scan(["http://a.example/", "http://b.example/"], status=Scan.RUNNING)
    Result.objects.filter(scan=scan, position=1).update(state="pending", size=None)
    Scan.objects.filter(pk=scan.id).update(done=1)
    admin_client.post("/admin/scans/scan/", {"action": "cancel", "_selected_action": [scan.id]})
    listed = admin_client.get("/admin/scans/scan/").text
    assert '<td class="field-fetched">1 (1 cancelled)</td>' in listed
    page = admin_client.get(f"/admin/scans/scan/{scan.id}/change/").text
    assert "1 (1 cancelled)" in page and "(cancelled, of 2)" in page


def test_the_done_column_sorts_by_what_it_shows(admin_client):
    # 1 fetched and 2 cancelled (3 done, as the scan counts), against 2 fetched of 2.
    cancelled = make_scan(["http://a.example/", "http://b.example/", "http://c.example/"])
    Result.objects.filter(scan=cancelled, position__gt=0).update(state="error", error="cancelled")
    Scan.objects.filter(pk=cancelled.id).update(status=Scan.CANCELLED, done=3)
    done = make_scan(["http://d.example/", "http://e.example/"])
    Scan.objects.filter(pk=done.id).update(done=2)
    links = [f"/admin/scans/scan/{scan.id}/change/" for scan in (cancelled, done)]
    column = 1 + ScanAdmin.list_display.index("fetched")  # after the action checkbox
    for order, first, second in ((column, *links), (-column, *reversed(links))):
        listed = admin_client.get(f"/admin/scans/scan/?o={order}").text
        assert listed.index(first) < listed.index(second), order


def test_scans_are_read_only_and_export_as_csv(admin_client):
    first, second = make_scan(["http://a.example/"]), make_scan(["http://=b.example/"])
    page = admin_client.get(f"/admin/scans/scan/{first.id}/change/").text
    assert 'name="_save"' not in page and "anonymous visitor" in page
    assert admin_client.post(f"/admin/scans/scan/{first.id}/change/", {}).status_code == 403
    response = admin_client.post(
        "/admin/scans/scan/", {"action": "export_csv", "_selected_action": [first.id, second.id]}
    )
    lines = response.content.decode().splitlines()
    assert response["Content-Type"].startswith("text/csv")
    assert lines[0].startswith("scan,position,url,state")
    assert lines[1].startswith(f"{first.id},0,http://a.example/,ok,")
    assert lines[2].startswith(f"{second.id},0,http://=b.example/,ok,")
    assert len(lines) == 3


def test_non_staff_users_cannot_open_the_admin(client):
    User.objects.create_user("joe", password="pw-joe-123")
    client.login(username="joe", password="pw-joe-123")
    assert client.get("/admin/scans/scan/").status_code == 302
