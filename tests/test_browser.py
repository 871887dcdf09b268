"""The pages in a real browser: Debian's chromium, driven by Playwright, against real daphne.

Screenshots of the live page, the admin and a phone-width screen are kept in
test-artifacts/ for a person to look at after the run.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, WebSocketRoute, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.conftest import IN_CI, ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = ROOT / "test-artifacts"
SCAN_PATH = re.compile(r"/scans/([0-9a-f-]{36})/$")

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module-scoped: the sync API may not outlive into async tests' running loops.
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"{message}; CI=true: tests may not skip")
        pytest.skip(message)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, server) -> Iterator[Page]:
    """A fresh visitor: a context of its own, so its own session and its own scans."""
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    yield page
    context.close()


def screenshot(page: Page, name: str, full_page: bool = True) -> None:
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=full_page)


def submit(page: Page, urls: list[str], concurrency: int = 10) -> str:
    """Fills in and posts the form as a person does; returns the new scan's id."""
    page.goto("/")
    page.get_by_label("URLs").fill("\n".join(urls))
    page.get_by_label("Concurrency").fill(str(concurrency))
    page.get_by_role("button", name="Start scan").click()
    page.wait_for_url(SCAN_PATH)
    return SCAN_PATH.search(page.url).group(1)


def sized(target, sizes: list[int], delays_ms: list[int]) -> list[str]:
    return [target.url(f"/size/{s}?delay_ms={d}") for s, d in zip(sizes, delays_ms, strict=True)]


FINISHED_ROWS = "tbody[data-scan=rows] tr:not(.state-pending)"


def finished_rows(page: Page) -> int:
    return page.locator(FINISHED_ROWS).count()


def wait_for_finished_rows(page: Page, at_least: int) -> None:
    page.wait_for_function(
        f"n => document.querySelectorAll('{FINISHED_ROWS}').length >= n", arg=at_least
    )


def wait_for_status(page: Page, status: str) -> None:
    expect(page.locator("[data-scan=status]")).to_have_text(status)


def sizes_shown(page: Page) -> dict[int, str]:
    """Each row's exact byte count, as its size cell's tooltip says it."""
    return page.locator("tbody[data-scan=rows] tr").evaluate_all(
        """rows => Object.fromEntries(rows.map(tr => [
            tr.dataset.position, tr.querySelector('[data-field=size]').title]))"""
    )


def expected_sizes(sizes: list[int]) -> dict[str, str]:
    return {str(i): f"{size:,} bytes" for i, size in enumerate(sizes)}


def test_it_fills_rows_live_and_the_bar_reaches_100_percent(page: Page, target):
    sizes = [1000 + 37 * i for i in range(24)]
    urls = sized(target, sizes, [150 + 60 * (i % 6) for i in range(24)])
    submit(page, urls, concurrency=4)
    page.evaluate("window.notReloaded = true")

    page.wait_for_function(
        """n => {
            const done = document.querySelectorAll('tbody tr:not(.state-pending)').length;
            return done > 0 && done < n;
        }""",
        arg=len(urls),
    )
    screenshot(page, "live-page-running")
    wait_for_status(page, "done")
    screenshot(page, "live-page-done")

    assert page.evaluate("window.notReloaded") is True
    assert finished_rows(page) == len(urls)
    assert sizes_shown(page) == expected_sizes(sizes)
    expect(page.locator("[data-scan=bar]")).to_have_attribute("style", re.compile("width: 100%"))
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", str(len(urls)))
    expect(page.locator("[data-scan=done]")).to_have_text(str(len(urls)))
    expect(page.locator("[data-scan=speedup]")).to_contain_text("×")
    expect(page.locator("tbody tr").first.locator("[data-field=status]")).to_have_text("200")


