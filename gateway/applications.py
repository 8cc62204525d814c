"""Which application answers a dialed number. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.config import Application


def match(apps: Iterable[Application], dialed: str) -> Application | None:
    """Exact number first (in config order), then the first wildcard application."""
    apps = list(apps)
    for app in apps:
        if dialed in app.numbers:
            return app
    for app in apps:
        if "*" in app.numbers:
            return app
    return None
