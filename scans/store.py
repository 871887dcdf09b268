"""The database side of running scans: claims, leases and conditional writes.

Workers never trust their memory over the database. A row is fetched only by
the worker that holds its claim, and its result is written only while the row
is still pending and still claimed by that worker, so a row is never written
twice, whatever crashes, expires or is cancelled in between.
"""

from __future__ import annotations

import dataclasses
import operator
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Now
from django.utils import timezone

from scans.fetch import Fetched
from scans.models import Result, Scan
from scans.snapshots import RESULT_FIELDS, message, result_dict

# What a worker writes to a finished row: what the fetcher found, when, its state,
# who found it, and the claim, cleared.
FETCHED_FIELDS = tuple(
    field.name for field in dataclasses.fields(Fetched) if field.name not in ("url", "finished_at")
)
WRITTEN_FIELDS = (
    *FETCHED_FIELDS,
    "finished_at",
    "state",
    "fetched_by",
    "claimed_by",
    "lease_until",
)
_fetched_values = operator.attrgetter(*FETCHED_FIELDS)


@dataclass(frozen=True)
class Claimed:
    id: int
    position: int
    url: str
    attempts: int


@dataclass(frozen=True)
class ScanPlan:
    concurrency: int
    timeout_s: float
    started_epoch: float


# Leases are read and written on the database's clock, the one clock every
# worker shares, so a worker host whose clock is off cannot steal live claims.


def _lease_until() -> CombinedExpression:
    return Now() + timedelta(seconds=settings.SCANS_LEASE_SECONDS)


def _free() -> Q:
    return Q(claimed_by="") | Q(lease_until__lt=Now())


def begin_scan(scan_id: uuid.UUID) -> ScanPlan | None:
    """Marks a queued scan running; None when the scan has nothing left to run."""
    Scan.objects.filter(pk=scan_id, status=Scan.QUEUED).update(
        status=Scan.RUNNING, started=timezone.now()
    )
    scan = Scan.objects.filter(pk=scan_id, status=Scan.RUNNING).first()
    if scan is None:
        return None
    return ScanPlan(scan.concurrency, scan.timeout_s, scan.started.timestamp())


def claim(scan_id: uuid.UUID, worker_id: str, count: int) -> list[Claimed]:
    """Claims up to ``count`` pending rows of a scan that nobody holds."""
    with transaction.atomic():
        rows = Result.objects.filter(scan_id=scan_id, state=Result.PENDING).filter(_free())
        if connection.features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True)
        ids = list(rows.order_by("position").values_list("id", flat=True)[:count])
        if not ids:
            return []
        # Conditional again, though the select locked the rows on PostgreSQL and
        # SQLite's transaction holds the whole database.
        Result.objects.filter(id__in=ids, state=Result.PENDING).filter(_free()).update(
            claimed_by=worker_id, lease_until=_lease_until(), attempts=F("attempts") + 1
        )
        mine = Result.objects.filter(id__in=ids, claimed_by=worker_id)
        return [Claimed(*row) for row in mine.values_list("id", "position", "url", "attempts")]


def _written(claimed: Claimed, fetched: Fetched, worker_id: str) -> tuple[tuple, dict]:
    """The UPDATE's parameters for the finished row, and the same result as the pages see it.

    Built straight from the fetch, without a model instance or a field's conversions:
    the flush of every result runs through here.
    """
    values = _fetched_values(fetched)
    finished_at = datetime.fromtimestamp(fetched.finished_at, tz=UTC)
    state = Result.ERROR if fetched.error else Result.OK
    stored_at = connection.ops.adapt_datetimefield_value(finished_at)
    params = (*values, stored_at, state, worker_id, "", None, claimed.id)
    shown = {
        "position": claimed.position,
        "url": claimed.url,
        "state": state,
        **dict(zip(FETCHED_FIELDS, values, strict=True)),
        "finished_at": finished_at.isoformat(),
    }
    return params, shown


def write_results(scan_id: uuid.UUID, worker_id: str, batch: list[tuple[Claimed, Fetched]]) -> dict:
    """Writes the rows still ours and pending, in one statement; returns their progress message."""
    with transaction.atomic():
        # The rows, then the scan's row, in the order cancel_scan takes them: no deadlock,
        # a cancel never lands between this write's rows and its count, and the scan's
        # row, which every worker's writes to the scan wait for, is held only briefly.
        ours = _still_ours(worker_id, [claimed.id for claimed, _ in batch])
        rows: list[tuple] = []
        written: list[dict] = []
        for claimed, fetched in batch:
            if claimed.id in ours:
                ours.discard(claimed.id)  # fetched twice here: the first result stands
                params, result = _written(claimed, fetched, worker_id)
                rows.append(params)
                written.append(result)
        if rows:
            _update_rows(rows)
            _count_written(scan_id, written)
        scan = Scan.objects.get(pk=scan_id)
    return message(scan, written)


