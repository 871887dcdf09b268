"""What a visitor's requests do to scans: create one (the scan and all its pending rows in
one transaction, then a wake-up) and cancel one."""

from __future__ import annotations

import json
import uuid

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connection, transaction

from scans import store
from scans.models import Result, Scan


def visitor_key(request, create: bool = False) -> str | None:
    """The anonymous visitor's own key, kept in their session."""
    key = request.session.get("visitor_key")
    if key is None and create:
        key = request.session["visitor_key"] = uuid.uuid4().hex
    return key


def create_scan(request, urls: list[str], concurrency: int, timeout_s: float) -> Scan:
    """A new scan owned by the request's user, or else by its session's visitor."""
    user = request.user if request.user.is_authenticated else None
    key = "" if user else visitor_key(request, create=True)
    return _create(urls, concurrency, timeout_s, owner=user, visitor_key=key)


def run_again(scan: Scan) -> Scan:
    """A new scan of the same URLs with the same options, for the same owner."""
    urls = list(scan.results.order_by("position").values_list("url", flat=True))
    return _create(urls, scan.concurrency, scan.timeout_s, scan.owner, scan.visitor_key)


def _create(urls: list[str], concurrency: int, timeout_s: float, owner, visitor_key: str) -> Scan:
    with transaction.atomic():
        scan = Scan.objects.create(
            owner=owner,
            visitor_key=visitor_key,
            concurrency=concurrency,
            timeout_s=timeout_s,
            total=len(urls),
        )
        _insert_pending_rows(scan, urls)
        transaction.on_commit(lambda: wake_worker(scan.id))
    return scan


def _insert_pending_rows(scan: Scan, urls: list[str]) -> None:
    """Inserts a row per URL, every other column at its default: with COPY on PostgreSQL,
    else with one INSERT that reads the URLs from one JSON array.

    Not ``bulk_create``: a model instance per URL cost more than the insert itself.
    """
    meta = Result._meta
    fixed = {field: field.get_default() for field in meta.concrete_fields}
    fixed[meta.get_field("scan")] = scan.pk
    for name in ("id", "position", "url"):
        del fixed[meta.get_field(name)]
    values = [field.get_db_prep_save(value, connection) for field, value in fixed.items()]
    quote = connection.ops.quote_name
    columns = ", ".join(
        [*(quote(field.column) for field in fixed), quote("position"), quote("url")]
    )
    table = quote(meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # 10,000 rows in 0.1 s, against 0.5 s for executemany.
            with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for position, url in enumerate(urls):
                    copy.write_row((*values, position, url))
        else:
            # 10,000 rows in 32 ms, against 91 ms for executemany (a step of SQLite a row).
            marks = ", ".join(["%s"] * len(values))
            sql = f"INSERT INTO {table} ({columns}) SELECT {marks}, key, value FROM json_each(%s)"
            cursor.execute(sql, [*values, json.dumps(urls, ensure_ascii=False)])


def wake_worker(scan_id: uuid.UUID) -> None:
    """Tells a worker to start the scan. A lost wake-up only delays it until a sweep."""
    if settings.SCANS_RUN_IN_WEB:
        from scans.runner import get_runner

        runner = get_runner()
        # Only a server's loop runs scans; without one the sweep will find it.
        if runner.loop is not None and runner.loop.is_running():
            runner.loop.call_soon_threadsafe(runner.start, scan_id)
        return
    from scans.runner import wake

    async_to_sync(wake)(scan_id)


def cancel(scan: Scan) -> bool:
    """Cancels an active scan and tells every watching page; False if it had ended."""
    from scans.announcer import announce_or_log

    message = store.cancel_scan(scan.id)
    if message is None:
        return False
    async_to_sync(announce_or_log)(scan.id, message)
    return True
