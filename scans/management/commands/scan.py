"""``manage.py scan URL...``: the seed's scraper, through our fetcher and its safety checks.

Nothing is stored unless ``--save``: then the scan is kept as if submitted, owned
by ``--user`` (or by nobody, so only staff see it in the admin).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from scans.fetch import Fetched, fetch_all
from scans.forms import parse_urls
from scans.models import Result, Scan
from scans.runner import limits_from_settings

SAVED_FIELDS = (
    "http_status", "size", "wire_size", "content_type", "ttfb_ms", "elapsed_ms", "start_ms",
    "final_url", "redirects", "error", "error_message",
)  # fmt: skip


class Command(BaseCommand):
    help = "Fetch URLs concurrently and print each page's size as it arrives."

    def add_arguments(self, parser) -> None:
        parser.add_argument("urls", nargs="*", metavar="URL")
        parser.add_argument("--file", type=Path, help="read URLs from this file, one per line")
        parser.add_argument("--concurrency", type=int, default=20)
        parser.add_argument("--sync", action="store_true", help="one URL after another")
        parser.add_argument("--compare", action="store_true", help="run both ways, print speedup")
        parser.add_argument("--save", action="store_true", help="store the (last) run as a scan")
        parser.add_argument("--user", help="with --save: the user who owns the scan")

    def handle(self, *args, **options) -> None:
        urls = self.read_urls(options)
        owner = self.owner(options["user"]) if options["save"] else None
        if options["compare"]:
            sequential, _ = self.run(urls, 1)
            concurrent, results = self.run(urls, options["concurrency"])
            self.stdout.write(f"Speedup: {sequential / concurrent:.1f}x")
        else:
            concurrency = 1 if options["sync"] else options["concurrency"]
            concurrent, results = self.run(urls, concurrency)
        if options["save"]:
            scan = save(urls, results, options["concurrency"], owner)
            self.stdout.write(f"Saved as scan {scan.id}")

    def read_urls(self, options: dict) -> list[str]:
        text = "\n".join(options["urls"])
        if options["file"]:
            text += "\n" + options["file"].read_text()
        try:
            return parse_urls(text)
        except Exception as e:  # noqa: BLE001 - a ValidationError's messages, for a terminal
            raise CommandError("\n".join(getattr(e, "messages", [str(e)]))) from e

    def owner(self, username: str | None):
        if username is None:
            return None
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"--user: no user named {username!r}")
        return user

    def run(self, urls: list[str], concurrency: int) -> tuple[float, dict[int, Fetched]]:
        started = time.monotonic()
        results = asyncio.run(self.fetch(urls, concurrency))
        elapsed = time.monotonic() - started
        self.stdout.write(f"Ran in {elapsed:6.3f} secs")
        return elapsed, results

    async def fetch(self, urls: list[str], concurrency: int) -> dict[int, Fetched]:
        results = {}
        async for position, result in fetch_all(urls, limits_from_settings(), concurrency):
            self.stdout.write(self.line(result))
            results[position] = result
        return results

    def line(self, result: Fetched) -> str:
        if result.error:
            return f"Failed {result.error:>8} for {result.url}: {result.error_message}"
        return f"Read {result.size:8d} chars from {result.url}"


def save(urls: list[str], results: dict[int, Fetched], concurrency: int, owner) -> Scan:
    """The run as a finished scan, with one row per URL."""
    finished = [r.finished_at for r in results.values()]
    first_start = min(r.finished_at - (r.elapsed_ms or 0) / 1000 for r in results.values())
    with transaction.atomic():
        scan = Scan.objects.create(
            owner=owner,
            concurrency=concurrency,
            timeout_s=limits_from_settings().timeout_s,
            status=Scan.DONE,
            total=len(urls),
            done=len(urls),
            total_bytes=sum(r.size or 0 for r in results.values()),
            sum_ms=sum(r.elapsed_ms or 0 for r in results.values()),
            started=datetime.fromtimestamp(first_start, tz=UTC),
            finished=datetime.fromtimestamp(max(finished), tz=UTC),
        )
        Result.objects.bulk_create(
            Result(
                scan=scan,
                position=position,
                url=urls[position],
                state=Result.ERROR if fetched.error else Result.OK,
                finished_at=datetime.fromtimestamp(fetched.finished_at, tz=UTC),
                **{name: getattr(fetched, name) for name in SAVED_FIELDS},
            )
            for position, fetched in sorted(results.items())
        )
    return scan