def _update_rows(rows: list[tuple]) -> None:
    """One UPDATE by primary key, run with many parameter sets.

    Not ``bulk_update``: its CASE expressions cost the worker more CPU than the fetches.
    """
    quote = connection.ops.quote_name
    columns = (Result._meta.get_field(name).column for name in WRITTEN_FIELDS)
    assignments = ", ".join(f"{quote(column)} = %s" for column in columns)
    sql = f"UPDATE {quote(Result._meta.db_table)} SET {assignments} WHERE {quote('id')} = %s"
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def _still_ours(worker_id: str, ids: list[int]) -> set[int]:
    """The rows of ``ids`` still pending and claimed by the worker, locked until commit
    in the order of their ids (on SQLite the transaction holds the whole database)."""
    rows = Result.objects.select_for_update().filter(
        pk__in=ids, state=Result.PENDING, claimed_by=worker_id
    )
    return set(rows.order_by("pk").values_list("pk", flat=True))


def _count_written(scan_id: uuid.UUID, written: list[dict]) -> None:
    Scan.objects.filter(pk=scan_id).update(
        done=F("done") + len(written),
        total_bytes=F("total_bytes") + sum(r["size"] or 0 for r in written),
        sum_ms=F("sum_ms") + sum(r["elapsed_ms"] or 0 for r in written),
        seq=F("seq") + 1,
    )
    Scan.objects.filter(pk=scan_id, status=Scan.RUNNING, done__gte=F("total")).update(
        status=Scan.DONE, finished=timezone.now()
    )


def cancel_scan(scan_id: uuid.UUID) -> dict | None:
    """Cancels an active scan: its pending rows end as cancelled. None if it was not active."""
    now = timezone.now()
    with transaction.atomic():
        # The pending rows first, in the order of their ids, then the scan's row, as
        # write_results takes them; a write in progress ends first, and its rows
        # are no longer pending when this reads them again.
        pending = Result.objects.filter(scan_id=scan_id, state=Result.PENDING)
        locked = pending.select_for_update().order_by("pk")
        positions = list(locked.values_list("position", flat=True))
        if not Scan.objects.filter(pk=scan_id, status__in=Scan.ACTIVE).update(
            status=Scan.CANCELLED, finished=now
        ):
            return None
        pending.update(
            state=Result.ERROR,
            error="cancelled",
            error_message="the scan was cancelled before this URL finished",
            finished_at=now,
            claimed_by="",
            lease_until=None,
        )
        Scan.objects.filter(pk=scan_id).update(done=F("total"), seq=F("seq") + 1)
        Scan.objects.filter(pk=scan_id, started__isnull=True).update(started=now)
        scan = Scan.objects.get(pk=scan_id)
        rows = Result.objects.filter(scan_id=scan_id, position__in=positions)
        written = [result_dict(v) for v in rows.values(*RESULT_FIELDS)]
    return message(scan, written)


def renew_leases(worker_id: str, scan_ids: list[uuid.UUID]) -> int:
    """Extends the worker's claims on the scans it still runs; others' leases run out."""
    rows = Result.objects.filter(claimed_by=worker_id, state=Result.PENDING, scan_id__in=scan_ids)
    return rows.update(lease_until=_lease_until())


def release_claims(
    worker_id: str | None, scan_id: uuid.UUID | None = None, *, as_attempt: bool = False
) -> list[uuid.UUID]:
    """Hands a worker's unfinished rows back at once (None: every worker's); returns their scans.

    A worker stopping in good order spends no attempt; a crash or a failure
    does (``as_attempt``), as an expired lease would, so a URL that keeps
    killing its worker still ends as an error.
    """
    with transaction.atomic():
        rows = Result.objects.filter(state=Result.PENDING).exclude(claimed_by="")
        if worker_id is not None:
            rows = rows.filter(claimed_by=worker_id)
        if scan_id is not None:
            rows = rows.filter(scan_id=scan_id)
        scan_ids = list(rows.values_list("scan_id", flat=True).order_by().distinct())
        if as_attempt:
            rows.update(claimed_by="", lease_until=None)
        else:
            rows.update(claimed_by="", lease_until=None, attempts=F("attempts") - 1)
    return scan_ids


def scans_with_work() -> list[uuid.UUID]:
    """Active scans that have pending rows nobody holds (lost wake-ups, dead workers)."""
    rows = Result.objects.filter(scan__status__in=Scan.ACTIVE, state=Result.PENDING)
    return list(rows.filter(_free()).values_list("scan_id", flat=True).order_by().distinct())


def cancelled_among(scan_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    return set(
        Scan.objects.filter(pk__in=scan_ids)
        .exclude(status__in=Scan.ACTIVE)
        .values_list("id", flat=True)
    )
