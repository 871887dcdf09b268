"""Many processes on the machine's Redis and PostgreSQL: web, workers that die, nothing lost.

Every process here is real (daphne, ``manage.py runworker scan-jobs``), and
so are the sockets, the layer and the database. What a test waits for it
waits for with a generous timeout; what it asserts is what ended up where.
"""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import psycopg
import pytest
from aiohttp import web
from psycopg.rows import dict_row
from yarl import URL

from tests.client import Visitor
from tests.processes import free_port
from tests.target import body_of

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

WAIT_S = 120


def sized_urls(target, count: int, delay_ms: int) -> tuple[list[str], list[int]]:
    sizes = [1000 + 37 * i for i in range(count)]
    return [target.url(f"/size/{size}?delay_ms={delay_ms}") for size in sizes], sizes


async def query(database_url: str, sql: str, *params: object) -> list[dict]:
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as db:
        return await (await db.execute(sql, params)).fetchall()


async def result_rows(database_url: str, scan_id: str) -> list[dict]:
    return await query(
        database_url,
        "SELECT position, state, size, error, fetched_by, claimed_by, attempts"
        " FROM scans_result WHERE scan_id = %s ORDER BY position",
        scan_id,
    )


async def wait_until(check, what: str, timeout_s: float = WAIT_S, every_s: float = 0.05):
    """Polls ``check`` (async, returns a truthy value when done) for at most ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not (found := await check()):
            await asyncio.sleep(every_s)
    assert found, what
    return found


def same_visitor(visitor: Visitor, base_url: str) -> Visitor:
    """The same browser on another web process: its cookies (the session) go along."""
    other = Visitor(base_url)
    for cookie in visitor.session.cookie_jar:
        other.session.cookie_jar.update_cookies({cookie.key: cookie.value}, URL(base_url))
    return other


async def scan_row(database_url: str, scan_id: str) -> dict:
    (scan,) = await query(
        database_url, "SELECT status, done, total FROM scans_scan WHERE id = %s", scan_id
    )
    return scan


async def wait_until_ended(database_url: str, scan_id: str) -> dict:
    async def ended() -> dict | None:
        scan = await scan_row(database_url, scan_id)
        return scan if scan["status"] in ("done", "cancelled") else None

    return await wait_until(ended, "the scan should end")


async def cancel(visitor: Visitor, scan_id: str) -> None:
    """Presses the live page's Cancel button."""
    page_url = f"{visitor.base_url}/scans/{scan_id}/"
    async with visitor.session.get(page_url) as response:
        page = await response.text()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = {"csrfmiddlewaretoken": token}
    async with visitor.session.post(page_url + "cancel/", data=form, allow_redirects=False) as r:
        assert r.status == 302


class SlowSite:
    """Another site, served on the test's own loop, that counts the fetches open on it."""

    def __init__(self):
        self.open = 0
        self.started = 0
        self.port = 0

    def url(self, size: int, delay_ms: int) -> str:
        return f"http://127.0.0.1:{self.port}/size/{size}?delay_ms={delay_ms}"

    async def page(self, request: web.Request) -> web.Response:
        self.open += 1
        self.started += 1
        try:
            await asyncio.sleep(int(request.query["delay_ms"]) / 1000)
            return web.Response(body=body_of(int(request.match_info["size"])))
        finally:
            # Also when the fetcher hangs up: aiohttp then cancels this handler.
            self.open -= 1


@pytest.fixture
async def slow_site() -> AsyncIterator[SlowSite]:
    site = SlowSite()
    app = web.Application()
    app.router.add_get("/size/{size:\\d+}", site.page)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    site.port = tcp._server.sockets[0].getsockname()[1]
    yield site
    await runner.cleanup()


@dataclass
class Seen:
    """What one socket received, read as the live page reads it."""

    results: dict[int, dict] = field(default_factory=dict)
    progressed: list[int] = field(default_factory=list)
    snapshots: int = 0
    statuses: list[str] = field(default_factory=list)


