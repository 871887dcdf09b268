"""A long-running process keeps what it loaded at start out of the collector's full passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def frozen_after(statement: str) -> tuple[int, int]:
    code = f"import gc; {statement}; print(gc.get_freeze_count(), len(gc.get_objects()))"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "scraperproj.settings"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    frozen, left = done.stdout.split()
    return int(frozen), int(left)


def test_loading_the_web_application_freezes_what_django_and_the_project_made():
    # Django, Channels and the project make well over 50,000 objects as daphne loads them;
    # the few made after the freeze (the print's own) are all a full collection walks.
    frozen, left = frozen_after("import scraperproj.asgi")
    assert frozen > 50_000 and left < 100
    frozen, left = frozen_after("import django; django.setup()")
    assert frozen == 0 and left > 50_000
