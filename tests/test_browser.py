"""The pages in a real browser: Debian's chromium, driven by Playwright, against real daphne.

Screenshots of the live page, the admin and a phone-width screen are kept in
test-artifacts/ for a person to look at after the run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

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


def screenshot(page: Page, name: str) -> None:
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


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
    return {str(i): f"{size} bytes" for i, size in enumerate(sizes)}


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


def test_an_admin_finds_the_scan_and_its_results(page: Page, browser: Browser, server, target):
    marker = uuid.uuid4().hex
    urls = [target.url(f"/size/4321?marker={marker}"), target.url(f"/size/1234?marker={marker}")]
    scan_id = submit(page, urls)
    wait_for_status(page, "done")

    username, password = make_superuser(server)
    admin = browser.new_context(base_url=server.url).new_page()
    admin.goto("/admin/")
    admin.get_by_label("Username").fill(username)
    admin.get_by_label("Password").fill(password)
    admin.get_by_role("button", name="Log in").click()
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
    screenshot(admin, "admin-scan-change")
    admin.context.close()


def test_a_phone_width_screen_has_no_sideways_scroll(page: Page, target):
    long_url = target.url(f"/size/2048?padding={'x' * 300}")
    urls = [long_url, target.url("/status/404?size=7"), "http://no-such-host.invalid/"]
    page.set_viewport_size({"width": 375, "height": 800})
    submit(page, urls)
    wait_for_status(page, "done")
    screenshot(page, "phone-375-live-page")

    overflow = "document.body.scrollWidth - document.documentElement.clientWidth"
    assert page.evaluate(overflow) <= 0
    page.goto("/")
    assert page.evaluate(overflow) <= 0
    screenshot(page, "phone-375-form")
