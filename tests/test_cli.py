"""``manage.py scan``: the seed's output, through our fetcher and its checks; stores nothing."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import CommandError, call_command

from scans.models import Scan

pytestmark = pytest.mark.django_db


def scan(*args: str) -> str:
    out = io.StringIO()
    call_command("scan", *args, stdout=out)
    return out.getvalue()


def test_it_prints_the_seed_lines_as_each_site_completes(target):
    slow, fast = target.url("/size/1234?delay_ms=300"), target.url("/size/77")
    lines = scan(slow, fast).splitlines()
    assert lines[0] == f"Read       77 chars from {fast}"
    assert lines[1] == f"Read     1234 chars from {slow}"
    assert re.fullmatch(r"Ran in  0\.\d{3} secs", lines[2])
    assert not Scan.objects.exists()


def test_compare_runs_both_shapes_and_prints_the_speedup(target):
    urls = [target.url(f"/size/{n}?delay_ms=200") for n in range(10, 15)]
    output = scan("--compare", *urls)
    times = [float(t) for t in re.findall(r"Ran in\s+([\d.]+) secs", output)]
    assert len(times) == 2 and times[0] >= 5 * 0.2 > times[1]
    assert re.search(r"Speedup: \d+\.\dx", output)


def test_it_reports_a_failing_site_and_goes_on(target):
    output = scan(target.url("/loop"), target.url("/size/5"))
    assert f"Failed too_many_redirects for {target.url('/loop')}" in output
    assert f"Read        5 chars from {target.url('/size/5')}" in output


def test_it_refuses_bad_urls_naming_the_line(target, tmp_path):
    listing = tmp_path / "urls.txt"
    listing.write_text(f"{target.url('/size/1')}\nftp://nope/\n")
    with pytest.raises(CommandError, match="Line 3: 'ftp://nope/'"):
        scan("http://ok.example/", "--file", str(listing))


def test_save_stores_the_run_as_a_finished_scan(target, django_user_model):
    django_user_model.objects.create_user("ann")
    urls = [target.url("/size/300"), target.url("/loop"), target.url("/size/7?delay_ms=100")]
    output = scan("--save", "--user", "ann", *urls)
    saved = Scan.objects.get()
    assert f"Saved as scan {saved.id}" in output
    assert (saved.status, saved.total, saved.done, saved.owner.username) == ("done", 3, 3, "ann")
    assert saved.total_bytes == 307 and saved.wall_ms >= 100
    rows = list(saved.results.values_list("position", "url", "state", "size", "error"))
    assert rows == [
        (0, urls[0], "ok", 300, None),
        (1, urls[1], "error", None, "too_many_redirects"),
        (2, urls[2], "ok", 7, None),
    ]


def test_save_names_an_unknown_user(target):
    with pytest.raises(CommandError, match="--user: no user named 'nobody'"):
        scan("--save", "--user", "nobody", target.url("/size/1"))
    assert not Scan.objects.exists()
