"""A long-running process keeps what it loaded at start out of the collector's full passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def frozen_after(statement: str) -> int:
    code = f"import gc; {statement}; print(gc.get_freeze_count())"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "scraperproj.settings"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_loading_the_web_application_freezes_what_django_and_the_project_made():
    # Django, Channels and the project make well over 50,000 objects as daphne loads them.
    assert frozen_after("import scraperproj.asgi") > 50_000
    assert frozen_after("import django; django.setup()") == 0
