"""`make bench` end to end on a small scan: it must keep working, whatever its figures."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_the_benchmark_runs_and_every_client_gets_every_result():
    command = ["manage.py", "bench", "--urls", "300", "--sync-urls", "5", "--clients", "3"]
    run = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"\(c\) whole system\s+300\s", run.stdout)
    # A result may come twice (in a snapshot, then as progress): a page keeps the first.
    assert re.search(r"3 of 3 received every result; \d+ duplicates, 0 errors or wrong", run.stdout)
    latency = re.search(r"p50 (\d+) ms\s+p95 (\d+) ms\s+p99 (\d+) ms", run.stdout)
    assert latency, run.stdout
    # Where the web process spent its CPU: the runner's thread fetched every page.
    threads = re.search(r"web by thread\s+(.*)", run.stdout)
    assert threads and "scans-runner" in threads.group(1), run.stdout
    # The seed's async shape and our fetcher alone, with the CPU they cost this process.
    for phase in (r"\(b\) aiohttp \+ gather", r"\(f\) scans\.fetch alone"):
        assert re.search(phase + r"\s+300\s+[\d.]+\s+\d+\s+0\s+[\d.]+$", run.stdout, re.M)
