"""Claims and leases: a row is held by one worker at a time, written once, and never loops.

The race runs real processes against PostgreSQL (and SQLite, which must be
correct too); the rest drive ``scans.store`` and a real ``Runner`` in this process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings
from django.utils import timezone

from scans import store
from scans.fetch import Fetched
from scans.models import Result, Scan, ScanWorker
from tests.conftest import ROOT, django_code, migrate, project_env

WAIT_S = 60

MAKE_SCAN = """
import sys, django
django.setup()
from scans.models import Result, Scan
total = int(sys.argv[1])
scan = Scan.objects.create(concurrency=10, timeout_s=5, total=total)
Result.objects.bulk_create(
    [Result(scan=scan, position=i, url=f"http://127.0.0.1/{i}") for i in range(total)]
)
print(scan.id)
"""

CLAIMANT = """
import json, os, sys, time, django
django.setup()
from scans import store
scan_id, me, go = sys.argv[1:4]
while not os.path.exists(go):
    time.sleep(0.001)
mine = []
while rows := store.claim(scan_id, me, 7):
    mine += [row.id for row in rows]
    time.sleep(0.002)  # fetching them, as a worker would
print(json.dumps(mine))
"""

CLAIM_TWICE = """
import json, sys, django
django.setup()
from scans import store
scan_id, count = sys.argv[1], int(sys.argv[2])
batches = [store.claim(scan_id, worker, count) for worker in ("first", "second")]
print(json.dumps([[row.position for row in rows] for rows in batches]))
"""

WRITES = """
import json, sys, django
django.setup()
from datetime import timedelta
from django.utils import timezone
from scans import store
from scans.fetch import Fetched
from scans.models import Result, Scan
scan = Scan.objects.create(concurrency=2, timeout_s=5, total=2, status=Scan.RUNNING)
Result.objects.bulk_create(Result(scan=scan, position=i, url=f"http://x/{i}") for i in range(2))
first, second = store.claim(scan.id, "slow", 2)
Result.objects.filter(pk=first.id).update(lease_until=timezone.now() - timedelta(seconds=1))
(taken,) = store.claim(scan.id, "fast", 2)
def fetched(row, size):
    return Fetched(url=row.url, size=size, elapsed_ms=1.5)
