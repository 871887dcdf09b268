"""``manage.py scan URL...``: the seed's scraper, through our fetcher and its safety checks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from scans.fetch import Fetched, fetch_all
from scans.forms import parse_urls
from scans.runner import limits_from_settings


class Command(BaseCommand):
    help = "Fetch URLs concurrently and print each page's size as it arrives."

    def add_arguments(self, parser) -> None:
        parser.add_argument("urls", nargs="*", metavar="URL")
        parser.add_argument("--file", type=Path, help="read URLs from this file, one per line")
        parser.add_argument("--concurrency", type=int, default=20)
        parser.add_argument("--sync", action="store_true", help="one URL after another")
        parser.add_argument("--compare", action="store_true", help="run both ways, print speedup")

    def handle(self, *args, **options) -> None:
        text = "\n".join(options["urls"])
        if options["file"]:
            text += "\n" + options["file"].read_text()
        try:
            urls = parse_urls(text)
        except Exception as e:  # noqa: BLE001 - a ValidationError's messages, for a terminal
            raise CommandError("\n".join(getattr(e, "messages", [str(e)]))) from e
        if options["compare"]:
            sequential = self.run(urls, 1)
            concurrent = self.run(urls, options["concurrency"])
            self.stdout.write(f"Speedup: {sequential / concurrent:.1f}x")
        else:
            self.run(urls, 1 if options["sync"] else options["concurrency"])

    def run(self, urls: list[str], concurrency: int) -> float:
        started = time.monotonic()
        asyncio.run(self.fetch(urls, concurrency))
        elapsed = time.monotonic() - started
        self.stdout.write(f"Ran in {elapsed:6.3f} secs")
        return elapsed

    async def fetch(self, urls: list[str], concurrency: int) -> None:
        async for _, result in fetch_all(urls, limits_from_settings(), concurrency):
            self.stdout.write(self.line(result))

    def line(self, result: Fetched) -> str:
        if result.error:
            return f"Failed {result.error:>8} for {result.url}: {result.error_message}"
        return f"Read {result.size:8d} chars from {result.url}"
