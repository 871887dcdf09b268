"""System checks: what the database and the settings must be before a scan can run."""

from __future__ import annotations

import sqlite3

from django.conf import settings
from django.core.checks import Error, register
from django.db import connections

# A write counts its results into the scan and reads it back with UPDATE ... RETURNING,
# and writes its rows with UPDATE ... FROM (3.33).
SQLITE_NEEDED = (3, 35, 0)


@register("database")
def sqlite_is_new_enough(app_configs=None, databases=None, **kwargs) -> list[Error]:
    if "default" not in (databases or ()) or connections["default"].vendor != "sqlite":
        return []
    if sqlite3.sqlite_version_info >= SQLITE_NEEDED:
        return []
    needed = ".".join(map(str, SQLITE_NEEDED))
    return [
        Error(
            f"SQLite {sqlite3.sqlite_version} is too old: scans need {needed} or newer "
            "(UPDATE ... RETURNING).",
            hint="Use a Python built against a newer SQLite, or PostgreSQL (DATABASE_URL).",
            id="scans.E001",
        )
    ]


@register()
def flush_interval_is_positive(app_configs=None, **kwargs) -> list[Error]:
    """A runner writes every SCANS_FLUSH_SECONDS: at 0 it would spin a core doing nothing."""
    if settings.SCANS_FLUSH_SECONDS > 0:
        return []
    return [
        Error(
            f"SCANS_FLUSH_SECONDS is {settings.SCANS_FLUSH_SECONDS:g}: it must be more than 0.",
            hint="Leave it unset (0.04 in a worker, 0.05 in a web process that fetches).",
            id="scans.E002",
        )
    ]