def test_a_reload_halfway_loses_no_row(page: Page, target):
    sizes = [500 + i for i in range(30)]
    urls = sized(target, sizes, [120] * 30)
    submit(page, urls, concurrency=3)
    wait_for_finished_rows(page, 10)

    page.reload()
    assert finished_rows(page) >= 10, "the reloaded page draws what is done before any message"
    assert page.locator("tbody tr").count() == 30
    wait_for_status(page, "done")

    assert page.locator("tbody tr").count() == 30
    assert finished_rows(page) == 30
    assert sizes_shown(page) == expected_sizes(sizes)


def test_a_page_opened_mid_scan_draws_a_bar_for_each_finished_fetch_only(page: Page, target):
    # Its snapshot sends a pending row as position, URL and state alone.
    urls = sized(target, [700 + i for i in range(30)], [150] * 30)
    submit(page, urls, concurrency=3)
    wait_for_finished_rows(page, 6)

    page.reload()
    expect(page.locator("[data-scan=connection]")).to_have_text("live")
    page.wait_for_function(
        """() => {
            const bars = document.querySelectorAll('[data-scan=waterfall] g.fetch').length;
            const done = document.querySelectorAll('tbody tr:not(.state-pending)').length;
            return bars === done && done < 30;
        }"""
    )
    drawn = page.locator("[data-scan=waterfall] g.fetch rect").evaluate_all(
        "rects => rects.map(r => r.getAttribute('x') + ' ' + r.getAttribute('width'))"
    )
    assert drawn and not [xy for xy in drawn if "undefined" in xy or "NaN" in xy]
    wait_for_status(page, "done")
    expect(page.locator("[data-scan=waterfall] g.fetch")).to_have_count(30)


def test_the_pages_name_an_icon_that_loads(page: Page):
    # Else a browser asks for /favicon.ico on every page and gets a 404.
    for path in ("/", "/admin/login/"):
        page.goto(path)
        icon = page.locator("link[rel=icon]").get_attribute("href", timeout=2000)
        response = page.request.get(icon)
        assert response.ok and response.headers["content-type"].startswith("image/svg+xml")


def test_older_messages_arriving_after_the_last_do_not_undo_the_end(page: Page, target):
    """Two workers' messages can cross on their way to the page. The socket is played
    by the test here: real workers cannot be made to cross their messages on cue."""
    urls = sized(target, [100, 200], [5000, 5000])

    def scan(status: str, done: int) -> dict:
        return {
            "id": "", "status": status, "total": 2, "done": done, "concurrency": 10,
            "timeout": 10.0, "total_bytes": 100 * done, "sum_ms": 2.0 * done,
            "created": "2026-11-25T12:00:00+00:00", "started": "2026-11-25T12:00:00+00:00",
            "finished": "2026-11-25T12:00:01+00:00" if status == "done" else None,
            "wall_ms": 1000.0 if status == "done" else None,
        }  # fmt: skip

    def result(position: int, size: int | None) -> dict:
        state = "pending" if size is None else "ok"
        return {
            "position": position, "url": urls[position], "state": state,
            "http_status": size and 200, "size": size, "wire_size": size,
            "content_type": "text/plain", "ttfb_ms": 1.0, "elapsed_ms": 2.0, "start_ms": 0.0,
            "final_url": urls[position], "redirects": 0, "error": None, "error_message": "",
            "finished_at": size and "2026-11-25T12:00:01+00:00",
        }  # fmt: skip

    def play(ws: WebSocketRoute) -> None:
        for message in (
            {"type": "snapshot", "seq": 1, "scan": scan("running", 0),
             "results": [result(0, None), result(1, None)]},
            {"type": "progress", "seq": 3, "scan": scan("done", 2),
             "results": [result(1, 200)]},
            {"type": "progress", "seq": 2, "scan": scan("running", 1),
             "results": [result(0, 100)]},
            # A snapshot the page asked for at the gap, read before either result.
            {"type": "snapshot", "seq": 1, "scan": scan("running", 0),
             "results": [result(0, None), result(1, None)]},
        ):  # fmt: skip
            ws.send(json.dumps(message))

    page.route_web_socket(re.compile(r"/ws/scans/"), play)
    submit(page, urls)

    expect(page.locator("tbody[data-scan=rows] tr.state-ok")).to_have_count(2)
    wait_for_status(page, "done")
    expect(page.locator("[data-scan=done]")).to_have_text("2")


