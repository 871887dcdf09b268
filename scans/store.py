"""The database side of running scans: claims, leases and conditional writes.

Workers never trust their memory over the database. A row is fetched only by
the worker that holds its claim, and its result is written only while the row
is still pending and still claimed by that worker, so a row is never written
twice, whatever crashes, expires or is cancelled in between.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Now
from django.utils import timezone

from scans.fetch import Fetched
from scans.models import Result, Scan, ScanWorker
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
    """Claims up to ``count`` pending rows of a scan that nobody holds.

    Raw SQL, not the ORM: a worker claims a batch every few tens of milliseconds, and
    building three querysets cost more than running them. On PostgreSQL rows another
    worker is claiming at this moment are skipped, not waited for.
    """
    now, lease_until = _clock_sql()
    free = f"state = %s AND (claimed_by = '' OR lease_until < {now})"
    picked = f"SELECT id FROM {RESULTS} WHERE scan_id = %s AND {free} ORDER BY position LIMIT %s"
    if connection.vendor == "postgresql":
        rows = _claim_in_one_statement(picked, free, lease_until, scan_id, worker_id, count)
    else:
        rows = _claim_in_one_transaction(picked, lease_until, scan_id, worker_id, count)
    return sorted((Claimed(*row) for row in rows), key=operator.attrgetter("position"))


def _claim_in_one_statement(
    picked: str, free: str, lease_until: str, scan_id: uuid.UUID, worker_id: str, count: int
) -> list[tuple]:
    """PostgreSQL: the rows picked once, in a CTE (as a plain subquery of the UPDATE,
    PostgreSQL may run it again per row, and claim far more than ``count`` rows)."""
    sql = (
        f"WITH picked AS MATERIALIZED ({picked} FOR UPDATE SKIP LOCKED) "
        f"UPDATE {RESULTS} SET claimed_by = %s, lease_until = {lease_until}, "
        f"attempts = attempts + 1 WHERE {free} AND id IN (SELECT id FROM picked) "
        "RETURNING id, position, url, attempts"
    )
    params = (_scan_key(scan_id), Result.PENDING, count, worker_id, _lease_param(), Result.PENDING)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _claim_in_one_transaction(
    picked: str, lease_until: str, scan_id: uuid.UUID, worker_id: str, count: int
) -> list[tuple]:
    """SQLite: the rows picked as one JSON array, then claimed by one UPDATE, while the
    transaction holds the database. Not ``UPDATE ... RETURNING``: each row it returns is
    a step of SQLite, and each step let go of the GIL (see ``_update_rows_still_ours``)."""
    rows_sql = (
        "SELECT json_group_array(json_array(id, position, url, attempts + 1)) "
        f"FROM {RESULTS} WHERE id IN ({picked})"
    )
    claim_sql = (
        f"UPDATE {RESULTS} SET claimed_by = %s, lease_until = {lease_until}, "
        "attempts = attempts + 1 "
        "WHERE id IN (SELECT json_extract(value, '$[0]') FROM json_each(%s))"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(rows_sql, (_scan_key(scan_id), Result.PENDING, count))
        rows = json.loads(cursor.fetchone()[0])
        if rows:
            cursor.execute(claim_sql, (worker_id, _lease_param(), json.dumps(rows)))
    return rows


RESULTS = Result._meta.db_table
SCANS = Scan._meta.db_table
WORKERS = ScanWorker._meta.db_table


def share_of(concurrency: int, workers: int, place: int) -> int:
    """This worker's part of a scan's concurrency: the parts add up to it, and differ by one
    at most. 0 when the scan asks for fewer fetches at once than there are workers on it."""
    return concurrency // workers + (place < concurrency % workers)


def join_scan(scan_id: uuid.UUID, worker_id: str) -> tuple[int, int]:
    """Counts the worker as fetching the scan, for a lease; returns how many workers are,
    and this one's place among them. Places go in the order workers joined (a row keeps
    its id when its lease is renewed), so a worker that joins late never pushes one out."""
    now, lease_until = _clock_sql()
    key = _scan_key(scan_id)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {WORKERS} (scan_id, worker_id, lease_until) "
            f"VALUES (%s, %s, {lease_until}) ON CONFLICT (scan_id, worker_id) "
            "DO UPDATE SET lease_until = excluded.lease_until",
            (key, worker_id, _lease_param()),
        )
        cursor.execute(
            f"SELECT worker_id FROM {WORKERS} WHERE scan_id = %s "
            f"AND (lease_until > {now} OR worker_id = %s) ORDER BY id",
            (key, worker_id),
        )
        workers = [worker for (worker,) in cursor.fetchall()]
    return len(workers), workers.index(worker_id)


def share_for(scan_id: uuid.UUID, worker_id: str, concurrency: int) -> int:
    """Joins the scan and returns this worker's share of its concurrency; 0 once the scan
    is gone (deleted while it ran)."""
    try:
        return share_of(concurrency, *join_scan(scan_id, worker_id))
    except IntegrityError:
        return 0


def claim_share(scan_id: uuid.UUID, worker_id: str, concurrency: int) -> tuple[int, list[Claimed]]:
    """Joins the scan and claims this worker's share of its concurrency: (share, rows)."""
    share = share_for(scan_id, worker_id, concurrency)
    return share, claim(scan_id, worker_id, share) if share else []