async def watch_like_the_page(ws, total: int, timeout_s: float = WAIT_S) -> Seen:
    """Reads until every result and the scan's end have arrived.

    As live.js does, it asks for a snapshot when ``seq`` skips: a message the
    layer dropped, or one a killed worker never sent, comes back from the database.
    """
    seen, last_seq = Seen(), -1
    while len(seen.results) < total or seen.statuses[-1] not in ("done", "cancelled"):
        message = await ws.receive_json(timeout=timeout_s)
        if message["type"] == "snapshot":
            seen.snapshots += 1
        else:
            seen.progressed += [r["position"] for r in message["results"]]
            if message["seq"] > last_seq + 1:
                await ws.send_json({"type": "snapshot"})
        last_seq = max(last_seq, message["seq"])
        for result in message["results"]:
            if result["state"] != "pending":
                seen.results[result["position"]] = result
        # Out of order, an older message may say "running" after "done".
        if not seen.statuses or seen.statuses[-1] not in ("done", "cancelled"):
            seen.statuses.append(message["scan"]["status"])
    return seen


async def test_it_loses_nothing_when_a_worker_is_killed_midway(
    target, scale_env, make_server, make_worker
):
    env = {**scale_env, "SCANS_LEASE_SECONDS": "2"}
    web_a, web_b = make_server(env), make_server(env)
    workers = [make_worker(env), make_worker(env)]
    victim, survivor = workers
    urls, sizes = sized_urls(target, 400, delay_ms=400)
    database_url = env["DATABASE_URL"]

    async def kill_victim_midway(scan_id: str) -> list[dict]:
        async def both_busy_and_work_left() -> bool:
            rows = await result_rows(database_url, scan_id)
            fetched = [sum(r["fetched_by"] == w.worker_id for r in rows) for w in workers]
            unclaimed = sum(r["state"] == "pending" and not r["claimed_by"] for r in rows)
            return min(fetched) >= 10 and unclaimed >= 50

        await wait_until(both_busy_and_work_left, "both workers should be fetching")
        victim.signal(signal.SIGKILL)
        victim.wait()
        rows = await result_rows(database_url, scan_id)
        return [r for r in rows if r["state"] == "pending" and r["claimed_by"] == victim.worker_id]

    async with Visitor(web_a.url) as visitor:
        scan_id = await visitor.submit(urls, concurrency=10, timeout=30)
        on_b = same_visitor(visitor, web_b.url)
        async with on_b, on_b.socket(scan_id) as ws_b, visitor.socket(scan_id) as ws_a:
            orphans, seen_b, seen_a = await asyncio.gather(
                kill_victim_midway(scan_id),
                watch_like_the_page(ws_b, len(urls)),
                watch_like_the_page(ws_a, len(urls)),
            )
            await ws_b.send_json({"type": "snapshot"})
            last_snapshot = await ws_b.receive_json(timeout=WAIT_S)

    rows = await result_rows(database_url, scan_id)
    assert [(r["state"], r["size"]) for r in rows] == [("ok", size) for size in sizes]
    assert {r["fetched_by"] for r in rows} == {victim.worker_id, survivor.worker_id}
    # The rows the victim held when it died were fetched again, by the survivor.
    assert orphans
    again = {r["position"]: r for r in rows if r["position"] in {o["position"] for o in orphans}}
    assert {r["fetched_by"] for r in again.values()} == {survivor.worker_id}
    assert all(r["attempts"] >= 2 for r in again.values())
    (scan,) = await query(
        database_url, "SELECT status, done FROM scans_scan WHERE id = %s", scan_id
    )
    assert scan == {"status": "done", "done": len(urls)}

    for seen in (seen_a, seen_b):
        # Each result was announced at most once; whatever was not, a snapshot had.
        assert len(seen.progressed) == len(set(seen.progressed))
        assert [seen.results[i]["size"] for i in range(len(urls))] == sizes
        assert seen.statuses[-1] == "done"
    assert last_snapshot["type"] == "snapshot"
    assert [r["size"] for r in last_snapshot["results"]] == sizes