def test_cancel_ends_the_scan_and_marks_pending_rows_cancelled(page: Page, target):
    urls = sized(target, [100, 200] + [300] * 8, [0, 0] + [5000] * 8)
    scan_id = submit(page, urls, concurrency=3)
    watcher = page.context.new_page()
    watcher.goto(f"/scans/{scan_id}/")
    wait_for_finished_rows(page, 2)
    wait_for_status(page, "running")

    page.get_by_role("button", name="Cancel scan").click()

    for seen in (page, watcher):  # the canceller's reloaded page, and a second tab, live
        wait_for_status(seen, "cancelled")
        rows = seen.locator("tbody tr")
        expect(rows.nth(0).locator("[data-field=status]")).to_have_text("200")
        expect(rows.nth(1).locator("[data-field=status]")).to_have_text("200")
        for i in range(2, 10):
            expect(rows.nth(i).locator("[data-field=status]")).to_have_text("cancelled")
        expect(seen.get_by_role("button", name="Cancel scan")).to_have_count(0)
        # Two fetched, eight ended unfetched: not "10 / 10", and no site failed.
        expect(seen.locator("[data-scan=done]")).to_have_text("2")
        expect(seen.locator("[data-scan=cancelled]")).to_have_text(" · 8 cancelled")
        bar = seen.locator("[data-scan=bar]")
        expect(bar).to_have_attribute("style", re.compile(r"width: 20%"))
        expect(seen.locator("[data-scan=failed]")).to_have_text("0")
        expect(seen.locator("[data-scan=connection]")).to_have_text("")
        seen.get_by_label("Errors only").check()
        expect(seen.locator("[data-scan=shown]")).to_have_text("no errors")
    screenshot(watcher, "live-page-cancelled")


def make_superuser(server) -> tuple[str, str]:
    username, password = f"admin-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", username]
        + ["--email", f"{username}@example.com"],
        cwd=ROOT,
        env={**server.env, "DJANGO_SUPERUSER_PASSWORD": password},
        check=True,
        capture_output=True,
    )
    return username, password


def admin_page(browser: Browser, server) -> Page:
    """A page in a context of its own, logged in to the admin as a new superuser."""
    username, password = make_superuser(server)
    admin = browser.new_context(base_url=server.url).new_page()
    admin.goto("/admin/")
    admin.get_by_label("Username").fill(username)
    admin.get_by_label("Password").fill(password)
    admin.get_by_role("button", name="Log in").click()
    return admin


def test_an_admin_finds_the_scan_and_its_results(page: Page, browser: Browser, server, target):
    marker = uuid.uuid4().hex
    urls = [target.url(f"/size/4321?marker={marker}"), target.url(f"/size/1234?marker={marker}")]
    scan_id = submit(page, urls)
    wait_for_status(page, "done")

    admin = admin_page(browser, server)
    admin.locator("#scans-scan").get_by_role("link", name="Scans").click()
    admin.locator("#searchbar").fill(marker)
    admin.locator("#changelist-search").get_by_role("button", name="Search").click()
    expect(admin.locator("#result_list tbody tr")).to_have_count(1)
    screenshot(admin, "admin-scan-list")

    admin.locator("#result_list tbody tr th a").click()
    assert scan_id in admin.url
    inline = admin.locator(".inline-group")
    expect(inline).to_contain_text(urls[0])
    expect(inline).to_contain_text("4321")
    expect(inline).to_contain_text("1234")
    expect(admin.get_by_role("link", name="Export CSV")).to_be_visible()
    screenshot(admin, "admin-scan-change")
    admin.context.close()