def leave_scan(scan_id: uuid.UUID, worker_id: str) -> None:
    """The worker no longer fetches the scan: the others may take its share."""
    ScanWorker.objects.filter(scan_id=scan_id, worker_id=worker_id).delete()


def _clock_sql() -> tuple[str, str]:
    """The database's now, and now plus a lease of ``%s`` (see ``_lease_param``), as SQL."""
    if connection.vendor == "postgresql":
        return "STATEMENT_TIMESTAMP()", "STATEMENT_TIMESTAMP() + %s * INTERVAL '1 second'"
    # The text SQLite and Django's Now() write for a datetime, which compares as text.
    return (
        "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'NOW')",
        "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'NOW', %s)",
    )


def _lease_param() -> float | str:
    seconds = settings.SCANS_LEASE_SECONDS
    return seconds if connection.vendor == "postgresql" else f"+{seconds} seconds"


def _scan_key(scan_id: uuid.UUID) -> object:
    return Scan._meta.pk.get_db_prep_value(scan_id, connection)


def _written(
    claimed: Claimed, fetched: Fetched, worker_id: str, adapt: Callable
) -> tuple[tuple, dict]:
    """The UPDATE's parameters for the finished row, and the same result as the pages see it.

    Built straight from the fetch, without a model instance or a field's conversions:
    the flush of every result runs through here. ``adapt`` turns the finished time into
    the statement's parameter (the connection's ``adapt_datetimefield_value``, looked up
    once a batch: ``connection`` is a proxy).
    """
    values = _fetched_values(fetched)
    finished_at = datetime.fromtimestamp(fetched.finished_at, tz=UTC)
    state = Result.ERROR if fetched.error else Result.OK
    params = (*values, adapt(finished_at), state, worker_id, "", None, claimed.id)
    shown = {
        "position": claimed.position,
        "url": claimed.url,
        "state": state,
        **dict(zip(FETCHED_FIELDS, values, strict=True)),
        "finished_at": finished_at.isoformat(),
    }
    return params, shown


def write_results(scan_id: uuid.UUID, worker_id: str, batch: list[tuple[Claimed, Fetched]]) -> dict:
    """Writes the rows still ours and pending; returns their progress message.

    Both ways take the rows, then the scan's row, in the order cancel_scan takes them: no
    deadlock, a cancel never lands between a write's rows and its count, and the scan's
    row, which every worker's writes to the scan wait for, is held only briefly.
    """
    adapt = connection.ops.adapt_datetimefield_value
    written: dict[int, tuple[tuple, dict]] = {}
    for claimed, fetched in batch:
        if claimed.id not in written:  # fetched twice here: the first stands
            written[claimed.id] = _written(claimed, fetched, worker_id, adapt)
    if connection.vendor == "postgresql":
        return _write_in_one_statement(scan_id, worker_id, written)
    return _write_in_one_transaction(scan_id, worker_id, written)


