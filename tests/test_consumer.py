"""The live page's socket, driven with Channels' WebsocketCommunicator against a real runner."""

from __future__ import annotations

import json
import uuid

import pytest
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.utils import timezone

from scans import store
from scans.fetch import Fetched
from scans.models import Result, Scan
from scans.routing import websocket_urlpatterns

pytestmark = pytest.mark.django_db(transaction=True)

application = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))


@database_sync_to_async
def make_scan(urls: list[str], visitor_key: str = "visitor-1", owner=None) -> Scan:
    scan = Scan.objects.create(
        owner=owner,
        visitor_key="" if owner else visitor_key,
        concurrency=5,
        timeout_s=5,
        total=len(urls),
    )
    Result.objects.bulk_create(Result(scan=scan, position=i, url=u) for i, u in enumerate(urls))
    return scan


@database_sync_to_async
def session_cookie(visitor_key: str | None = None, user: User | None = None) -> str:
    session = SessionStore()
    if visitor_key:
        session["visitor_key"] = visitor_key
    if user:
        session["_auth_user_id"] = str(user.pk)
        session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        session["_auth_user_hash"] = user.get_session_auth_hash()
    session.save()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def communicator(scan_id, cookie: str, origin: str = "http://127.0.0.1") -> WebsocketCommunicator:
    headers = [(b"origin", origin.encode()), (b"host", b"127.0.0.1"), (b"cookie", cookie.encode())]
    return WebsocketCommunicator(application, f"/ws/scans/{scan_id}/", headers=headers)


async def receive_until_done(ws: WebsocketCommunicator, total: int) -> list[dict]:
    messages = [await ws.receive_json_from(timeout=10)]
    while messages[-1]["scan"]["status"] != "done":
        messages.append(await ws.receive_json_from(timeout=10))
    return messages


async def test_it_sends_a_snapshot_then_progress_then_done(target, runner):
    urls = [target.url(f"/size/{n}?delay_ms={20 * i}") for i, n in enumerate([10, 2000, 70_000])]
    scan = await make_scan(urls)
    ws = communicator(scan.id, await session_cookie("visitor-1"))
    connected, _ = await ws.connect()
    assert connected
    runner.start(scan.id)
    messages = await receive_until_done(ws, len(urls))
    await ws.disconnect()

    snapshot, *progress = messages
    assert snapshot["type"] == "snapshot" and snapshot["scan"]["status"] == "queued"
    assert snapshot["results"] == []  # nothing has finished; the page has the pending rows
    assert progress and all(m["type"] == "progress" for m in progress)
    assert [m["seq"] for m in progress] == list(range(1, len(progress) + 1))
    sizes = {r["position"]: r["size"] for m in progress for r in m["results"]}
    assert sizes == {0: 10, 1: 2000, 2: 70_000}
    assert progress[-1]["scan"]["done"] == 3 and progress[-1]["scan"]["wall_ms"] > 0


async def test_a_snapshot_request_returns_everything_so_far(target, runner):
    scan = await make_scan([target.url("/size/5"), target.url("/size/6")])
    ws = communicator(scan.id, await session_cookie("visitor-1"))
    await ws.connect()
    runner.start(scan.id)
    await receive_until_done(ws, 2)
    await ws.send_json_to({"type": "snapshot"})
    again = await ws.receive_json_from(timeout=5)
    await ws.disconnect()
    assert again["type"] == "snapshot"
    assert [(r["state"], r["size"]) for r in again["results"]] == [("ok", 5), ("ok", 6)]


@database_sync_to_async
def write_result(scan_id, size: int) -> None:
    """Writes the first row's result as a worker does, without announcing it."""
    store.begin_scan(scan_id)
    claimed = store.claim(scan_id, "test-worker", 1)
    fetched = Fetched(url=claimed[0].url, http_status=200, size=size, wire_size=size)
    store.write_results(scan_id, "test-worker", [(claimed[0], fetched)])


async def test_a_page_opened_after_a_write_sees_it_though_another_just_read_the_scan():
    scan = await make_scan(["http://a.example/", "http://b.example/"])
    cookie = await session_cookie("visitor-1")
    first = communicator(scan.id, cookie)
    await first.connect()
    before = await first.receive_json_from(timeout=5)
    await write_result(scan.id, size=123)
    second = communicator(scan.id, cookie)
    await second.connect()
    after = await second.receive_json_from(timeout=5)
    await first.disconnect()
    await second.disconnect()
    assert before["results"] == []
    assert [(r["position"], r["state"], r["size"]) for r in after["results"]] == [(0, "ok", 123)]
    assert after["seq"] == before["seq"] + 1


async def test_another_visitor_is_refused(target):
    scan = await make_scan([target.url("/size/5")], visitor_key="owner-key")
    for cookie in (await session_cookie("someone-else"), await session_cookie(None), ""):
        connected, _ = await communicator(scan.id, cookie).connect()
        assert not connected