def test_a_phone_width_screen_has_no_sideways_scroll(page: Page, target):
    long_url = target.url(f"/size/2048?padding={'x' * 300}")
    urls = [long_url, target.url("/status/404?size=7"), "http://-no-such-host-.invalid/"]
    page.set_viewport_size({"width": 375, "height": 800})
    submit(page, urls)
    wait_for_status(page, "done")
    screenshot(page, "phone-375-live-page")

    overflow = "document.body.scrollWidth - document.documentElement.clientWidth"
    assert page.evaluate(overflow) <= 0
    page.goto("/")
    assert page.evaluate(overflow) <= 0
    screenshot(page, "phone-375-form")


def bars(page: Page) -> list[dict]:
    """The waterfall's bars as drawn: where each starts and ends, in milliseconds."""
    return page.locator("[data-scan=waterfall] g.fetch").evaluate_all(
        """bars => bars.map(g => {
            const rects = [...g.querySelectorAll('rect')];
            const x = Number(rects[0].getAttribute('x'));
            const width = rects.reduce((sum, r) => sum + Number(r.getAttribute('width')), 0);
            const ttfb = g.querySelector('line.ttfb');
            return {position: Number(g.dataset.position), start: x, end: x + width,
                    ttfb: ttfb && Number(ttfb.getAttribute('x1')) - x,
                    title: g.querySelector('title').textContent};
        })"""
    )


def test_the_waterfall_draws_each_fetch_as_it_finishes(page: Page, target):
    sizes = [2000 + i for i in range(16)]
    urls = sized(target, sizes, [200 + 50 * (i % 4) for i in range(16)])
    scan_id = submit(page, urls, concurrency=4)

    page.wait_for_function(
        """n => {
            const drawn = document.querySelectorAll('[data-scan=waterfall] g.fetch').length;
            return drawn > 0 && drawn < n;
        }""",
        arg=len(urls),
    )
    span_running = page.locator("[data-scan=waterfall]").get_attribute("viewBox")
    wait_for_status(page, "done")
    expect(page.locator("[data-scan=waterfall] g.fetch")).to_have_count(len(urls))
    screenshot(page, "waterfall-done")

    results = page.request.get(f"/api/scans/{scan_id}/").json()["results"]
    drawn = {bar["position"]: bar for bar in bars(page)}
    for result in results:
        bar = drawn[result["position"]]
        assert bar["start"] == pytest.approx(result["start_ms"])
        assert bar["end"] == pytest.approx(result["start_ms"] + result["elapsed_ms"])
        assert bar["ttfb"] == pytest.approx(result["ttfb_ms"])
        assert result["url"] in bar["title"]
        assert f"done after {result['elapsed_ms']:.1f} ms" in bar["title"]
        assert f"{result['size']:,} bytes" in bar["title"]
    span_done = float(page.locator("[data-scan=waterfall]").get_attribute("viewBox").split()[2])
    assert span_done > float(span_running.split()[2]), "the time axis grows as the scan runs"
    assert span_done >= max(b["end"] for b in drawn.values())
    expect(page.locator("[data-scan=axis] span").first).to_have_text("0 ms")
    # Every gridline has its label, and none sticks out of the figure: drawn again on a copy
    # of the figure, over 1,000 ms, whose last gridline is at its right edge.
    labels = page.evaluate(
        """async () => {
            const { Waterfall } = await import('/static/scans/waterfall.js');
            const figure = document.querySelector('figure.waterfall').cloneNode(true);
            document.body.append(figure);
            const axis = figure.querySelector('[data-scan=axis]');
            new Waterfall(figure.querySelector('svg'), axis, 1).drawAxis(1000);
            const box = axis.getBoundingClientRect();
            return [...axis.children].map(label => {
                const r = label.getBoundingClientRect();
                return [label.textContent, r.left >= box.left - 1 && r.right <= box.right + 1];
            });
        }"""
    )
    assert labels == [[f"{t} ms", True] for t in range(0, 1001, 200)]
    # A scan over in a millisecond or two is labelled in whole milliseconds.
    small = page.evaluate(
        """async () => {
            const { Waterfall } = await import('/static/scans/waterfall.js');
            const figure = document.querySelector('figure.waterfall').cloneNode(true);
            document.body.append(figure);
            const axis = figure.querySelector('[data-scan=axis]');
            const waterfall = new Waterfall(figure.querySelector('svg'), axis, 1);
            return [1, 3].map(span => {
                waterfall.drawAxis(span);
                return [...axis.children].map(label => label.textContent);
            });
        }"""
    )
    assert small == [["0 ms", "1 ms"], ["0 ms", "1 ms", "2 ms", "3 ms"]]


