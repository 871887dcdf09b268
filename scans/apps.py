from __future__ import annotations

from django.apps import AppConfig


class ScansConfig(AppConfig):
    name = "scans"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from scans import checks, signals  # noqa: F401 - registers the checks, connects the receivers
