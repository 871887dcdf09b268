"""The throughput and latency benchmark behind ``manage.py bench``.

One run starts the local target site (tests/target.py) in a process of its
own and fetches the same pages three ways:

(a) the seed's synchronous shape: urllib, one URL after another;
(b) the seed's async shape: one aiohttp ClientSession and asyncio.gather,
    streaming and counting bytes; the ceiling;
(f) the project's own fetcher alone (scans.fetch), to tell its cost from
    the rest of the pipeline's;
(c) the whole system: real daphne (and ``runworker`` with Redis) processes on
    a fresh database, the scan posted through the form, every result written
    and read back from K WebSocket clients.

The project's processes are started through ``python -m scans.benchmark``,
which counts their SQL statements by verb into a file, so the benchmark sees
the database work per result without touching the code it measures.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from tests.client import Visitor
from tests.processes import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
CHUNK_BYTES = 64 * 1024
# Not the tests' database 15: a worker there would take the tests' wake-ups.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/postgres"
WRITE_VERBS = ("INSERT", "UPDATE", "DELETE")
STATEMENTS_EVERY_S = 0.5
IDLE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Options:
    urls: int = 10_000
    concurrency: int = 100
    delay_ms: int = 0
    size_bytes: int = 1000
    sync_urls: int = 200
    clients: int = 1
    redis_url: str | None = None
    postgres_url: str | None = None
    workers: int = 2
    profile: bool = False
    # Daphne's own default (1 MiB) when None; it caps what the server sends too.
    websocket_max_message_bytes: int | None = None

    @property
    def separate_workers(self) -> bool:
        return self.redis_url is not None


def default_sync_urls(urls: int, delay_ms: int) -> int:
    """Enough URLs for a per-URL cost, few enough to take seconds, not minutes."""
    return min(urls, 200 if delay_ms == 0 else max(3, 3000 // delay_ms))


@dataclass
class Phase:
    """One way of fetching the pages, and how long it took."""

    urls: int
    wall_s: float
    body_bytes: int
    errors: int
    # This process's CPU during (a), (b) and (f), which run in it; (c)'s is by process.
    cpu_s: float | None = None
    # The target's CPU meanwhile. It does the same work for a page in every phase, so its
    # CPU per page tells how fast the machine was then: a VM's cores change speed as
    # their neighbours work.
    target_cpu_s: float | None = None

    @property
    def target_us_per_url(self) -> float | None:
        return None if self.target_cpu_s is None else self.target_cpu_s / self.urls * 1e6

    @property
    def urls_per_s(self) -> float:
        return self.urls / self.wall_s


@dataclass
class Watch:
    """What one WebSocket client saw of the scan."""

    total: int
    expected_size: int
    messages: int = 0
    from_snapshot: int = 0
    duplicates: int = 0
    wrong: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    last_result_at: float = 0.0
    scan: dict = field(default_factory=dict)
    seq: int = 0
    error: str = ""

    @property
    def complete(self) -> bool:
        return len(self.seen) == self.total and not self.error


@dataclass
class SystemRun:
    """(c): the whole system, and what its processes spent on it."""

    phase: Phase
    submit_s: float
    watches: list[Watch]
    statements: dict[str, Counter]
    peak_rss_mb: dict[str, float | None]
    cpu_s: dict[str, float | None]
    thread_cpu_s: dict[str, dict[str, float]]
    workdir: Path
    # The machine's busy and total core-seconds during (c): the target, the clients, the
    # project's processes, PostgreSQL and Redis, and whatever else ran meanwhile.
    machine_s: tuple[float, float] = (0.0, 0.0)


@dataclass
class Report:
    options: Options
    sync: Phase
    ceiling: Phase
    fetcher: Phase
    system: SystemRun
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    # (b) again once (c) is over and its processes have stopped: c/b is against the mean
    # of the two, so that the machine slowing or speeding up during the run moves both sides.
    ceiling_after: Phase

    @property
    def ceiling_urls_per_s(self) -> float:
        return (self.ceiling.urls_per_s + self.ceiling_after.urls_per_s) / 2


# Processes


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def peak_rss_mb(pid: int) -> float | None:
    """The process's resident-set high-water mark (VmHWM) so far; None once it has exited."""
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def cpu_s(pid: int) -> float | None:
    """User plus system CPU time the process has used so far; None once it has exited."""
    with suppress(OSError):
        return cpu_s_of(Path(f"/proc/{pid}/stat"))
    return None


