"""Prefect configuration for embedded use: ephemeral API, state under KUS_HOME, no analytics.

Must run before `prefect` is imported; respects anything the user has already set (e.g.
PREFECT_API_URL pointing at a real Prefect server, where the same flows run unchanged).
"""

from __future__ import annotations

import os

from infra.settings import Settings


def configure_prefect(settings: Settings, quiet: bool = False) -> None:
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
