"""Fetching in a child process: the same results as the fetcher, and a child that never
outlives, blocks or loses track of its parent's fetches."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from scans.benchmark import children_of
from scans.fetch import Fetcher
from scans.fetch_process import FetchProcess, FetchProcessGone
from tests.test_fetch import LOOPBACK

PAGES = ["/size/65537", "/status/404", "/redirect/2", "/gzip/100000", "/html"]


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody has reaped yet counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (OSError, IndexError):
        return True


def wait_until_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gone(pid)


def measured(fetched) -> tuple:
    return (
        fetched.http_status,
        fetched.size,
        fetched.wire_size,
        fetched.content_type,
        fetched.final_url,
        fetched.redirects,
        fetched.error,
    )


async def test_it_measures_every_page_as_the_fetcher_in_this_process_does(target):
    urls = [target.url(page) for page in PAGES]
    async with Fetcher(LOOPBACK) as here, FetchProcess(LOOPBACK) as child:
        assert child.pid not in (None, os.getpid())
        expected = [measured(await here.fetch(url, time.monotonic())) for url in urls]
        got = [measured(await child.fetch(url, time.monotonic())) for url in urls]
    assert got == expected
    assert [row[0] for row in got] == [200, 404, 200, 200, 200]


async def test_each_of_many_fetches_at_once_gets_its_own_page(target):
    sizes = range(1000, 1300)
    urls = [target.url(f"/size/{size}?delay_ms={size % 7 * 10}") for size in sizes]
    async with FetchProcess(LOOPBACK) as child:
        started = time.monotonic()
        results = await asyncio.gather(*(child.fetch(url, started) for url in urls))
    assert [(r.url, r.size, r.error) for r in results] == [
        (url, size, None) for url, size in zip(urls, sizes, strict=True)
    ]
    assert all(r.start_ms >= 0 and r.elapsed_ms > 0 for r in results)


async def test_the_address_check_runs_in_the_child(target):
    # 127.0.0.2 is loopback, but outside the allowed 127.0.0.1/32.
    url = target.url("/size/10").replace("127.0.0.1", "127.0.0.2")
    async with FetchProcess(LOOPBACK) as child:
        result = await child.fetch(url, time.monotonic())
    assert result.error == "blocked", result
    assert "127.0.0.2" in result.error_message


async def test_a_cancelled_fetch_stops_in_the_child_and_frees_its_connection(target):
    one_at_a_time = replace(LOOPBACK, per_host=1, timeout_s=60)
    async with FetchProcess(one_at_a_time) as child:
        hanging = asyncio.create_task(child.fetch(target.url("/never"), time.monotonic()))
        await asyncio.sleep(0.3)  # the child holds the host's only connection
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        # Had the child gone on with it, this would wait for the host's one connection.
        result = await asyncio.wait_for(child.fetch(target.url("/size/10"), time.monotonic()), 20)
    assert (result.http_status, result.size) == (200, 10)


async def test_a_fetch_under_way_when_the_child_dies_fails_and_the_next_starts_a_new_one(target):
    async with FetchProcess(LOOPBACK) as child:
        first_pid = child.pid
        hanging = asyncio.create_task(child.fetch(target.url("/never"), time.monotonic()))
        await asyncio.sleep(0.3)
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(FetchProcessGone):
            await asyncio.wait_for(hanging, 20)
        # Reaped at once, not left a zombie until the next fetch starts a new child.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{first_pid}").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not Path(f"/proc/{first_pid}").exists(), "the dead fetch process was not reaped"
        result = await child.fetch(target.url("/size/10"), time.monotonic())
        assert child.pid != first_pid
    assert (result.http_status, result.size) == (200, 10)


async def test_a_child_that_cannot_start_is_started_again_by_the_next_fetch(target, monkeypatch):
    from scans import fetch_process

    real_popen, tries = fetch_process.subprocess.Popen, []

    def popen_failing_once(*args, **kwargs):
        tries.append(args)
        if len(tries) == 1:
            raise BlockingIOError(11, "Resource temporarily unavailable")  # fork's EAGAIN
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(fetch_process.subprocess, "Popen", popen_failing_once)
    async with FetchProcess(LOOPBACK) as child:
        assert child.pid is None
        result = await child.fetch(target.url("/size/10"), time.monotonic())
        assert child.pid is not None
    assert (len(tries), result.size) == (2, 10)


async def test_a_fetch_that_fails_in_the_child_is_logged_there_and_fails_here(target, capfd):
    async with FetchProcess(LOOPBACK) as child:
        with pytest.raises(FetchProcessGone):
            await child.fetch(target.url("/size/1"), "not a time")
        result = await child.fetch(target.url("/size/10"), time.monotonic())
    assert result.size == 10
    assert "TypeError" in capfd.readouterr().err  # the child's traceback, in the parent's log


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl+C", "SIGTERM"])
async def test_a_signal_to_the_whole_group_leaves_the_child_to_its_parent(target, signum):
    async with FetchProcess(LOOPBACK) as child:
        await child.fetch(target.url("/size/1"), time.monotonic())  # it is up and serving
        pid = child.pid
        os.kill(pid, signum)  # as a terminal or a service manager sends it to the whole group
        await asyncio.sleep(0.3)
        result = await child.fetch(target.url("/size/10"), time.monotonic())
        assert child.pid == pid and not gone(pid), f"{signum.name} ended the fetch process"
    assert result.size == 10
    assert wait_until_gone(pid)  # closed by its parent


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_the_web_servers_fetch_process_ends_with_it(make_server, signum):
    server = make_server()
    urllib.request.urlopen(server.url + "/", timeout=10).close()  # starts the runner
    deadline = time.monotonic() + 10
    while not (children := children_of(server.process.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(children) == 1, "the web process started one fetch process"
    server.process.send_signal(signum)
    server.process.wait(10)
    assert wait_until_gone(children[0]), "the fetch process outlived its web server"