async def test_a_missing_scan_is_refused():
    connected, _ = await communicator(uuid.uuid4(), await session_cookie("visitor-1")).connect()
    assert not connected


async def test_the_owner_user_and_staff_are_let_in_but_not_other_users(target):
    owner, other, staff = await database_sync_to_async(
        lambda: [
            User.objects.create_user("owner"),
            User.objects.create_user("other"),
            User.objects.create_user("staff", is_staff=True),
        ]
    )()
    scan = await make_scan([target.url("/size/5")], owner=owner)
    for user, allowed in ((owner, True), (other, False), (staff, True)):
        ws = communicator(scan.id, await session_cookie(user=user))
        connected, _ = await ws.connect()
        assert connected is allowed, user.username
        if connected:
            await ws.disconnect()


async def test_a_foreign_origin_is_refused(target):
    scan = await make_scan([target.url("/size/5")])
    cookie = await session_cookie("visitor-1")
    connected, _ = await communicator(scan.id, cookie, origin="http://evil.example").connect()
    assert not connected


async def test_garbage_from_the_client_closes_its_socket(target):
    scan = await make_scan([target.url("/size/5")])
    ws = communicator(scan.id, await session_cookie("visitor-1"))
    await ws.connect()
    await ws.receive_json_from()
    await ws.send_to(text_data="{not json")
    closed = await ws.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4400}


async def test_a_flood_of_snapshot_requests_gets_one_snapshot_a_second(target):
    scan = await make_scan([target.url("/size/5")])
    ws = communicator(scan.id, await session_cookie("visitor-1"))
    await ws.connect()
    await ws.receive_json_from()
    for _ in range(50):
        await ws.send_json_to({"type": "snapshot"})
    owed = await ws.receive_json_from(timeout=3)
    assert owed["type"] == "snapshot"
    assert await ws.receive_nothing(timeout=1.2)
    await ws.disconnect()


@database_sync_to_async
def finish_every_row(scan: Scan) -> None:
    now = timezone.now()
    scan.results.update(state=Result.OK, http_status=200, size=10, finished_at=now)


async def test_a_big_scan_snapshot_comes_in_parts_that_fit_a_message():
    scan = await make_scan([f"http://s{i}.example/{'x' * 200}" for i in range(2500)])
    await finish_every_row(scan)
    ws = communicator(scan.id, await session_cookie("visitor-1"))
    await ws.connect()
    parts = [await ws.receive_json_from(timeout=10) for _ in range(3)]
    await ws.disconnect()
    assert [(p["type"], p["part"], p["parts"]) for p in parts] == [
        ("snapshot", 1, 3),
        ("snapshot", 2, 3),
        ("snapshot", 3, 3),
    ]
    assert len({p["seq"] for p in parts}) == 1
    positions = [r["position"] for p in parts for r in p["results"]]
    assert positions == list(range(2500))
    assert max(len(json.dumps(p)) for p in parts) < 1024 * 1024


async def test_progress_carries_the_fetches_under_way(target, runner):
    urls = [target.url("/size/1"), target.url("/size/2?delay_ms=1500")]
    scan = await make_scan(urls)
    ws = communicator(scan.id, await session_cookie("visitor-1"))
    await ws.connect()
    runner.start(scan.id)
    messages = await receive_until_done(ws, len(urls))
    await ws.disconnect()
    first_progress = messages[1]
    assert [r["position"] for r in first_progress["results"]] == [0]
    under_way = dict(first_progress["fetching"])
    assert set(under_way) == {1} and 0 <= under_way[1] < 1000
    assert messages[-1]["fetching"] == []


@pytest.mark.parametrize("in_child", [True, False], ids=["fetch process", "in process"])
async def test_a_fetch_waiting_for_its_site_is_not_shown_under_way(
    target, runner, settings, in_child
):
    """Three pages of one site, one at a time from it: the page shows one bar growing, not
    three. The two that wait get theirs once they start, from where they started."""
    settings.SCANS_FETCH_IN_CHILD = in_child
    settings.SCANS_PER_HOST_LIMIT = 1
    urls = [target.url(f"/size/{n}?delay_ms=700") for n in (1, 2, 3)]
    scan = await make_scan(urls)  # 5 at once, but one at a time from the site
    ws = communicator(scan.id, await session_cookie("visitor-1"))
    await ws.connect()
    runner.start(scan.id)
    messages = await receive_until_done(ws, len(urls))
    await ws.disconnect()
    progress = [m for m in messages if m["type"] == "progress"]
    first_done, second_done = progress[0], progress[1]
    assert [r["position"] for r in first_done["results"]] == [0]
    # One fetch under way beside the first result, started about when the first ended.
    under_way = dict(first_done["fetching"])
    assert len(under_way) == 1, first_done["fetching"]
    (position, start_ms), finished = under_way.popitem(), first_done["results"][0]
    first_end_ms = finished["start_ms"] + finished["elapsed_ms"]
    assert position in (1, 2) and first_end_ms - 50 <= start_ms <= first_end_ms + 200
    assert len(second_done["fetching"]) == 1