writes = {
    "late": store.write_results(
        scan.id,
        "slow",
        [(first, fetched(first, 1)), (second, fetched(second, 20)), (second, fetched(second, 21))],
    ),
    "nothing": store.write_results(scan.id, "slow", [(first, fetched(first, 2))]),
    "last": store.write_results(scan.id, "fast", [(taken, fetched(taken, 10))]),
}
rows = Result.objects.filter(scan=scan).values_list("size", "fetched_by", "state")
print(json.dumps({
    "writes": {
        name: {
            "results": [[r["position"], r["size"]] for r in m["results"]],
            "seq": m["seq"],
            "scan": m["scan"],
        }
        for name, m in writes.items()
    },
    "rows": list(rows),
}))
"""

HOLDERS = """
import json, sys, django
django.setup()
from scans.models import Result
rows = Result.objects.filter(scan_id=sys.argv[1]).values_list("id", "claimed_by", "attempts")
print(json.dumps(list(rows)))
"""


@pytest.fixture(params=["postgres", "sqlite"])
def database_env(request, tmp_path: Path) -> dict[str, str]:
    if request.param == "postgres":
        return project_env(tmp_path, DATABASE_URL=request.getfixturevalue("postgres_url"))
    env = project_env(tmp_path)
    migrate(env)
    return env


def test_workers_racing_on_one_scan_never_hold_the_same_row(database_env, tmp_path):
    scan_id = django_code(database_env, MAKE_SCAN, 2000)
    go = tmp_path / "go"
    claimants = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMANT, scan_id, f"worker-{n}", go],
            cwd=ROOT,
            env=database_env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    go.touch()
    held = {
        f"worker-{n}": json.loads(c.communicate(timeout=WAIT_S)[0]) for n, c in enumerate(claimants)
    }

    every_claim = [row for rows in held.values() for row in rows]
    assert len(every_claim) == len(set(every_claim)) == 2000
    assert all(held.values()), "each worker should have won some rows"
    holders = json.loads(django_code(database_env, HOLDERS, scan_id))
    owner_of = {row: worker for worker, rows in held.items() for row in rows}
    assert all(owner_of[row] == claimed_by for row, claimed_by, _ in holders)
    assert {attempts for _, _, attempts in holders} == {1}


def test_a_claim_takes_at_most_the_rows_asked_for_first_in_the_list_first(database_env):
    scan_id = django_code(database_env, MAKE_SCAN, 40)
    first, second = json.loads(django_code(database_env, CLAIM_TWICE, scan_id, 7))
    assert first == list(range(7))
    assert second == list(range(7, 14))


def test_only_rows_still_held_are_written_once_and_the_last_ends_the_scan(database_env):
    done = json.loads(django_code(database_env, WRITES))
    late, nothing, last = (done["writes"][name] for name in ("late", "nothing", "last"))

    # The row whose claim ran out went to another worker; the other was fetched twice here.
    assert late["results"] == [[1, 20]]
    assert (late["scan"]["done"], late["scan"]["total_bytes"], late["scan"]["status"]) == (
        1, 20, "running"
    )  # fmt: skip
    # A write with nothing still held counts nothing, and has nothing to announce.
    assert nothing["results"] == [] and nothing["seq"] == late["seq"]
    assert last["results"] == [[0, 10]] and last["seq"] == late["seq"] + 1
    scan = last["scan"]
    assert (scan["done"], scan["total_bytes"], scan["sum_ms"], scan["status"]) == (
        2,
        30,
        3.0,
        "done",
    )
    assert scan["finished"] is not None
    assert done["rows"] == [[10, "fast", "ok"], [20, "slow", "ok"]]


# The rest run in this process, on the test database.


@database_sync_to_async
def make_scan(urls: list[str], status: str = Scan.QUEUED) -> Scan:
    scan = Scan.objects.create(concurrency=5, timeout_s=5, total=len(urls), status=status)
    Result.objects.bulk_create(Result(scan=scan, position=i, url=u) for i, u in enumerate(urls))
    return scan


@database_sync_to_async
def rows_of(scan: Scan) -> list[Result]:
    return list(Result.objects.filter(scan=scan).order_by("position"))


@database_sync_to_async
def scan_now(scan: Scan) -> Scan:
    return Scan.objects.get(pk=scan.pk)


async def wait_until_ended(scan: Scan) -> Scan:
    async with asyncio.timeout(WAIT_S):
        while (now := await scan_now(scan)).is_active:
            await asyncio.sleep(0.05)
    return now


def running_scan(rows: int, concurrency: int) -> Scan:
    scan = Scan.objects.create(
        concurrency=concurrency, timeout_s=5, total=rows, status=Scan.RUNNING
    )
    Result.objects.bulk_create(
        Result(scan=scan, position=i, url=f"http://127.0.0.1/{i}") for i in range(rows)
    )
    return scan


def expire_leases(scan: Scan) -> None:
    Result.objects.filter(scan=scan).update(lease_until=timezone.now() - timedelta(seconds=1))


@pytest.mark.django_db(transaction=True)
async def test_a_scan_whose_start_message_was_never_sent_still_runs(target, runner):
    scan = await make_scan([target.url(f"/size/{n}") for n in (10, 20, 30)])
    # No wake-up: only the runner's sweep can find the scan.
    runner.ensure_started()
    ended = await wait_until_ended(scan)
    assert ended.status == Scan.DONE
    assert [(r.state, r.size) for r in await rows_of(scan)] == [("ok", 10), ("ok", 20), ("ok", 30)]


@pytest.mark.django_db(transaction=True)
@override_settings(SCANS_MAX_ATTEMPTS=3)
async def test_a_url_whose_claim_expired_too_often_ends_as_an_error(target, runner):
    scan = await make_scan([target.url("/size/10"), target.url("/size/20")])
    for dead in ("dead-1", "dead-2", "dead-3"):
        # A worker claims the first row, dies, and its lease runs out.
        assert [
            c.position for c in await database_sync_to_async(store.claim)(scan.id, dead, 1)
        ] == [0]
        await database_sync_to_async(expire_leases)(scan)

    runner.start(scan.id)
    ended = await wait_until_ended(scan)

    first, second = await rows_of(scan)
    assert ended.status == Scan.DONE and ended.done == 2
    # Four claims: the three dead workers' and the runner's. Five if a write of the runner's
    # failed and handed its rows back, as SQLite's shared in-memory test database may do
    # while the test reads ("database table is locked"): the URL still ends as an error,
    # and the other row, claimed a second time then, still ends with its answer.
    assert (first.state, first.error) == ("error", "other") and first.attempts in (4, 5)
    assert "gave up" in first.error_message and first.size is None
    assert (second.state, second.size) == ("ok", 20) and second.attempts in (1, 2)


@pytest.mark.django_db(transaction=True)
def test_only_the_worker_holding_a_row_writes_it():
    scan = Scan.objects.create(concurrency=1, timeout_s=5, total=1, status=Scan.RUNNING)
    Result.objects.create(scan=scan, position=0, url="http://127.0.0.1/")
    (slow,) = store.claim(scan.id, "slow", 1)
    expire_leases(scan)
    (fast,) = store.claim(scan.id, "fast", 1)
    assert store.claim(scan.id, "third", 1) == []

    late = store.write_results(scan.id, "slow", [(slow, Fetched(url=slow.url, size=1))])
    written = store.write_results(scan.id, "fast", [(fast, Fetched(url=fast.url, size=2))])
    again = store.write_results(scan.id, "fast", [(fast, Fetched(url=fast.url, size=3))])

    assert late["results"] == [] and again["results"] == []
    assert [r["size"] for r in written["results"]] == [2]
    row = Result.objects.get(scan=scan)
    assert (row.state, row.size, row.fetched_by, row.claimed_by) == ("ok", 2, "fast", "")
    scan.refresh_from_db()
    assert (scan.status, scan.done, scan.total_bytes) == (Scan.DONE, 1, 2)


@pytest.mark.django_db(transaction=True)
def test_a_worker_stopping_hands_its_rows_back_without_spending_an_attempt():
    scan = running_scan(rows=3, concurrency=1)
    assert len(store.claim(scan.id, "stopping", 2)) == 2
    assert len(store.claim(scan.id, "staying", 1)) == 1

    assert store.release_claims("stopping") == [scan.id]

    rows = {r.position: r for r in Result.objects.filter(scan=scan)}
    assert [(rows[i].claimed_by, rows[i].attempts) for i in range(3)] == [
        ("", 0),
        ("", 0),
        ("staying", 1),
    ]
    assert [c.position for c in store.claim(scan.id, "other", 5)] == [0, 1]


@pytest.mark.django_db(transaction=True)
def test_a_row_fetched_twice_by_one_worker_is_written_and_counted_once():
    scan = running_scan(rows=2, concurrency=1)
    first, second = store.claim(scan.id, "w", 2)
    # Its own lease ran out while it fetched, and it claimed the row again.
    expire_leases(scan)
    (again,) = store.claim(scan.id, "w", 1)
    assert again.id == first.id

    batch = [(first, Fetched(url=first.url, size=10)), (again, Fetched(url=again.url, size=11))]
    message = store.write_results(scan.id, "w", [*batch, (second, Fetched(url="", size=20))])

    assert [(r["position"], r["size"]) for r in message["results"]] == [(0, 10), (1, 20)]
    assert list(Result.objects.filter(scan=scan).values_list("size", "fetched_by")) == [
        (10, "w"),
        (20, "w"),
    ]
    scan.refresh_from_db()
    assert (scan.status, scan.done, scan.total_bytes) == (Scan.DONE, 2, 30)


def test_shares_of_a_scans_concurrency_add_up_to_it():
    for concurrency in (1, 2, 5, 6, 100):
        for workers in range(1, 9):
            shares = [store.share_of(concurrency, workers, place) for place in range(workers)]
            assert sum(shares) == concurrency
            assert max(shares) - min(shares) <= 1


@pytest.mark.django_db(transaction=True)
def test_each_worker_on_a_scan_counts_once_until_it_leaves_or_its_lease_runs_out():
    scan = running_scan(rows=9, concurrency=5)
    first, first_rows = store.claim_share(scan.id, "b-worker", 5)
    assert (first, len(first_rows)) == (5, 5)
    # A second worker joins: it gets what is left of the first's part when the first counts
    # again (places go in the order workers joined, whatever their names).
    second, second_rows = store.claim_share(scan.id, "a-worker", 5)
    assert (second, len(second_rows)) == (2, 2)
    third, third_rows = store.claim_share(scan.id, "b-worker", 5)
    assert (third, len(third_rows)) == (3, 2)  # the last two rows
    assert store.join_scan(scan.id, "b-worker") == (2, 0)

    store.leave_scan(scan.id, "a-worker")
    assert store.join_scan(scan.id, "b-worker") == (1, 0)
    store.join_scan(scan.id, "a-worker")
    ScanWorker.objects.filter(worker_id="a-worker").update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    assert store.join_scan(scan.id, "b-worker") == (1, 0)
    assert store.renew_leases("b-worker", [scan.id]) == 7
    assert list(ScanWorker.objects.values_list("worker_id", flat=True)) == ["b-worker"]
    assert store.release_claims("b-worker") == [scan.id]
    assert not ScanWorker.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_scan_deleted_while_it_runs_leaves_a_worker_no_share():
    scan = Scan.objects.create(concurrency=5, timeout_s=5, total=1, status=Scan.RUNNING)
    Scan.objects.filter(pk=scan.pk).delete()
    assert store.claim_share(scan.id, "w", 5) == (0, [])
