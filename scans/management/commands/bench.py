"""``manage.py bench``: the seed's two scrapers against the whole system, on one local site.

See docs/bench.md for what each figure means and the figures measured here.
"""

from __future__ import annotations

import os
import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from scans import benchmark
from scans.benchmark import Options, Report, SystemRun, Watch


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, round(p / 100 * len(ordered) + 0.5) - 1)]


def _or_exited(value: float | None, spec: str) -> str:
    return "(exited)" if value is None else format(value, spec)


def per_thousand(count: float, results: int) -> float:
    return count * 1000 / results


class Command(BaseCommand):
    help = "Measures fetch throughput and socket latency: urllib, aiohttp, and the whole system."
    requires_system_checks = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--urls", type=int, default=10_000, help="pages to fetch (10000)")
        parser.add_argument("--concurrency", type=int, default=100, help="fetches at once (100)")
        parser.add_argument("--delay-ms", type=int, default=0, help="each page's delay (0)")
        parser.add_argument("--size", type=int, default=1000, help="each page's bytes (1000)")
        parser.add_argument(
            "--sync-urls", type=int, help="pages for (a) (default: 200, fewer for slow pages)"
        )
        parser.add_argument("--clients", type=int, default=1, help="sockets watching the scan")
        parser.add_argument(
            "--redis",
            nargs="?",
            const=benchmark.DEFAULT_REDIS_URL,
            metavar="URL",
            help=f"Redis layer and runworker processes ({benchmark.DEFAULT_REDIS_URL})",
        )
        parser.add_argument(
            "--postgres",
            nargs="?",
            const=benchmark.DEFAULT_POSTGRES_URL,
            metavar="URL",
            help=f"a fresh database on this server ({benchmark.DEFAULT_POSTGRES_URL})",
        )
        parser.add_argument("--workers", type=int, default=2, help="runworkers with --redis (2)")
        parser.add_argument(
            "--websocket-max-message-size",
            type=int,
            metavar="BYTES",
            help="passed to daphne, which also refuses to send larger messages (1 MiB)",
        )
        parser.add_argument(
            "--profile", action="store_true", help="record (c) with py-spy, one file a process"
        )

    def handle(self, *args: object, **opts: object) -> None:
        sync_urls = opts["sync_urls"] or benchmark.default_sync_urls(opts["urls"], opts["delay_ms"])
        options = Options(
            urls=opts["urls"],
            concurrency=opts["concurrency"],
            delay_ms=opts["delay_ms"],
            size_bytes=opts["size"],
            sync_urls=min(sync_urls, opts["urls"]),
            clients=opts["clients"],
            redis_url=opts["redis"],
            postgres_url=opts["postgres"],
            workers=opts["workers"],
            profile=opts["profile"],
            websocket_max_message_bytes=opts["websocket_max_message_size"],
        )
        workdir = benchmark.ROOT / "test-artifacts" / "bench" / time.strftime("%Y%m%d-%H%M%S")
        workdir.mkdir(parents=True, exist_ok=True)
        self.stdout.write(self.heading(options))
        report = benchmark.run(options, workdir)
        self.stdout.write(self.summary(report))
        self.stdout.write(self.details(report.system))
        if not all(w.complete for w in report.system.watches):
            raise CommandError(f"a client missed results; logs are in {workdir}")

    def heading(self, options: Options) -> str:
        stack = (
            f"{options.workers} runworker process(es), Redis layer"
            if options.separate_workers
            else "worker embedded in daphne, in-memory layer"
        )
        database = "PostgreSQL" if options.postgres_url else "SQLite"
        return (
            f"{options.urls} URLs of {options.size_bytes} B, {options.delay_ms} ms delay, "
            f"concurrency {options.concurrency}, {options.clients} client(s); "
            f"{stack}, {database}; {os.cpu_count()} CPUs"
        )

    def summary(self, report: Report) -> str:
        sync, ceiling, system = report.sync, report.ceiling, report.system.phase
        rows = [
            ("(a) urllib, one by one", sync),
            ("(b) aiohttp + gather", ceiling),
            ("(f) scans.fetch alone", report.fetcher),
            ("(c) whole system", system),
            ("(b) again, after (c)", report.ceiling_after),
        ]
        lines = [
            f"\n{'':26}{'URLs':>7}{'wall s':>9}{'URLs/s':>9}{'errors':>8}{'CPU s':>8}"
            f"{'target µs/URL':>15}"
        ]
        for name, phase in rows:
            cpu = "–" if phase.cpu_s is None else f"{max(phase.cpu_s, 0):.2f}"
            target = phase.target_us_per_url
            lines.append(
                f"{name:26}{phase.urls:>7}{phase.wall_s:>9.2f}{phase.urls_per_s:>9.0f}"
                f"{phase.errors:>8}{cpu:>8}{'–' if target is None else f'{target:.0f}':>15}"
            )
        lines.append(
            "target µs/URL: the target site's CPU a page meanwhile, the same work each time:"
            " it grows when the machine slows"
        )
        lines.append(
            f"c/b {self.c_over_b(report)};  (a) per URL {sync.wall_s / sync.urls * 1000:.2f} ms;  "
            f"b/a {ceiling.urls_per_s / sync.urls_per_s:.1f};  "
            f"f/b {report.fetcher.urls_per_s / ceiling.urls_per_s:.2f}"
        )
        before, after = report.load_before, report.load_after
        lines.append(f"load average before {before[0]:.2f}, after (c) {after[0]:.2f}")
        return "\n".join(lines)

    def c_over_b(self, report: Report) -> str:
        """(c) against the mean of (b) before and after it; a run that lost results has no
        throughput to compare."""
        if not all(w.complete for w in report.system.watches):
            return "n/a (results missing)"
        # Three places: a run at 0.498 would read as 0.50 with two.
        c = report.system.phase.urls_per_s
        return (
            f"{c / report.ceiling_urls_per_s:.3f} (against the mean of (b) before and after;"
            f" {c / report.ceiling.urls_per_s:.3f} against (b) before,"
            f" {c / report.ceiling_after.urls_per_s:.3f} after)"
        )

    def details(self, system: SystemRun) -> str:
        results = system.phase.urls
        first = system.watches[0]
        scan = first.scan
        latencies = [ms for w in system.watches for ms in w.latencies_ms]
        messages = sum(w.messages for w in system.watches) / len(system.watches)
        lines = [
            "\n(c) in detail",
            f"  submit (form POST to redirect)  {system.submit_s:.2f} s",
            f"  scan, by its own clock          {(scan.get('wall_ms') or 0) / 1000:.2f} s;"
            f" {self.under_way(scan)} fetches under way on average, of {scan.get('concurrency')}",
            "  completion to socket            "
            + "  ".join(f"p{p} {percentile(latencies, p):.0f} ms" for p in (50, 95, 99))
            + f"  (max {max(latencies, default=float('nan')):.0f} ms;"
            f" {len(latencies)} live results, {first.from_snapshot} in client 1's snapshot)",
            f"  socket messages                 {per_thousand(messages, results):.1f}"
            f" per 1,000 results per client ({messages:.0f} per client)",
            self.statements_line(system, first.seq),
            "  peak RSS (VmHWM)                "
            + ", ".join(
                f"{name} {_or_exited(mb, '.0f')} MB" for name, mb in system.peak_rss_mb.items()
            ),
            "  CPU during (c)                  "
            + ", ".join(f"{name} {_or_exited(s, '.1f')} s" for name, s in system.cpu_s.items()),
            self.machine_line(system),
            *self.thread_lines(system),
            self.clients_line(system.watches),
            f"  logs{' and profiles' if any(system.workdir.glob('*.txt')) else ''}"
            f" in {system.workdir}",
        ]
        return "\n".join(lines) + "\n"

    @staticmethod
    def under_way(scan: dict) -> str:
        """The scan's fetch time over its wall time: how full its concurrency was kept."""
        wall_ms = scan.get("wall_ms") or 0
        return f"{scan.get('sum_ms', 0) / wall_ms:.0f}" if wall_ms else "–"

    def machine_line(self, system: SystemRun) -> str:
        busy, total = system.machine_s
        return (
            f"    machine                       {busy:.1f} of {total:.1f} core-seconds busy"
            f" ({100 * busy / total if total else 0:.0f} %)"
        )

    def thread_lines(self, system: SystemRun) -> list[str]:
        """Each project process's busiest threads during (c), from 0.05 s up."""
        lines = []
        for process, threads in system.thread_cpu_s.items():
            busy = sorted(((s, name) for name, s in threads.items() if s >= 0.05), reverse=True)
            shown = ", ".join(f"{name} {s:.2f}" for s, name in busy)
            lines.append(f"    {process + ' by thread':<30}{shown or '-'}")
        return lines

    def statements_line(self, system: SystemRun, seq: int) -> str:
        results = system.phase.urls
        total = sum(system.statements.values(), start=benchmark.Counter())
        writes = sum(total[verb] for verb in benchmark.WRITE_VERBS)
        by_verb = ", ".join(f"{verb} {per_thousand(n, results):.0f}" for verb, n in total.items())
        return (
            f"  DB statements per 1,000 results {per_thousand(writes, results):.0f} writes"
            f" ({by_verb}); {per_thousand(seq, results):.1f} progress writes (Scan.seq)"
        )

    def clients_line(self, watches: list[Watch]) -> str:
        complete = sum(w.complete for w in watches)
        line = (
            f"  clients                         {complete} of {len(watches)} received every"
            f" result; {sum(w.duplicates for w in watches)} duplicates,"
            f" {sum(w.wrong for w in watches)} errors or wrong sizes"
        )
        failures = sorted({w.error for w in watches if w.error})
        return line + "".join(f"\n    {error}" for error in failures[:5])
