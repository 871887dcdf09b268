"""Tiny helpers that read settings from the environment."""

from __future__ import annotations

import os


def envbool(name: str, default: str) -> bool:
    return os.getenv(name, default).strip().lower() in ("1", "true", "yes", "on")


def envint(name: str, default: int) -> int:
    value = os.getenv(name, "").strip()
    return int(value) if value else default


def envfloat(name: str, default: float) -> float:
    value = os.getenv(name, "").strip()
    return float(value) if value else default


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]
