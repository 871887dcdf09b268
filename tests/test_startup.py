"""A long-running process keeps what it loaded at start out of the collector's full passes."""

from __future__ import annotations

from tests.conftest import django_code, project_env


def frozen_after(tmp_path, statement: str) -> tuple[int, int]:
    code = f"import gc; {statement}; print(gc.get_freeze_count(), len(gc.get_objects()))"
    frozen, left = django_code(project_env(tmp_path), code).split()
    return int(frozen), int(left)


def test_loading_the_web_application_freezes_what_django_and_the_project_made(tmp_path):
    # Django, Channels and the project make well over 50,000 objects as daphne loads them;
    # the few made after the freeze (the print's own) are all a full collection walks.
    frozen, left = frozen_after(tmp_path, "import scraperproj.asgi")
    assert frozen > 50_000 and left < 100
    frozen, left = frozen_after(tmp_path, "import django; django.setup()")
    assert frozen == 0 and left > 50_000