def _write_in_one_transaction(
    scan_id: uuid.UUID, worker_id: str, written: dict[int, tuple[tuple, dict]]
) -> dict:
    """SQLite: the rows still ours, then the count, in one transaction (which holds the
    whole database). ``written``: ``_written`` of each row, by id."""
    with transaction.atomic():
        ids = _update_rows_still_ours(worker_id, written)
        shown = [shown for id_, (_, shown) in written.items() if id_ in ids]
        scan = _count_written(scan_id, shown) if shown else Scan.objects.get(pk=scan_id)
    return message(scan, shown)


def _write_in_one_statement(
    scan_id: uuid.UUID, worker_id: str, written: dict[int, tuple[tuple, dict]]
) -> dict:
    """PostgreSQL: the check, the rows, the count and the scan read back, in one statement
    and one round trip. Locks are taken as in write_results: the rows in id order, then
    the scan's row."""
    fields = [Result._meta.get_field(name) for name in WRITTEN_FIELDS]
    names = [field.column for field in fields]
    arrays = [f"%b::{field.db_type(connection)}[]" for field in (*fields, Result._meta.pk)]
    counted = _count_sql(
        "(SELECT count(*) FROM written)",
        "(SELECT coalesce(sum(size), 0) FROM written)",
        "(SELECT coalesce(sum(elapsed_ms), 0) FROM written)",
    )
    sql = (
        f"WITH ours AS MATERIALIZED (SELECT id FROM {RESULTS} WHERE id = ANY(%s) "
        "AND state = %s AND claimed_by = %s ORDER BY id FOR UPDATE), "
        f"written AS (UPDATE {RESULTS} AS row SET {', '.join(f'{n} = new.{n}' for n in names)} "
        f"FROM unnest({', '.join(arrays)}) AS new({', '.join(names)}, id) "
        "WHERE row.id = new.id AND row.id IN (SELECT id FROM ours) "
        "RETURNING row.id, row.size, row.elapsed_ms), "
        f"counted AS ({counted} AND EXISTS (SELECT 1 FROM written) RETURNING {_SCAN_COLUMNS}) "
        "SELECT counted.*, ARRAY(SELECT id FROM written) AS written_ids FROM counted"
    )
    columns = [list(column) for column in zip(*(row for row, _ in written.values()), strict=True)]
    params = [list(written), Result.PENDING, worker_id, *columns, *_count_params(scan_id)]
    with _server_bound_cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:  # nothing was still ours: nothing counted, nothing to announce
        return message(Scan.objects.get(pk=scan_id), [])
    *values, written_ids = row
    scan = Scan.from_db(connection.alias, _SCAN_FIELDS, values)
    ids = set(written_ids)
    return message(scan, [shown for id_, (_, shown) in written.items() if id_ in ids])


def _server_bound_cursor():
    """PostgreSQL: a cursor that sends the parameters apart from the statement, as psycopg
    dumps them (binary where it can), under Django's wrappers as any cursor.

    Django's own cursors quote every parameter into the SQL text; for a write's arrays
    that was an escape and a regular expression per value, most of the write's Python.
    """
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.ensure_connection()
    cursor = ServerBindingCursor(connection.connection)
    if connection.queries_logged:
        return connection.make_debug_cursor(cursor)
    return connection.make_cursor(cursor)