def children_of(pid: int) -> list[int]:
    """The process's child processes, whichever of its threads started them."""
    children = []
    with suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(OSError):
                children += [int(child) for child in (task / "children").read_text().split()]
    return children


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU time so far of each of the process's threads, by native thread id."""
    used = {}
    with suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(OSError):
                used[int(task.name)] = cpu_s_of(task / "stat")
    return {tid: s for tid, s in used.items() if s is not None}


# The services a run with --redis --postgres uses, by the name their processes go by.
SERVICES = {"postgres": "postgres", "redis-server": "redis"}


ServiceCPU = dict[int, tuple[str, float]]


def service_cpu_s() -> ServiceCPU:
    """CPU time so far of this machine's PostgreSQL and Redis processes, by pid."""
    used = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with suppress(OSError):
            service = SERVICES.get((proc / "comm").read_text().strip())
            if service is not None and (s := cpu_s_of(proc / "stat")) is not None:
                used[int(proc.name)] = (service, s)
    return used


def services_used_s(after: ServiceCPU, before: ServiceCPU) -> Counter:
    """Each service's CPU between two readings: a process started meanwhile counts whole; one
    that ended meanwhile is not counted."""
    used: Counter[str] = Counter()
    for pid, (service, s) in after.items():
        used[service] += s - (before[pid][1] if pid in before else 0)
    return used


def machine_cpu_s() -> tuple[float, float]:
    """(busy, all) core-seconds of the whole machine so far, from /proc/stat."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK"), sum(fields) / os.sysconf("SC_CLK_TCK")


def cpu_s_of(stat: Path) -> float | None:
    fields = stat.read_text().rpartition(")")[2].split()
    if fields[0] == "Z":
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Target:
    """tests/target.py in a process of its own, so it shares no GIL with the clients."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.log_path = workdir / "target.log"

    def __enter__(self) -> Target:
        command = [sys.executable, "-m", "scans.benchmark", "target", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)
        wait_for_port(self.port, self.process)
        return self

    def __exit__(self, *exc_info: object) -> None:
        stop(self.process)

    def urls(self, count: int, size_bytes: int, delay_ms: int) -> list[str]:
        base = f"http://127.0.0.1:{self.port}/size/{size_bytes}?delay_ms={delay_ms}"
        return [f"{base}&page={i}" for i in range(count)]


# (a) and (b): the seed's two shapes


def fetch_one_by_one(urls: list[str]) -> Phase:
    """(a): urllib, one URL after another, each on a new connection."""
    body_bytes = errors = 0
    started = time.perf_counter()
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=IDLE_TIMEOUT_S) as response:
                while chunk := response.read(CHUNK_BYTES):
                    body_bytes += len(chunk)
        except OSError:
            errors += 1
    return Phase(len(urls), time.perf_counter() - started, body_bytes, errors)


async def fetch_gathered(urls: list[str], concurrency: int) -> Phase:
    """(b): one ClientSession, ``concurrency`` fetches at a time, bodies streamed and counted."""
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def one(session: aiohttp.ClientSession, url: str) -> int | None:
        async with gate:
            try:
                async with session.get(url) as response:
                    body_bytes = 0
                    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                        body_bytes += len(chunk)
                    return body_bytes
            except (aiohttp.ClientError, OSError, TimeoutError):
                return None

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        sizes = await asyncio.gather(*(one(session, url) for url in urls))
        wall_s = time.perf_counter() - started
    errors = sum(size is None for size in sizes)
    return Phase(len(urls), wall_s, sum(size or 0 for size in sizes), errors)


async def fetch_with_fetcher(urls: list[str], concurrency: int, timeout_s: float) -> Phase:
    """(f): the project's own fetcher alone (``scans.fetch.fetch_all``), before any database."""
    from scans.addresses import parse_networks
    from scans.fetch import Limits, fetch_all

    limits = Limits(
        timeout_s=timeout_s,
        per_host=concurrency,
        max_open=max(concurrency, 1000),
        allowed_networks=tuple(parse_networks("127.0.0.1/32")),
        allowed_ports=None,
    )
    body_bytes = errors = 0
    started = time.perf_counter()
    async for _, fetched in fetch_all(urls, limits, concurrency):
        errors += fetched.error is not None
        body_bytes += fetched.size or 0
    return Phase(len(urls), time.perf_counter() - started, body_bytes, errors)


# (c): the whole system


