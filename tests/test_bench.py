"""`make bench` end to end on a small scan: it must keep working, whatever its figures."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

from tests.conftest import POSTGRES_URL, REDIS_URL, ROOT, need_service


def bench(*options: str) -> str:
    """The benchmark's report on 1,000 URLs and 3 clients; it must end well. (On 300, a
    fast machine's runner spent under the 0.05 s from which a thread is shown.)"""
    command = ["manage.py", "bench", "--urls", "1000", "--sync-urls", "5", "--clients", "3"]
    run = subprocess.run(
        [sys.executable, *command, *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"\(c\) whole system\s+1000\s", run.stdout)
    # A result may come twice (in a snapshot, then as progress): a page keeps the first.
    assert re.search(r"3 of 3 received every result; \d+ duplicates, 0 errors or wrong", run.stdout)
    latency = re.search(r"p50 (\d+) ms\s+p95 (\d+) ms\s+p99 (\d+) ms", run.stdout)
    assert latency, run.stdout
    # How full the scan kept its concurrency: its fetches' time over its wall time.
    under_way = re.search(r"(\d+) fetches under way on average, of 100\n", run.stdout)
    assert under_way and 1 <= int(under_way.group(1)) <= 100, run.stdout
    # How busy the whole machine was while the system ran.
    busy = re.search(r"machine\s+([\d.]+) of ([\d.]+) core-seconds busy", run.stdout)
    assert busy and 0 < float(busy.group(1)) <= float(busy.group(2)), run.stdout
    return run.stdout


def test_the_benchmark_runs_and_every_client_gets_every_result():
    report = bench()
    # Where the CPU went: the web process's fetch process fetched every page, and the web
    # process wrote them (its runner's database thread).
    assert re.search(r"web fetches by thread\s+MainThread [\d.]+", report), report
    assert re.search(r"CPU during \(c\)\s+web [\d.]+ s, web fetches [\d.]+ s", report), report
    assert re.search(r"peak RSS \(VmHWM\)\s+web \d+ MB, web fetches \d+ MB", report), report
    # The seed's async shape (again after the system) and our fetcher alone, with the CPU
    # they cost this process and the target's CPU a page, the machine's speed meanwhile.
    phases = (r"\(b\) aiohttp \+ gather", r"\(f\) scans\.fetch alone", r"\(b\) again, after \(c\)")
    for phase in phases:
        assert re.search(phase + r"\s+1000\s+[\d.]+\s+\d+\s+0\s+[\d.]+\s+\d+$", report, re.M)
    assert re.search(r"c/b [\d.]+ \(against the mean of \(b\) before and after", report)
    # No service was used, so none is counted.
    assert not re.search(r"CPU during \(c\).*(postgres|redis)", report), report


def test_the_benchmark_runs_on_redis_and_postgresql_with_workers():
    need_service("Redis", "127.0.0.1", 6379)
    need_service("PostgreSQL", "127.0.0.1", 5432)
    report = bench("--redis", REDIS_URL, "--postgres", POSTGRES_URL)
    assert "2 runworker process(es), Redis layer, PostgreSQL" in report
    # The workers fetched (on so small a scan, one may have done it all), and the services'
    # own CPU is counted beside theirs.
    assert "worker-1 by thread" in report and "worker-2 by thread" in report, report
    assert re.search(r"worker-\d by thread\s+MainThread [\d.]+", report), report
    assert re.search(r"CPU during \(c\).*postgres [\d.]+ s, redis [\d.]+ s", report), report


def test_each_fetch_process_of_a_project_process_is_reported_apart(tmp_path):
    """A second child (a fetch process started again after the first died) gets a name of
    its own, so that its CPU and memory are not taken for the first one's."""
    from scans.benchmark import Options, Project

    spawner = "import subprocess, time; [subprocess.Popen(['sleep', '30']) for _ in '12']; "
    spawner += "print('ready', flush=True); time.sleep(30)"
    web = subprocess.Popen([sys.executable, "-c", spawner], stdout=subprocess.PIPE, text=True)
    project = Project(Options(), tmp_path)
    project.processes["web"] = web
    try:
        assert web.stdout.readline() == "ready\n"
        pids = project.pids()
        assert sorted(pids) == ["web", "web fetches", "web fetches 2"]
        assert len(set(pids.values())) == 3
    finally:
        for pid in project.pids().values():
            os.kill(pid, signal.SIGKILL)
        web.wait()