def _update_rows_still_ours(worker_id: str, written: dict[int, tuple[tuple, dict]]) -> set[int]:
    """SQLite: writes the rows still pending and claimed by the worker, and returns their ids.

    A few steps of SQLite, whatever the number of rows: the ids come back as one JSON
    array, and the rows go as one JSON parameter to one UPDATE. ``executemany`` (and a
    fetch of a row at a time) let go of the GIL at every step, and took it back only
    when the busy fetch loop gave it up: a write of 100 rows then waited for the loop
    a hundred times.
    """
    ours_sql = (
        f"SELECT json_group_array(id) FROM {RESULTS} WHERE id IN "
        "(SELECT value FROM json_each(%s)) AND state = %s AND claimed_by = %s"
    )
    names = [Result._meta.get_field(name).column for name in WRITTEN_FIELDS]
    columns = ", ".join(
        f"json_extract(value, '$[{i}]') AS {name}" for i, name in enumerate([*names, "id"])
    )
    update_sql = (
        f"UPDATE {RESULTS} SET {', '.join(f'{name} = new.{name}' for name in names)} "
        f"FROM (SELECT {columns} FROM json_each(%s)) AS new WHERE {RESULTS}.id = new.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(ours_sql, (json.dumps(list(written)), Result.PENDING, worker_id))
        ours = set(json.loads(cursor.fetchone()[0]))
        if ours:
            rows = [params for id_, (params, _) in written.items() if id_ in ours]
            cursor.execute(update_sql, (json.dumps(rows),))
    return ours


# Everything a progress message shows of the scan, read back by the write that counts.
_SHOWN_OF_SCAN = {
    "id", "status", "total", "done", "concurrency", "timeout_s",
    "total_bytes", "sum_ms", "seq", "created", "started", "finished",
}  # fmt: skip
# In the model's order, as Model.from_db takes them.
_SCAN_FIELDS = tuple(f.attname for f in Scan._meta.concrete_fields if f.attname in _SHOWN_OF_SCAN)
_SCAN_COLUMNS = ", ".join(_SCAN_FIELDS)


def _count_sql(count: str, size: str, elapsed_ms: str) -> str:
    """The UPDATE that counts written results into the scan and ends it when they were its
    last, up to its WHERE; its parameters are ``_count_params``. (On the right of SET, a
    column is its value before.)"""
    ends = f"status = %s AND done + {count} >= total"
    return (
        f"UPDATE {SCANS} SET done = done + {count}, total_bytes = total_bytes + {size}, "
        f"sum_ms = sum_ms + {elapsed_ms}, seq = seq + 1, "
        f"finished = CASE WHEN {ends} THEN %s ELSE finished END, "
        f"status = CASE WHEN {ends} THEN %s ELSE status END "
        "WHERE id = %s"
    )


def _count_params(scan_id: uuid.UUID, counted: tuple = ()) -> tuple:
    """``counted``: the count, size and time, when ``_count_sql`` was given %s for them."""
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    count, key = counted[:1], _scan_key(scan_id)
    return (*counted, Scan.RUNNING, *count, now, Scan.RUNNING, *count, Scan.DONE, key)


def _count_written(scan_id: uuid.UUID, written: list[dict]) -> Scan:
    """Counts the results into the scan and reads it back, in one statement."""
    counted = (
        len(written),
        sum(r["size"] or 0 for r in written),
        sum(r["elapsed_ms"] or 0 for r in written),
    )
    sql = f"{_count_sql('%s', '%s', '%s')} RETURNING {_SCAN_COLUMNS}"
    # A raw queryset turns the columns into the fields' Python values, as a query would.
    return next(iter(Scan.objects.raw(sql, _count_params(scan_id, counted))))


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
            error=Result.CANCELLED,
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
    """Extends the worker's claims on the scans it still runs, and its place on them;
    others' leases run out, and their places go."""
    ScanWorker.objects.filter(worker_id=worker_id, scan_id__in=scan_ids).update(
        lease_until=_lease_until()
    )
    # Places of workers that died: they count for nobody now.
    ScanWorker.objects.filter(lease_until__lt=Now()).delete()
    rows = Result.objects.filter(claimed_by=worker_id, state=Result.PENDING, scan_id__in=scan_ids)
    return rows.update(lease_until=_lease_until())


def release_claims(
    worker_id: str | None, scan_id: uuid.UUID | None = None, *, as_attempt: bool = False
) -> list[uuid.UUID]:
    """Hands a worker's unfinished rows back at once (None: every worker's), and its places on
    their scans; returns the scans.

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
        places = ScanWorker.objects.all()
        if worker_id is not None:
            places = places.filter(worker_id=worker_id)
        if scan_id is not None:
            places = places.filter(scan_id=scan_id)
        places.delete()
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
    """The scans of ``scan_ids`` that should stop: cancelled, ended, or deleted."""
    active = Scan.objects.filter(pk__in=scan_ids, status__in=Scan.ACTIVE)
    return set(scan_ids) - set(active.values_list("id", flat=True))
