"""The JSON API, by session and by token: create, read, list, cancel, and clear errors."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client

from scans.models import ApiToken, Scan

pytestmark = pytest.mark.django_db


def post_json(client: Client, path: str, body, **headers):
    data = body if isinstance(body, str) else json.dumps(body)
    return client.post(path, data, content_type="application/json", headers=headers)


@pytest.fixture
def user() -> User:
    return User.objects.create_user("ann", password="pw-ann-123")


@pytest.fixture
def key(user) -> str:
    return ApiToken.issue(user, "tests")[1]


def test_a_token_creates_reads_lists_and_cancels_a_scan(key, user):
    api = Client(enforce_csrf_checks=True)
    auth = {"Authorization": f"Token {key}"}
    body = {"urls": ["http://a.example/", "http://b.example/"], "concurrency": 2, "timeout": 3}
    created = post_json(api, "/api/scans/", body, **auth)
    assert created.status_code == 201, created.content
    scan_id = created.json()["scan"]["id"]
    assert created["Location"] == f"/api/scans/{scan_id}/"
    assert Scan.objects.get(pk=scan_id).owner == user
    read = api.get(f"/api/scans/{scan_id}/", headers=auth).json()
    assert [r["url"] for r in read["results"]] == body["urls"]
    listed = api.get("/api/scans/", headers=auth).json()
    assert [s["id"] for s in listed["scans"]] == [scan_id] and listed["pages"] == 1
    cancelled = post_json(api, f"/api/scans/{scan_id}/cancel/", {}, **auth)
    assert cancelled.json()["scan"]["status"] == "cancelled"
    again = post_json(api, f"/api/scans/{scan_id}/cancel/", {}, **auth)
    assert again.status_code == 409 and "already ended" in again.json()["error"]


def test_bad_input_gets_json_errors_naming_the_problem(key):
    auth = {"Authorization": f"Token {key}"}
    api = Client()
    cases = [
        ("{nope", 400, "not valid JSON"),
        ([1, 2], 400, "must be a JSON object"),
        ({"urls": "http://a.example/"}, 400, '"urls" must be a list of strings'),
    ]
    for body, status, message in cases:
        response = post_json(api, "/api/scans/", body, **auth)
        assert (response.status_code, message in response.json()["error"]) == (status, True)
    response = post_json(
        api, "/api/scans/", {"urls": ["http://ok.example/", "gopher://x/"]}, **auth
    )
    assert response.status_code == 400
    assert any("Line 2" in m for m in response.json()["fields"]["urls"])
    # JSON may carry half a surrogate pair, which no database can store as text.
    response = post_json(
        api, "/api/scans/", '{"urls": ["http://ok.example/", "http://a.example/\\ud800"]}', **auth
    )
    assert response.status_code == 400
    assert any(
        "Line 2" in m and "not a valid Unicode character" in m
        for m in response.json()["fields"]["urls"]
    )
    # An item with a line break in it is two URLs, not one fetched with a space.
    response = post_json(
        api,
        "/api/scans/",
        {"urls": ["http://ok.example/", "http://a.example/\nhttp://b.example/"]},
        **auth,
    )
    assert response.status_code == 400
    assert any(
        "Line 2" in m and "more than one URL" in m for m in response.json()["fields"]["urls"]
    )
    response = post_json(
        api, "/api/scans/", {"urls": ["http://a.example/"], "concurrency": 0}, **auth
    )
    assert "concurrency" in response.json()["fields"]
    assert not Scan.objects.exists()


def test_a_bad_or_revoked_token_is_refused(key, user):
    api = Client()
    assert api.get("/api/scans/", headers={"Authorization": "Token nope"}).status_code == 401
    ApiToken.objects.filter(user=user).delete()
    response = api.get("/api/scans/", headers={"Authorization": f"Token {key}"})
    assert response.status_code == 401 and "not valid" in response.json()["error"]


def test_someone_elses_scan_is_404_in_json(key):
    other = Client()
    scan_id = post_json(other, "/api/scans/", {"urls": ["http://a.example/"]}).json()["scan"]["id"]
    response = Client().get(f"/api/scans/{scan_id}/", headers={"Authorization": f"Token {key}"})
    assert response.status_code == 404 and response.json() == {"error": "no such scan"}


def test_a_session_post_needs_the_csrf_token():
    browser = Client(enforce_csrf_checks=True)
    browser.get("/")
    body = {"urls": ["http://a.example/"]}
    refused = post_json(browser, "/api/scans/", body)
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    token = browser.cookies["csrftoken"].value
    assert post_json(browser, "/api/scans/", body, **{"X-CSRFToken": token}).status_code == 201


def test_wrong_methods_are_named(key):
    response = Client().delete("/api/scans/", headers={"Authorization": f"Token {key}"})
    assert response.status_code == 405 and response.json()["allowed"] == ["GET", "POST"]


def test_the_account_page_creates_shows_once_and_revokes_tokens(client, user):
    client.login(username="ann", password="pw-ann-123")
    page = client.post("/account/", {"name": "nightly"}, follow=True)
    assert page.redirect_chain == [("/account/", 302)]  # a reload creates no second token
    key = page.context["new_key"]
    assert key in page.text
    token = ApiToken.objects.get(user=user)
    assert (
        token.name == "nightly" and token.digest != key and key not in client.get("/account/").text
    )
    assert Client().get("/api/scans/", headers={"Authorization": f"Token {key}"}).status_code == 200
    client.post(f"/account/tokens/{token.id}/revoke/")
    assert Client().get("/api/scans/", headers={"Authorization": f"Token {key}"}).status_code == 401


def test_the_account_page_needs_a_login(client):
    assert client.get("/account/").status_code == 302