SHOWN_POSITIONS = """() => [...document.querySelectorAll('tbody[data-scan=rows] tr')]
    .filter(tr => tr.offsetParent !== null).map(tr => Number(tr.dataset.position))"""


def positions_shown(page: Page) -> list[int]:
    return page.evaluate(SHOWN_POSITIONS)


def expect_positions(page: Page, expected: list[int]) -> None:
    """Waits for the rows shown to be ``expected``: the order follows in an animation frame."""
    same = f"expected => JSON.stringify(({SHOWN_POSITIONS})()) === JSON.stringify(expected)"
    with suppress(PlaywrightTimeoutError):
        page.wait_for_function(same, arg=expected, timeout=5000)
    assert positions_shown(page) == expected


def test_the_table_sorts_by_each_column_and_filters_to_errors(page: Page, target):
    sizes = [700, 50, 3000, 10, 1500, 200]
    urls = sized(target, sizes, [300, 0, 100, 200, 50, 150])
    urls += [target.url("/status/404?size=7"), "http://-no-such-host-.invalid/"]
    submit(page, urls, concurrency=8)
    page.get_by_role("button", name="Size").click()  # sorted while rows still arrive
    wait_for_status(page, "done")

    # The failed fetch has no size: it stays last either way.
    expect_positions(page, [6, 3, 1, 5, 0, 4, 2, 7])
    expect(page.locator("th", has=page.get_by_role("button", name="Size"))).to_have_attribute(
        "aria-sort", "ascending"
    )
    page.get_by_role("button", name="Size").click()
    expect_positions(page, [2, 4, 0, 5, 1, 3, 6, 7])

    page.get_by_role("button", name="Status").click()
    expect_positions(page, [0, 1, 2, 3, 4, 5, 6, 7])  # 200s, then 404, then dns
    page.get_by_role("button", name="Status").click()
    expect_positions(page, [7, 6, 0, 1, 2, 3, 4, 5])

    page.get_by_role("button", name="Time").click()
    times = page.locator("tbody tr [data-field=elapsed_ms]").all_text_contents()
    assert [float(t.removesuffix(" ms")) for t in times] == sorted(
        float(t.removesuffix(" ms")) for t in times
    )

    page.get_by_role("button", name="#").click()
    expect_positions(page, list(range(8)))
    page.get_by_label("Errors only").check()
    expect_positions(page, [6, 7])
    expect(page.locator("[data-scan=shown]")).to_have_text("showing 2 of 8")
    # The error class in people's words, live and as the server draws it after a reload.
    dns_status = page.locator("tbody tr[data-position='7'] [data-field=status]")
    expect(dns_status).to_have_text("DNS")
    screenshot(page, "live-page-errors-only")
    page.reload()
    expect(dns_status).to_have_text("DNS")
    page.get_by_label("Errors only").uncheck()
    expect_positions(page, list(range(8)))


def test_it_stays_usable_with_a_thousand_rows(page: Page, target):
    sizes = [(i * 7919) % 5000 for i in range(1000)]
    submit(page, [target.url(f"/size/{s}?n={i}") for i, s in enumerate(sizes)], concurrency=50)
    wait_for_status(page, "done")
    expect(page.locator("[data-scan=waterfall] g.fetch")).to_have_count(1000)
    screenshot(page, "live-page-1000-rows", full_page=False)

    elapsed_ms = page.evaluate(
        """() => {
            const started = performance.now();
            document.querySelector('button[data-sort=size]').click();
            return performance.now() - started;
        }"""
    )
    assert elapsed_ms < 250, f"sorting 1,000 rows took {elapsed_ms:.0f} ms"
    shown = positions_shown(page)
    assert [sizes[p] for p in shown] == sorted(sizes)


