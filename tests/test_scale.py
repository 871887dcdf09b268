"""Many processes on the machine's Redis and PostgreSQL: web, workers that die, nothing lost.

Every process here is real (daphne, ``manage.py runworker scan-jobs``), and
so are the sockets, the layer and the database. What a test waits for it
waits for with a generous timeout; what it asserts is what ended up where.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg.rows import dict_row
from yarl import URL

from tests.client import Visitor

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