# What a stalled run leaves behind: where its rows are, and who holds what in PostgreSQL.
STALL_QUERIES = (
    "SELECT status, total, done, seq FROM scans_scan",
    "SELECT state, claimed_by, lease_until < now(), attempts, count(*) FROM scans_result"
    " GROUP BY 1, 2, 3, 4",
    "SELECT pid, application_name, state, now() - xact_start, wait_event_type, wait_event,"
    " left(query, 300) FROM pg_stat_activity WHERE datname = current_database()",
    "SELECT pid, mode, granted, relation::regclass, count(*) FROM pg_locks"
    " WHERE database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " GROUP BY 1, 2, 3, 4",
)


class Project:
    """The system under test: a fresh database, one daphne, and with Redis, runworker processes."""

    def __init__(self, options: Options, workdir: Path):
        self.options = options
        self.workdir = workdir
        self.port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}
        self.database_name: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def services(self) -> set[str]:
        """The services of SERVICES this run's processes use."""
        used = {"postgres": self.options.postgres_url, "redis": self.options.redis_url}
        return {service for service, url in used.items() if url}

    def __enter__(self) -> Project:
        try:
            self.env = self._env(self._create_database())
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
                cwd=ROOT,
                env=self.env,
                check=True,
            )
            self._start_all()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start_all(self) -> None:
        web = ["daphne", "-b", "127.0.0.1", "-p", str(self.port)]
        if self.options.websocket_max_message_bytes is not None:
            web += ["--websocket-max-message-size", str(self.options.websocket_max_message_bytes)]
        web.append("scraperproj.asgi:application")
        wait_for_port(self.port, self._start("web", web))
        if self.options.separate_workers:
            workers = [f"worker-{n}" for n in range(1, self.options.workers + 1)]
            for name in workers:
                self._start(name, ["manage", "runworker", "scan-jobs"])
            # A worker counts its first statement (its first sweep) once it is up.
            self._wait_for(lambda: all(self.statements().get(name) for name in workers))

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes.values():
            stop(process)
        if self.database_name:
            self._drop_database()

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        env = {**self.env, "BENCH_STATEMENTS": str(self.workdir / f"{name}.statements.json")}
        with open(self.workdir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "scans.benchmark", *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes[name] = process
        return process

    def _wait_for(self, ready, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not start: see {self.workdir}")
            time.sleep(0.1)

    def _env(self, database_url: str) -> dict[str, str]:
        options = self.options
        env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
        env.update(
            DJANGO_SETTINGS_MODULE="scraperproj.settings",
            SECRET_KEY="bench-only-secret-key-" + "x" * 40,
            DEBUG="0",
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="WARNING",
            DATABASE_URL=database_url,
            SCANS_ALLOWED_NETWORKS="127.0.0.1/32",
            SCANS_ALLOWED_PORTS="*",
            SCANS_MAX_URLS=str(max(options.urls, 1000)),
            SCANS_MAX_CONCURRENCY=str(max(options.concurrency, 100)),
            # Every page is on one host, as it is for (b).
            SCANS_PER_HOST_LIMIT=str(options.concurrency),
            SCANS_WORKER_MAX_FETCHES=str(max(options.concurrency, 1000)),
            # A Redis of its own within the shared one: no wake-ups taken from tests.
            CHANNELS_PREFIX=f"bench-{uuid.uuid4().hex[:8]}",
        )
        if options.redis_url:
            env["REDIS_URL"] = options.redis_url
        return env

    def _create_database(self) -> str:
        if not self.options.postgres_url:
            return f"sqlite:///{self.workdir / 'db.sqlite3'}"
        import psycopg

        self.database_name = f"scraperproj_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.options.postgres_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.database_name}"')
        return urlsplit(self.options.postgres_url)._replace(path=f"/{self.database_name}").geturl()

    def _drop_database(self) -> None:
        import psycopg

        with psycopg.connect(self.options.postgres_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)')

    def describe_stall(self, scan_id: str) -> None:
        """Leaves what a stalled run's processes and database were doing in ``stall.txt``."""
        lines = [f"scan {scan_id}"]
        for sql in STALL_QUERIES:
            lines += ["", sql]
            try:
                lines += [repr(row) for row in self._query(sql)]
            except Exception as e:  # noqa: BLE001 - a diagnosis goes on without one query
                lines.append(f"failed: {e}")
        py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
        for name, pid in self.pids().items() if py_spy else ():
            dump = subprocess.run(
                [py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True
            )
            lines += ["", f"py-spy dump of {name}", dump.stdout, dump.stderr]
        (self.workdir / "stall.txt").write_text("\n".join(lines))
        print(f"the scan stalled: see {self.workdir / 'stall.txt'}", file=sys.stderr)

    def _query(self, sql: str) -> list[tuple]:
        if not self.database_name:
            import sqlite3

            if "pg_" in sql:
                return []
            with sqlite3.connect(self.workdir / "db.sqlite3") as connection:
                return connection.execute(sql.replace("now()", "datetime('now')")).fetchall()
        import psycopg

        url = urlsplit(self.options.postgres_url)._replace(path=f"/{self.database_name}").geturl()
        with psycopg.connect(url, autocommit=True) as connection:
            return connection.execute(sql).fetchall()

    def statements(self) -> dict[str, Counter]:
        counts = {}
        for name in self.processes:
            path = self.workdir / f"{name}.statements.json"
            counts[name] = Counter(json.loads(path.read_text())) if path.exists() else Counter()
        return counts

    def pids(self) -> dict[str, int]:
        """The project's processes, and the fetch process each started (``web fetches``)."""
        pids = {}
        for name, process in self.processes.items():
            pids[name] = process.pid
            for number, child in enumerate(children_of(process.pid), start=1):
                pids[f"{name} fetches" + (f" {number}" if number > 1 else "")] = child
        return pids

    def peak_rss_mb(self) -> dict[str, float | None]:
        return {name: peak_rss_mb(pid) for name, pid in self.pids().items()}

    def cpu_s(self) -> dict[str, float | None]:
        return {name: cpu_s(pid) for name, pid in self.pids().items()}

    def thread_cpu_s(self) -> dict[str, dict[str, float]]:
        """CPU so far of each project process's threads, by the names Python gave them."""
        used = {}
        for name, pid in self.pids().items():
            path = self.workdir / f"{name}.threads.json"
            names = json.loads(path.read_text()) if path.exists() else {}
            names.setdefault(str(pid), "MainThread")
            by_name: Counter[str] = Counter()
            for tid, s in thread_cpu_s(pid).items():
                by_name[names.get(str(tid), f"thread {tid}")] += s  # names may repeat
            used[name] = dict(by_name)
        return used


class Profiler:
    """py-spy recording every project process, one raw (collapsed-stack) file each."""

    def __init__(self, project: Project):
        py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        self.processes = []
        for name, pid in project.pids().items():
            file = name.replace(" ", "-")
            output = project.workdir / f"{file}.py-spy.txt"
            command = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--threads"]
            command += ["--nonblocking", "--format", "raw", "--output", str(output)]
            with open(project.workdir / f"{file}.py-spy.log", "ab") as log:
                self.processes.append(subprocess.Popen(command, stdout=log, stderr=log))
        time.sleep(1)  # py-spy takes a moment to attach.

    def stop(self) -> None:
        for process in self.processes:
            stop(process, signal.SIGINT)


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass(frozen=True)
class Frame:
    """A socket message as the clients use it: each result's position, whether it is ok
    and of ``size`` bytes, and when its fetch finished."""

    message: dict
    results: list[tuple[int, bool, int | None, float]]


@functools.lru_cache(maxsize=256)
def parse_frame(text: str) -> Frame:
    """Parsed once for all the clients that receive the same text: each browser parses
    on a CPU of its own, and 200 clients parsing every message on one shared core were
    the slowest part of a run with 200 sockets."""
    message = json.loads(text)
    results = [
        (r["position"], r["state"] == "ok", r["size"], _seconds(r["finished_at"]))
        for r in message["results"]
        if r["state"] != "pending"
    ]
    return Frame(message, results)


def _note_results(watch: Watch, frame: Frame, received_at: float) -> None:
    live = frame.message["type"] == "progress"
    for position, ok, size, finished_at in frame.results:
        if position in watch.seen:
            watch.duplicates += 1
            continue
        watch.seen.add(position)
        watch.last_result_at = received_at
        if not ok or size != watch.expected_size:
            watch.wrong += 1
        if live:
            watch.latencies_ms.append((received_at - finished_at) * 1000)
        else:
            watch.from_snapshot += 1


async def watch_scan(
    session: aiohttp.ClientSession, base_url: str, scan_id: str, total: int, size_bytes: int
) -> Watch:
    """One client: reads the scan's socket until it holds every result and the scan is over."""
    watch = Watch(total, size_bytes)
    url = f"{base_url.replace('http', 'ws', 1)}/ws/scans/{scan_id}/"
    try:
        async with session.ws_connect(url, headers={"Origin": base_url}, max_msg_size=0) as ws:
            while len(watch.seen) < total or watch.scan.get("status") not in ("done", "cancelled"):
                # Around the whole receive: daphne's pings, answered inside it, would
                # restart its own timeout, and a scan that stalls would hang the run.
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    frame = await ws.receive()
                received_at = time.time()
                if frame.type != aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"the socket ended: {frame.type.name} {frame.data}")
                parsed = parse_frame(frame.data)
                message = parsed.message
                watch.messages += 1
                if message["seq"] >= watch.seq:  # as live.js: another worker's older one may follow
                    watch.scan, watch.seq = message["scan"], message["seq"]
                _note_results(watch, parsed, received_at)
    except (aiohttp.ClientError, ConnectionError, TimeoutError) as e:
        watch.error = f"{type(e).__name__}: {e}"
    return watch


def _form_timeout_s(delay_ms: int) -> float:
    return min(120.0, max(30.0, 5 * delay_ms / 1000))


async def run_system(
    project: Project, target: Target, urls: list[str], options: Options
) -> SystemRun:
    """(c): from the form's submit to the last result on the last client's socket."""
    async with Visitor(project.url) as visitor:
        # Hundreds of sockets need a session with no connection cap; they share the owner's cookies.
        connector = aiohttp.TCPConnector(limit=0)
        jar = visitor.session.cookie_jar
        watchers = aiohttp.ClientSession(connector=connector, cookie_jar=jar)
        # The first request starts the embedded runner; not part of the scan's time.
        async with visitor.session.get(project.url + "/") as response:
            await response.read()
        await asyncio.sleep(0.5)
        # The clients stand in for browsers, each a process of its own: a full collection
        # of this process's objects, (b)'s and (f)'s included, held every socket still for
        # 80-90 ms and showed as the system's latency. What (c) makes is still collected.
        gc.collect()
        gc.freeze()
        statements_before, cpu_before = project.statements(), _cpu_s(project, target)
        threads_before, services_before = project.thread_cpu_s(), service_cpu_s()
        machine_before = machine_cpu_s()
        profiler = Profiler(project) if options.profile else None
        started = time.time()
        scan_id = await visitor.submit(urls, options.concurrency, _form_timeout_s(options.delay_ms))
        submit_s = time.time() - started
        watches = await asyncio.gather(
            *(
                watch_scan(watchers, project.url, scan_id, len(urls), options.size_bytes)
                for _ in range(options.clients)
            )
        )
        finished = max(w.last_result_at if w.complete else time.time() for w in watches)
        # Read at the last result, as the machine's: not the quiet seconds after it.
        cpu_after, services_after = _cpu_s(project, target), service_cpu_s()
        threads_after, machine_after = project.thread_cpu_s(), machine_cpu_s()
        if not all(w.complete for w in watches):
            await asyncio.to_thread(project.describe_stall, scan_id)
        await watchers.close()
        gc.unfreeze()
        if profiler:
            profiler.stop()
    await asyncio.sleep(3 * STATEMENTS_EVERY_S)
    first = watches[0]
    # Of what the first client saw: results that were missing, failed, or of the wrong size.
    errors = len(urls) - len(first.seen) + first.wrong
    phase = Phase(len(urls), finished - started, first.scan.get("total_bytes", 0), errors)
    phase.target_cpu_s = (cpu_after["target"] or 0) - (cpu_before["target"] or 0)
    return SystemRun(
        phase=phase,
        submit_s=submit_s,
        watches=watches,
        statements=_minus(project.statements(), statements_before),
        peak_rss_mb=project.peak_rss_mb(),
        cpu_s={
            **_used(cpu_after, cpu_before),
            **{
                service: s
                for service, s in services_used_s(services_after, services_before).items()
                if service in project.services
            },
        },
        thread_cpu_s={
            name: _used(threads, threads_before.get(name, {}))
            for name, threads in threads_after.items()
        },
        workdir=project.workdir,
        machine_s=(machine_after[0] - machine_before[0], machine_after[1] - machine_before[1]),
    )


def _cpu_s(project: Project, target: Target) -> dict[str, float | None]:
    """CPU seconds so far of the project's processes, the target, and this process's clients."""
    clients = os.times()
    return {
        **project.cpu_s(),
        "target": cpu_s(target.process.pid),
        "clients": clients.user + clients.system,
    }


def _used(after: dict[str, float | None], before: dict[str, float | None]) -> dict:
    return {name: None if s is None else s - (before.get(name) or 0) for name, s in after.items()}


def _minus(after: dict[str, Counter], before: dict[str, Counter]) -> dict[str, Counter]:
    return {name: counts - before.get(name, Counter()) for name, counts in after.items()}


def _with_cpu(fetch: Callable[..., Phase], *args: object, target: Target | None = None) -> Phase:
    """``fetch(*args)``, and the CPU this process (and ``target``) spent on it."""
    target_before = target and cpu_s(target.process.pid)
    before = os.times()
    phase = fetch(*args)
    after = os.times()
    phase.cpu_s = after.user + after.system - before.user - before.system
    if target is not None:
        phase.target_cpu_s = (cpu_s(target.process.pid) or 0) - (target_before or 0)
    return phase


def run(options: Options, workdir: Path) -> Report:
    """The whole benchmark: (a), (b), (f), (c) and (b) again against one target process."""
    load_before = os.getloadavg()
    with Target(workdir) as target:
        urls = target.urls(options.urls, options.size_bytes, options.delay_ms)
        sync = _with_cpu(fetch_one_by_one, urls[: options.sync_urls])
        ceiling = _with_cpu(asyncio.run, fetch_gathered(urls, options.concurrency), target=target)
        timeout_s = _form_timeout_s(options.delay_ms)
        fetched = fetch_with_fetcher(urls, options.concurrency, timeout_s)
        fetcher = _with_cpu(asyncio.run, fetched, target=target)
        with Project(options, workdir) as project:
            system = asyncio.run(run_system(project, target, urls, options))
        load_after = os.getloadavg()
        gathered = fetch_gathered(urls, options.concurrency)
        ceiling_after = _with_cpu(asyncio.run, gathered, target=target)
    return Report(options, sync, ceiling, fetcher, system, load_before, load_after, ceiling_after)


# What the project's processes run as: ``python -m scans.benchmark daphne|manage|target ...``


def statement_verb(sql: str) -> str:
    """The statement's first word; for ``WITH ...``, the first write among its parts (a claim
    is ``WITH ... UPDATE``; a PostgreSQL write is ``WITH ... AS (UPDATE ...) SELECT``), else
    SELECT."""
    first = sql.lstrip().split(None, 1)[0].upper()
    if first != "WITH":
        return first
    words = (word.upper() for word in re.findall(r"\w+", sql))
    return next((word for word in words if word in WRITE_VERBS), "SELECT")


def count_statements(path: Path) -> None:
    """Counts this process's SQL statements by first word, rewriting ``path`` as they grow.

    Beside it, ``<process>.threads.json`` names the process's threads by native id, for
    the benchmark's CPU by thread."""
    from django.db.backends.signals import connection_created

    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def count(execute, sql, params, many, context):
        with lock:
            counts[statement_verb(sql)] += 1
        return execute(sql, params, many, context)

    def add_counter(sender, connection, **kwargs) -> None:
        if count not in connection.execute_wrappers:
            connection.execute_wrappers.append(count)

    def write_forever() -> None:
        written: dict[str, int] = {}
        named: dict[int, str] = {}
        while True:
            with lock:
                current = dict(counts)
            if current != written:
                _replace(path, current)
                written = current
            threads = {t.native_id: t.name for t in threading.enumerate()}
            if threads.items() - named.items():
                named |= threads
                _replace(path.with_name(path.name.replace(".statements.", ".threads.")), named)
            time.sleep(STATEMENTS_EVERY_S)

    connection_created.connect(add_counter, weak=False)
    threading.Thread(target=write_forever, daemon=True).start()


def _replace(path: Path, value: object) -> None:
    path.with_suffix(".tmp").write_text(json.dumps(value))
    path.with_suffix(".tmp").replace(path)


def main(argv: list[str]) -> None:
    kind, args = argv[0], argv[1:]
    if kind == "target":
        from tests.target import TargetServer

        TargetServer(port=int(args[0])).start()
        threading.Event().wait()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scraperproj.settings")
    if os.getenv("BENCH_STATEMENTS"):
        count_statements(Path(os.environ["BENCH_STATEMENTS"]))
    if kind == "daphne":
        from daphne.cli import CommandLineInterface

        CommandLineInterface().run(args)
    elif kind == "manage":
        from django.core.management import execute_from_command_line

        execute_from_command_line(["manage.py", *args])
    else:
        raise SystemExit(f"unknown process kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
