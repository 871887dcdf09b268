"""Who sees which scan: pages, the JSON snapshot and the list, as a browser would ask for them."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from scans.models import Result, Scan

pytestmark = pytest.mark.django_db


def submit(client: Client, urls: str = "http://a.example/\nhttp://b.example/") -> Scan:
    response = client.post("/", {"urls": urls, "concurrency": "2", "timeout": "5"})
    assert response.status_code == 302
    return Scan.objects.get(pk=response["Location"].split("/")[2])


def test_it_shows_the_owner_their_live_page_and_snapshot(client):
    scan = submit(client)
    page = client.get(f"/scans/{scan.id}/")
    assert page.status_code == 200
    assert f'data-socket-path="/ws/scans/{scan.id}/"' in page.text
    assert page.text.count('data-position="') == 2
    data = client.get(f"/api/scans/{scan.id}/").json()
    assert data["scan"]["id"] == str(scan.id) and data["scan"]["status"] == "queued"
    assert [(r["position"], r["url"], r["state"]) for r in data["results"]] == [
        (0, "http://a.example/", "pending"),
        (1, "http://b.example/", "pending"),
    ]


def test_it_hides_a_scan_from_everyone_else(client):
    scan = submit(client)
    stranger = Client()
    stranger.post("/", {"urls": "http://c.example/", "concurrency": "1", "timeout": "1"})
    for path in (f"/scans/{scan.id}/", f"/api/scans/{scan.id}/"):
        assert stranger.get(path).status_code == 404
    assert stranger.post(f"/scans/{scan.id}/cancel/").status_code == 404
    assert str(scan.id) not in stranger.get("/scans/").text
    User.objects.create_user("bob", password="pw-bob-123")
    stranger.login(username="bob", password="pw-bob-123")
    assert stranger.get(f"/scans/{scan.id}/").status_code == 404


def test_staff_see_every_scan(client):
    scan = submit(client)
    User.objects.create_user("ops", password="pw-ops-123", is_staff=True)
    staff = Client()
    staff.login(username="ops", password="pw-ops-123")
    assert staff.get(f"/scans/{scan.id}/").status_code == 200
    assert staff.get(f"/api/scans/{scan.id}/").status_code == 200


def test_a_logged_in_users_scans_are_theirs(client):
    user = User.objects.create_user("ann", password="pw-ann-123")
    client.login(username="ann", password="pw-ann-123")
    scan = submit(client)
    assert scan.owner == user and scan.visitor_key == ""
    assert str(scan.id) in client.get("/scans/").text


def test_the_list_shows_the_visitors_scans_newest_first(client):
    first, second = submit(client), submit(client, "http://z.example/")
    text = client.get("/scans/").text
    assert text.index(str(second.id)) < text.index(str(first.id))
    # When, with the time zone it is in.
    assert f"{second.created:%Y-%m-%d %H:%M:%S} UTC</a>" in text


def test_cancel_ends_the_pending_rows(client):
    scan = submit(client)
    Result.objects.filter(scan=scan, position=0).update(state="ok", http_status=200, size=5)
    Scan.objects.filter(pk=scan.id).update(done=1)
    response = client.post(f"/scans/{scan.id}/cancel/")
    assert response.status_code == 302
    data = client.get(f"/api/scans/{scan.id}/").json()
    assert data["scan"]["status"] == "cancelled" and data["scan"]["done"] == 2
    assert [(r["state"], r["error"]) for r in data["results"]] == [
        ("ok", None),
        ("error", "cancelled"),
    ]
    # The pages count what was fetched, and say how many rows the cancel ended; an ended
    # row is not a site that failed.
    page = client.get(f"/scans/{scan.id}/").text
    assert '<span data-scan="done">1</span> / 2<span data-scan="cancelled"> · 1 cancelled' in page
    assert 'style="width: 50%"' in page
    assert 'data-position="1" class="state-error" data-cancelled>' in page
    assert "data-failed" not in page
    listed = client.get("/scans/").text
    assert '<td class="num">1 <span class="fine">(1 cancelled)</span></td>' in listed


def test_cancel_needs_a_post(client):
    scan = submit(client)
    assert client.get(f"/scans/{scan.id}/cancel/").status_code == 405


def test_the_form_needs_its_csrf_token():
    client = Client(enforce_csrf_checks=True)
    response = client.post("/", {"urls": "http://a.example/", "concurrency": "1", "timeout": "1"})
    assert response.status_code == 403
    assert not Scan.objects.exists()


def test_a_visitors_scans_follow_them_when_they_log_in(client):
    scan = submit(client)
    User.objects.create_user("cy", password="pw-cy-12345")
    response = client.post("/accounts/login/", {"username": "cy", "password": "pw-cy-12345"})
    assert response.status_code == 302
    scan.refresh_from_db()
    assert scan.owner.username == "cy" and scan.visitor_key == ""
    assert client.get(f"/scans/{scan.id}/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get(f"/scans/{scan.id}/").status_code == 404


def test_scanning_can_require_login(client, settings):
    settings.SCANS_REQUIRE_LOGIN = True
    response = client.post("/", {"urls": "http://a.example/", "concurrency": "1", "timeout": "1"})
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert not Scan.objects.exists()


def test_run_again_starts_a_new_scan_of_the_same_urls(client):
    scan = submit(client, "http://a.example/\nhttp://b.example/")
    Scan.objects.filter(pk=scan.id).update(status=Scan.DONE)
    response = client.post(f"/scans/{scan.id}/again/")
    again = Scan.objects.exclude(pk=scan.id).get()
    assert response["Location"] == f"/scans/{again.id}/"
    urls = list(again.results.values_list("url", flat=True))
    assert urls == ["http://a.example/", "http://b.example/"]
    assert client.get(f"/scans/{again.id}/").status_code == 200


def test_the_history_pages_through_past_scans(client):
    scans = []
    for i in range(27):
        scans.append(submit(client, f"http://s{i}.example/"))
        Scan.objects.update(status=Scan.DONE)
    first, second = client.get("/scans/").text, client.get("/scans/?page=2").text
    assert str(scans[-1].id) in first and str(scans[0].id) not in first
    assert str(scans[0].id) in second and "Page 2 of 2" in second


def test_the_live_page_carries_each_urls_previous_figures(client):
    first = submit(client, "http://a.example/\nhttp://b.example/")
    Result.objects.filter(scan=first, position=0).update(state="ok", size=2048, elapsed_ms=120.5)
    Scan.objects.filter(pk=first.id).update(status=Scan.DONE)
    second = submit(client, "http://b.example/\nhttp://a.example/")
    page = client.get(f"/scans/{second.id}/").text
    row_a = page[page.index('data-position="1"') :].split("</tr>")[0]
    row_b = page[page.index('data-position="0"') :].split("</tr>")[0]
    assert 'data-prev-size="2048" data-prev-ms="120.5"' in row_a
    assert "data-prev-size" not in row_b


def test_a_row_names_where_redirects_ended_not_the_url_as_encoded(client):
    scan = submit(client)
    rows = Result.objects.filter(scan=scan)
    rows.filter(position=0).update(state="ok", http_status=200, redirects=0,
                                   final_url="http://a.example/a%20b")  # fmt: skip
    rows.filter(position=1).update(state="ok", http_status=200, redirects=2,
                                   final_url="http://elsewhere.example/")  # fmt: skip
    page = client.get(f"/scans/{scan.id}/").text
    assert "→ http://a.example/a%20b" not in page
    assert "→ http://elsewhere.example/" in page
