"""What the user sees on the console and what goes to the log file.

The console shows the service's own progress (our packages at INFO, or WARNING with --quiet) and
errors from anywhere; library chatter (GX's INFO lines, Python warnings such as transformers'
deprecations) goes only to the log file, `<home>/logs/kus.log`, at debug level, for whoever
needs to dig.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

#: Top-level packages of this service: their records reach the console.
OWN_PACKAGES = ("flows", "tasks", "editing", "validation", "infra", "bench")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (a test runner swaps and closes it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001
        pass


class ConsoleFilter(logging.Filter):
    """Our records from `level` up; anybody else's only from ERROR up."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] in OWN_PACKAGES:
            return record.levelno >= self.level
        return record.levelno >= logging.ERROR


def configure_logging(home: Path, quiet: bool = False) -> Path | None:
    """Console handler with `ConsoleFilter`, file handler with everything; returns the log file
    (None when the home cannot hold one, e.g. a read-only directory: the console still works)."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for handler in list(root.handlers):
        if getattr(handler, "_kus", False):
            root.removeHandler(handler)
    console = StderrHandler()
    console.setFormatter(logging.Formatter(FORMAT))
    console.addFilter(ConsoleFilter(logging.WARNING if quiet else logging.INFO))
    console._kus = True  # type: ignore[attr-defined]
    root.addHandler(console)
    for name in ("great_expectations", "httpx", "alembic", "urllib3", "botocore", "filelock", "matplotlib"):
        logging.getLogger(name).setLevel(logging.DEBUG)  # kept for the file; the console filter decides
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    path = Path(home) / "logs" / "kus.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path)
    except OSError:
        return None
    file_handler.setFormatter(logging.Formatter(FORMAT))
    file_handler.setLevel(logging.DEBUG)
    file_handler._kus = True  # type: ignore[attr-defined]
    root.addHandler(file_handler)
    return path