async def test_a_page_that_missed_messages_gets_everything_back_from_a_snapshot(
    target, scale_env, make_server, make_worker
):
    web_server = make_server(scale_env)
    make_worker(scale_env)
    urls, sizes = sized_urls(target, 60, delay_ms=100)
    async with Visitor(web_server.url) as visitor:
        scan_id = await visitor.submit(urls, concurrency=2)
        async with visitor.socket(scan_id) as ws:
            assert (await ws.receive_json(timeout=WAIT_S))["type"] == "snapshot"
            missed: dict[int, dict] = {}
            while len(missed) < 10:
                # Read and thrown away: as if the layer had dropped them.
                message = await ws.receive_json(timeout=WAIT_S)
                missed.update({r["position"]: r for r in message["results"]})
            await ws.send_json({"type": "snapshot"})
            while (message := await ws.receive_json(timeout=WAIT_S))["type"] != "snapshot":
                pass
            recovered = {r["position"]: r for r in message["results"]}
            rest = await watch_like_the_page(ws, len(urls))

    assert all(recovered[p] == result for p, result in missed.items())
    everything = {p: r for p, r in recovered.items() if r["state"] != "pending"} | rest.results
    assert [everything[i]["size"] for i in range(len(urls))] == sizes


async def test_a_scan_whose_wake_up_reached_no_worker_still_runs(
    target, scale_env, make_server, make_worker
):
    # The worker is up first, so its start-up sweep finds nothing: the scan
    # can only be found by a later sweep.
    make_worker(scale_env)
    web_server = make_server({**scale_env, "CHANNELS_PREFIX": f"nobody{uuid.uuid4().hex[:8]}"})
    urls, sizes = sized_urls(target, 5, delay_ms=0)
    async with Visitor(web_server.url) as visitor:
        scan_id = await visitor.submit(urls)
    scan = await wait_until_ended(scale_env["DATABASE_URL"], scan_id)
    rows = await result_rows(scale_env["DATABASE_URL"], scan_id)
    assert scan["status"] == "done"
    assert [(r["state"], r["size"]) for r in rows] == [("ok", size) for size in sizes]


async def test_a_wake_up_the_layer_refuses_does_not_fail_the_submit(
    target, scale_env, make_server, make_worker
):
    # Room for one message on "scan-jobs", and no worker yet to take it.
    web_server = make_server({**scale_env, "CHANNELS_CAPACITY": "1"})
    urls, sizes = sized_urls(target, 3, delay_ms=0)
    async with Visitor(web_server.url) as visitor:
        first = await visitor.submit(urls)
        second = await visitor.submit(urls)  # its wake-up finds the channel full
    make_worker(scale_env)
    for scan_id in (first, second):
        scan = await wait_until_ended(scale_env["DATABASE_URL"], scan_id)
        assert scan["status"] == "done"


