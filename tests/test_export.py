"""Downloads of a scan: CSV and JSON, a header and one row per URL in submission order."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth.models import User
from django.test import Client

from scans.models import Result, Scan
from scans.snapshots import RESULT_FIELDS

pytestmark = pytest.mark.django_db

URLS = ["http://b.example/", "http://a.example/", "http://c.example/"]


def submit(client: Client) -> Scan:
    response = client.post("/", {"urls": "\n".join(URLS), "concurrency": "2", "timeout": "5"})
    assert response.status_code == 302
    return Scan.objects.get(pk=response["Location"].split("/")[2])


def finish_some(scan: Scan) -> None:
    Result.objects.filter(scan=scan, position=0).update(
        state="ok", http_status=200, size=1_048_576, ttfb_ms=12.5, elapsed_ms=40.25, start_ms=3.0
    )
    Result.objects.filter(scan=scan, position=2).update(
        state="error", error="dns", error_message="could not resolve c.example", elapsed_ms=7.0
    )


def read_csv(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.content.decode())))


def test_it_downloads_a_csv_with_a_header_and_a_row_per_url_in_order(client):
    scan = submit(client)
    finish_some(scan)
    response = client.get(f"/scans/{scan.id}/export.csv")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="scan-')
    assert response["Content-Disposition"].endswith('.csv"')
    header, *rows = read_csv(response)
    assert header == list(RESULT_FIELDS)
    by_name = [dict(zip(header, row, strict=True)) for row in rows]
    assert [row["url"] for row in by_name] == URLS
    assert [row["position"] for row in by_name] == ["0", "1", "2"]
    first, pending, failed = by_name
    assert (first["state"], first["http_status"], first["size"]) == ("ok", "200", "1048576")
    assert (first["ttfb_ms"], first["elapsed_ms"], first["error"]) == ("12.5", "40.25", "")
    assert (pending["state"], pending["size"], pending["elapsed_ms"]) == ("pending", "", "")
    assert (failed["error"], failed["error_message"]) == ("dns", "could not resolve c.example")


def test_it_downloads_json_with_the_scan_and_a_row_per_url_in_order(client):
    scan = submit(client)
    finish_some(scan)
    response = client.get(f"/scans/{scan.id}/export.json")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].endswith('.json"')
    data = response.json()
    assert data["scan"]["id"] == str(scan.id) and data["scan"]["total"] == 3
    assert data["columns"] == list(RESULT_FIELDS)
    assert [row["url"] for row in data["results"]] == URLS
    assert [list(row) for row in data["results"]] == [list(RESULT_FIELDS)] * 3
    assert data["results"][0]["size"] == 1_048_576 and data["results"][1]["size"] is None


def test_a_cell_a_spreadsheet_would_run_as_a_formula_is_kept_as_text(client):
    scan = submit(client)
    hostile = '=HYPERLINK("http://evil.example/","click")'
    Result.objects.filter(scan=scan, position=0).update(state="ok", content_type=hostile)
    _, first, *_ = read_csv(client.get(f"/scans/{scan.id}/export.csv"))
    assert first[RESULT_FIELDS.index("content_type")] == "'" + hostile
    json_row = client.get(f"/scans/{scan.id}/export.json").json()["results"][0]
    assert json_row["content_type"] == hostile


def test_only_the_owner_and_staff_may_download(client):
    scan = submit(client)
    stranger = Client()
    User.objects.create_user("ops", password="pw-ops-123", is_staff=True)
    staff = Client()
    staff.login(username="ops", password="pw-ops-123")
    for extension in ("csv", "json"):
        path = f"/scans/{scan.id}/export.{extension}"
        assert stranger.get(path).status_code == 404
        assert staff.get(path).status_code == 200
        assert client.get(path).status_code == 200


def test_the_live_page_links_its_downloads(client):
    scan = submit(client)
    page = client.get(f"/scans/{scan.id}/").text
    assert f'href="/scans/{scan.id}/export.csv"' in page
    assert f'href="/scans/{scan.id}/export.json"' in page


def test_the_admin_links_a_scans_downloads(client):
    scan = submit(client)
    User.objects.create_superuser("root", password="pw-root-123")
    admin = Client()
    admin.login(username="root", password="pw-root-123")
    page = admin.get(f"/admin/scans/scan/{scan.id}/change/").text
    assert f'href="/scans/{scan.id}/export.csv"' in page
