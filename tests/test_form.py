"""The scan form: what it stores, and every bad input it refuses without storing anything."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from django.test import override_settings
from django.urls import reverse

from scans.fetch import NO_SCHEME
from scans.models import Result, Scan

pytestmark = pytest.mark.django_db


def post(client, urls: str, concurrency: str = "10", timeout: str = "5"):
    data = {"urls": urls, "concurrency": concurrency, "timeout": timeout}
    return client.post(reverse("scans:new"), data)


@override_settings(SCANS_PER_HOST_LIMIT=7)
def test_it_shows_the_form(client):
    response = client.get("/")
    assert response.status_code == 200
    for name in ("urls", "concurrency", "timeout", "csrfmiddlewaretoken"):
        assert f'name="{name}"' in response.text
    # Why a scan of one site runs fewer at once than its concurrency.
    assert "at most 7 at a time from any one site" in response.text


def test_the_form_is_sent_as_multipart_and_a_urlencoded_post_works_too(client):
    assert 'enctype="multipart/form-data"' in client.get("/").text
    body = urlencode({"urls": "http://a.example/\nhttp://b.example/?q=1&r=2", "concurrency": "3",
                      "timeout": "5"})  # fmt: skip
    response = client.post(reverse("scans:new"), body, "application/x-www-form-urlencoded")
    scan = Scan.objects.get()
    assert response.status_code == 302 and (scan.total, scan.concurrency) == (2, 3)
    assert list(scan.results.values_list("url", flat=True)) == [
        "http://a.example/",
        "http://b.example/?q=1&r=2",
    ]


def test_it_stores_the_scan_and_one_pending_row_per_url(client):
    response = post(
        client,
        "http://a.example/\n\n  https://b.example/x?y=1  \nhttp://c.example:80/\n"
        'http://d.example/päth?q="ü"\\',
    )
    scan = Scan.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/scans/{scan.id}/"
    assert (scan.status, scan.total, scan.concurrency, scan.timeout_s) == ("queued", 4, 10, 5.0)
    rows = list(Result.objects.filter(scan=scan).values_list("position", "url", "state"))
    assert rows == [
        (0, "http://a.example/", "pending"),
        (1, "https://b.example/x?y=1", "pending"),
        (2, "http://c.example:80/", "pending"),
        (3, 'http://d.example/päth?q="ü"\\', "pending"),
    ]


@pytest.mark.parametrize("urls", ["", " \n\n "])
def test_an_empty_list_is_refused_in_the_same_words(client, urls):
    response = post(client, urls)
    assert response.status_code == 400
    assert "Enter at least one URL, one per line." in response.text
    assert not Scan.objects.exists()


def test_past_twenty_bad_lines_the_rest_are_named_by_number(client):
    urls = "\n".join(["http://ok.example/"] + [f"ftp://bad{i}.example/" for i in range(30)])
    response = post(client, urls)
    assert response.status_code == 400
    assert "Fix these 30 lines of the list:" in response.text
    assert "Line 21: &#x27;ftp://bad19.example/&#x27;" in response.text
    assert "Line 22:" not in response.text
    assert "And 10 more: lines 22, 23, 24, 25, 26, 27, 28, 29, 30 and 31." in response.text


def test_it_names_every_line_that_is_not_an_http_url(client):
    urls = "http://ok.example/\nftp://files.example/\nnot a url\nhttps://fine.example/\njavascript:alert(1)"
    response = post(client, urls)
    assert response.status_code == 400
    assert "Fix lines 2, 3 and 5 of the list" in response.text
    assert "Line 2: &#x27;ftp://files.example/&#x27;: only http:// and https://" in response.text
    assert "Line 3:" in response.text and "Line 5:" in response.text
    assert "Line 1:" not in response.text and "Line 4:" not in response.text
    # The text comes back as typed, so nothing has to be pasted again.
    assert "ftp://files.example/\nnot a url\nhttps://fine.example/" in response.text
    assert not Scan.objects.exists() and not Result.objects.exists()


@override_settings(SCANS_MAX_URLS=3)
def test_more_urls_than_allowed_are_refused(client):
    response = post(client, "\n".join(f"http://s{i}.example/" for i in range(4)))
    assert response.status_code == 400
    assert "4 URLs is more than the 3 a scan may hold" in response.text
    assert not Scan.objects.exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("concurrency", "0", "greater than or equal to 1"),
        ("concurrency", "100000", "less than or equal to"),
        ("concurrency", "many", "Enter a whole number"),
        ("timeout", "0", "greater than or equal to 0.1"),
        ("timeout", "100000", "less than or equal to"),
    ],
)
def test_out_of_range_options_are_refused(client, field, value, message):
    values = {"concurrency": "10", "timeout": "5", field: value}
    response = post(client, "http://ok.example/", **values)
    assert response.status_code == 400
    assert message in response.text
    assert "http://ok.example/" in response.text
    assert not Scan.objects.exists()


@override_settings(SCANS_MAX_ACTIVE_PER_OWNER=2)
def test_a_visitor_with_too_many_running_scans_is_told_to_wait(client):
    assert post(client, "http://a.example/").status_code == 302
    assert post(client, "http://b.example/").status_code == 302
    response = post(client, "http://c.example/")
    assert response.status_code == 400
    assert "You already have 2 scans running" in response.text
    assert Scan.objects.count() == 2
    Scan.objects.update(status=Scan.DONE)
    assert post(client, "http://c.example/").status_code == 302


def test_a_failed_post_keeps_existing_scans(client):
    post(client, "http://a.example/")
    post(client, "not a url")
    assert Scan.objects.count() == 1 and Result.objects.count() == 1


@pytest.mark.parametrize(
    "url", ["http://user:pw@a.example/", "http://user@a.example/", "http://@a.example/"]
)
def test_urls_with_credentials_are_refused_even_empty_ones(client, url):
    response = post(client, f"http://ok.example/\n{url}")
    assert response.status_code == 400
    assert "Line 2:" in response.text and "user name or password are not allowed" in response.text
    assert not Scan.objects.exists()


def test_a_single_bad_line_is_named_once(client):
    response = post(client, "http://ok.example/\nexample.com/page")
    assert response.status_code == 400
    assert "Line 2: &#x27;example.com/page&#x27;: only http:// and https:// URLs" in response.text
    assert "write one of them in front" in response.text
    assert "Fix line" not in response.text


@pytest.mark.parametrize("between", [" ", "\t", ",", ", ", ";"])
def test_two_urls_on_one_line_are_refused_not_fetched_as_one(client, between):
    urls = f"http://ok.example/\nhttp://a.example/x{between}http://b.example/y"
    response = post(client, urls)
    assert response.status_code == 400
    assert "Line 2:" in response.text
    assert "it holds more than one URL: put each on a line of its own" in response.text
    assert not Scan.objects.exists()


def test_a_url_in_angle_brackets_or_quotes_is_kept_without_them(client):
    urls = "<http://a.example/x>\n\"http://b.example/y\"\n'http://c.example/z'\n" \
        "http://d.example/login?next=http://e.example/"  # fmt: skip
    assert post(client, urls).status_code == 302
    assert list(Result.objects.order_by("position").values_list("url", flat=True)) == [
        "http://a.example/x",
        "http://b.example/y",
        "http://c.example/z",
        "http://d.example/login?next=http://e.example/",
    ]


def test_a_space_in_a_url_is_refused_with_how_to_write_it(client):
    response = post(client, "http://a.example/my file.html")
    assert response.status_code == 400
    assert "it has a space in it: write a space in a URL as %20" in response.text
    assert not Scan.objects.exists()


@pytest.mark.parametrize(
    "line, reason",
    [
        ("127.0.0.1:8112/size/10", NO_SCHEME),
        ("localhost:8080", NO_SCHEME),
        ("www.example.com", NO_SCHEME),
        ("hello", "not a URL: a URL starts with http:// or https://"),
        ("hello world", "not a URL: a URL starts with http:// or https://"),
    ],
)
def test_a_url_without_its_scheme_is_told_to_add_one_and_words_are_not_urls(client, line, reason):
    response = post(client, line)
    assert response.status_code == 400
    assert f"Line 1: &#x27;{line}&#x27;: {reason}" in response.text


def test_one_bad_line_past_the_shown_ones_is_named_not_counted(client):
    urls = "\n".join(f"ftp://bad{i}.example/" for i in range(31))
    response = post(client, urls)
    assert "And 11 more: lines 21, 22, 23, 24, 25, 26, 27, 28, 29, 30 and 31." in response.text
    assert "and 1 more" not in response.text
