"""The system checks that stop a deployment that cannot run a scan."""

from __future__ import annotations

import pytest
from django.test import override_settings

from scans import checks


def test_an_sqlite_too_old_for_returning_is_named_before_any_scan_runs(monkeypatch):
    monkeypatch.setattr(checks.sqlite3, "sqlite_version", "3.31.1")
    monkeypatch.setattr(checks.sqlite3, "sqlite_version_info", (3, 31, 1))

    (error,) = checks.sqlite_is_new_enough(databases=["default"])

    assert error.id == "scans.E001"
    assert "3.31.1" in error.msg and "3.35.0" in error.msg


@pytest.mark.skipif(checks.sqlite3.sqlite_version_info < (3, 35), reason="this Python's SQLite")
def test_this_machines_sqlite_passes():
    assert checks.sqlite_is_new_enough(databases=["default"]) == []


@pytest.mark.parametrize("seconds", [0, -1])
def test_a_flush_interval_of_zero_or_less_is_named(seconds):
    with override_settings(SCANS_FLUSH_SECONDS=seconds):
        (error,) = checks.flush_interval_is_positive()
    assert error.id == "scans.E002" and "more than 0" in error.msg


def test_the_default_flush_interval_passes():
    assert checks.flush_interval_is_positive() == []