async def test_a_worker_cut_off_from_redis_still_finishes_scans(
    target, scale_env, make_server, make_worker
):
    web_server = make_server(scale_env)
    # Nothing listens there: no wake-up reaches this worker and no announcement leaves it.
    worker = make_worker({**scale_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    urls, sizes = sized_urls(target, 5, delay_ms=0)
    async with Visitor(web_server.url) as visitor:
        scan_id = await visitor.submit(urls)
        scan = await wait_until_ended(scale_env["DATABASE_URL"], scan_id)
        snapshot = await visitor.snapshot(scan_id)

    assert scan["status"] == "done"
    assert [(r["state"], r["size"]) for r in snapshot["results"]] == [("ok", s) for s in sizes]
    assert worker.process.poll() is None


async def test_cancel_stops_every_worker_and_ends_pending_rows_as_cancelled(
    slow_site, scale_env, make_server, make_worker
):
    web_server = make_server(scale_env)
    workers = [make_worker(scale_env), make_worker(scale_env)]
    # Far slower than any wait here: a fetch that ends was stopped, not finished.
    urls = [slow_site.url(100 + i, delay_ms=600_000) for i in range(200)]
    database_url = scale_env["DATABASE_URL"]

    async def both_fetching() -> bool:
        rows = await result_rows(database_url, scan_id)
        holders = {r["claimed_by"] for r in rows} - {""}
        return holders == {w.worker_id for w in workers} and slow_site.open >= 5

    async def all_stopped() -> bool:
        return slow_site.open == 0

    async with Visitor(web_server.url) as visitor:
        scan_id = await visitor.submit(urls, concurrency=5, timeout=100)
        await wait_until(both_fetching, "both workers should be fetching")
        async with visitor.socket(scan_id) as ws:
            assert (await ws.receive_json(timeout=WAIT_S))["type"] == "snapshot"
            await cancel(visitor, scan_id)
            shown = await ws.receive_json(timeout=WAIT_S)
            fetches_begun = slow_site.started
            await wait_until(all_stopped, "fetches of a cancelled scan go on")

    assert shown["scan"]["status"] == "cancelled"
    assert {r["error"] for r in shown["results"]} == {"cancelled"} and len(shown["results"]) == 200
    # No fetch began after the cancel, and none of those begun before it is still open.
    assert slow_site.started == fetches_begun >= 5
    rows = await result_rows(database_url, scan_id)
    assert {(r["state"], r["error"], r["claimed_by"]) for r in rows} == {("error", "cancelled", "")}
    assert await scan_row(database_url, scan_id) == {
        "status": "cancelled",
        "done": 200,
        "total": 200,
    }
    assert all(w.process.poll() is None for w in workers), "cancelling a scan stops no worker"


async def test_sigterm_hands_a_workers_rows_back_at_once(
    target, scale_env, make_server, make_worker
):
    # A lease far longer than the test may wait: the rows must come back without it.
    env = {**scale_env, "SCANS_LEASE_SECONDS": "600"}
    web_server = make_server(env)
    leaving, staying = make_worker(env), make_worker(env)
    urls, sizes = sized_urls(target, 300, delay_ms=400)
    database_url = env["DATABASE_URL"]

    async def both_busy_and_work_left() -> bool:
        rows = await result_rows(database_url, scan_id)
        fetched = [sum(r["fetched_by"] == w.worker_id for r in rows) for w in (leaving, staying)]
        unclaimed = sum(r["state"] == "pending" and not r["claimed_by"] for r in rows)
        return min(fetched) >= 10 and unclaimed >= 50

    async with Visitor(web_server.url) as visitor:
        scan_id = await visitor.submit(urls, concurrency=10, timeout=30)
        await wait_until(both_busy_and_work_left, "both workers should be fetching")
        # Read before the signal: the worker may hand its rows back before a read after it.
        held = {
            r["position"]
            for r in await result_rows(database_url, scan_id)
            if r["state"] == "pending" and r["claimed_by"] == leaving.worker_id
        }
        leaving.signal(signal.SIGTERM)
        assert await asyncio.to_thread(leaving.wait, 30) == 0
        after_exit = await result_rows(database_url, scan_id)
        scan = await wait_until_ended(database_url, scan_id)

    assert held and not [r for r in after_exit if r["claimed_by"] == leaving.worker_id]
    rows = await result_rows(database_url, scan_id)
    assert scan["status"] == "done"
    assert [(r["state"], r["size"]) for r in rows] == [("ok", size) for size in sizes]
    assert any(rows[p]["fetched_by"] == staying.worker_id for p in held)
    # Handing rows back spends no attempt, and no lease ever ran out.
    assert {r["attempts"] for r in rows} == {1}


async def test_a_small_scan_behind_a_big_one_finishes_while_the_big_one_runs(
    target, slow_site, scale_env, make_server, make_worker
):
    env = {**scale_env, "SCANS_MAX_URLS": "5000"}
    web_server = make_server(env)
    for _ in range(2):
        make_worker(env)
    big = [target.url(f"/size/{i}?delay_ms=1000") for i in range(3000)]
    # Another site: per-host limits are the host's, not the scan's.
    small = [slow_site.url(10 + i, delay_ms=100) for i in range(10)]
    database_url = env["DATABASE_URL"]

    async def big_is_running() -> bool:
        return (await scan_row(database_url, big_id))["done"] >= 20

    async with Visitor(web_server.url) as visitor:
        big_id = await visitor.submit(big, concurrency=50, timeout=30)
        await wait_until(big_is_running, "the big scan should be running")
        small_id = await visitor.submit(small, concurrency=10)
        small_scan = await wait_until_ended(database_url, small_id)
        big_scan = await scan_row(database_url, big_id)
        await cancel(visitor, big_id)

    assert small_scan == {"status": "done", "done": 10, "total": 10}
    assert big_scan["status"] == "running" and big_scan["done"] < len(big)
    rows = await result_rows(database_url, small_id)
    assert [(r["state"], r["size"]) for r in rows] == [("ok", 10 + i) for i in range(10)]


async def test_workers_share_a_scans_concurrency(slow_site, scale_env, make_server, make_worker):
    web_server = make_server(scale_env)
    workers = [make_worker(scale_env), make_worker(scale_env)]
    urls = [slow_site.url(100 + i, delay_ms=300) for i in range(150)]
    database_url = scale_env["DATABASE_URL"]
    open_at_once: list[int] = []

    async def both_have_fetched() -> bool:
        rows = await result_rows(database_url, scan_id)
        return all(sum(r["fetched_by"] == w.worker_id for r in rows) >= 6 for w in workers)

    async with Visitor(web_server.url) as visitor:
        scan_id = await visitor.submit(urls, concurrency=6, timeout=30)
        await wait_until(both_have_fetched, "both workers should be fetching")
        # A worker gives up what it ran beyond its share as those fetches end (0.3 s each).
        await asyncio.sleep(1.0)
        while (await scan_row(database_url, scan_id))["done"] < len(urls) - 30:
            open_at_once.append(slow_site.open)
            await asyncio.sleep(0.01)
        scan = await wait_until_ended(database_url, scan_id)

    assert scan["status"] == "done"
    # The site saw the scan's 6 fetches at once, not 6 from each worker.
    assert max(open_at_once) == 6, sorted(set(open_at_once))
    rows = await result_rows(database_url, scan_id)
    late = rows[-30:]
    assert {r["fetched_by"] for r in late} == {w.worker_id for w in workers}


async def delete_scan(database_url: str, scan_id: str) -> None:
    """As the admin deletes a scan: its rows and its workers' places, then the scan."""
    async with await psycopg.AsyncConnection.connect(database_url) as db, db.transaction():
        for table, column in (("scans_result", "scan_id"), ("scans_scanworker", "scan_id"),
                              ("scans_scan", "id")):  # fmt: skip
            await db.execute(f"DELETE FROM {table} WHERE {column} = %s", (scan_id,))


async def test_a_scan_deleted_while_it_runs_stops_its_fetches_quietly(
    slow_site, scale_env, make_server, make_worker
):
    web_server = make_server(scale_env)
    worker = make_worker(scale_env)
    # Past the first pages, half end soon (their results come after the delete) and half
    # never do (only stopping them ends them).
    urls = [slow_site.url(100 + i, delay_ms=0) for i in range(3)]
    urls += [slow_site.url(200 + i, delay_ms=300 if i % 2 else 600_000) for i in range(200)]
    database_url = scale_env["DATABASE_URL"]

    async def first_written() -> bool:
        return sum(r["state"] == "ok" for r in await result_rows(database_url, scan_id)) >= 3

    async def all_stopped() -> bool:
        return slow_site.open == 0

    async with Visitor(web_server.url) as visitor:
        scan_id = await visitor.submit(urls, concurrency=5, timeout=100)
        await wait_until(first_written, "the first pages should be written")
        await delete_scan(database_url, scan_id)
        begun_before = slow_site.started
        await wait_until(all_stopped, "fetches of a deleted scan go on", timeout_s=10)
        await asyncio.sleep(1)  # what a worker would still write and log

    # The fetches under way were stopped, not left to their 100 s timeout, and the results
    # that came in between were dropped without an error each time they were tried.
    assert slow_site.started - begun_before < 50
    log = worker.log_path.read_text()
    assert "could not write results" not in log and "Traceback" not in log, log