def test_the_live_page_downloads_the_scan_as_csv(page: Page, target):
    sizes = [300, 100, 200]
    urls = sized(target, sizes, [0, 0, 0]) + ["http://-no-such-host-.invalid/"]
    submit(page, urls)
    wait_for_status(page, "done")

    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    assert download.value.suggested_filename.endswith(".csv")
    header, *rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
    by_name = [dict(zip(header, row, strict=True)) for row in rows]
    assert [row["url"] for row in by_name] == urls
    assert [row["size"] for row in by_name] == ["300", "100", "200", ""]
    assert [row["error"] for row in by_name] == ["", "", "", "dns"]


def test_run_again_shows_each_urls_change_against_the_last_scan(page: Page, target):
    urls = sized(target, [1000, 2000, 3000], [50, 100, 150])
    first = submit(page, urls, concurrency=3)
    wait_for_status(page, "done")
    page.get_by_role("button", name="Run again").click()
    page.wait_for_url(SCAN_PATH)
    assert SCAN_PATH.search(page.url).group(1) != first
    wait_for_status(page, "done")
    change = page.locator("tbody[data-scan=rows] tr[data-position='1'] [data-field=change]")
    # A change of time has its sign; none (under half a millisecond) reads ±0 ms.
    expect(change).to_have_text(re.compile(r"^([+−][1-9]\d* ms|±0 ms)$"))
    assert change.get_attribute("title").startswith("last scan: 2,000 bytes in ")
    screenshot(page, "live-page-run-again")


def test_a_slow_fetch_grows_its_waterfall_bar_while_it_runs(page: Page, target):
    urls = [target.url("/size/10?delay_ms=800"), target.url("/size/20?delay_ms=3000")]
    submit(page, urls, concurrency=2)
    running = page.locator("svg[data-scan=waterfall] rect.running[data-position='1']")
    expect(running).to_have_count(1)
    first = float(running.get_attribute("width"))
    page.wait_for_timeout(400)
    assert float(running.get_attribute("width")) > first
    wait_for_status(page, "done")
    expect(running).to_have_count(0)
    expect(page.locator("svg[data-scan=waterfall] g.fetch[data-position='1']")).to_have_count(1)


def test_a_scan_deleted_in_the_admin_says_so_on_its_live_page(
    page: Page, browser: Browser, server, target
):
    urls = [target.url(f"/size/100?delay_ms=20000&page={i}") for i in range(4)]
    scan_id = submit(page, urls)
    connection = page.locator("[data-scan=connection]")
    expect(connection).to_have_text("live")

    admin = admin_page(browser, server)
    admin.goto(f"/admin/scans/scan/{scan_id}/delete/")
    admin.get_by_role("button", name="Yes, I’m sure").click()
    expect(admin.locator(".messagelist")).to_contain_text("was deleted successfully")
    admin.context.close()

    # Its socket closes when the page next asks for the scan; it then stops trying, and says why.
    expect(connection).to_have_text("this scan is no longer available", timeout=20_000)
    expect(page.locator("[data-scan=status]")).to_have_text("gone")
    expect(page.get_by_role("button", name="Cancel scan")).to_have_count(0)
    expect(page.get_by_role("button", name="Run again")).to_have_count(0)
    wall_time = page.locator("[data-scan=elapsed]").text_content()
    page.wait_for_timeout(500)
    assert page.locator("[data-scan=elapsed]").text_content() == wall_time
    screenshot(page, "live-page-scan-deleted")


def test_a_scan_of_one_url_shows_no_speedup(page: Page, target):
    submit(page, [target.url("/size/10")])
    wait_for_status(page, "done")
    # One fetch has nothing to be compared with: its time and the scan's differ by overhead.
    expect(page.locator("[data-scan=speedup]")).to_have_text("–")
    expect(page.locator("[data-scan=elapsed]")).to_contain_text("ms")
