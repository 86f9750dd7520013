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


def service_records_at_info() -> None:
    """In a process a Prefect worker started for a flow run, our loggers have no level of their own
    (the root's WARNING would drop our progress); INFO lets their records reach the run's logs
    (PREFECT_LOGGING_EXTRA_LOGGERS attaches Prefect's API handler to them). The CLI sets its own."""
    for name in OWN_PACKAGES:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


def configure_logging(home: Path, quiet: bool = False) -> Path | None:
    """Our packages' loggers get their own console and file handlers (so Prefect, which configures
    the root logger when it starts, cannot take them away); the root logger sends everybody else's
    records to the file, and only their errors to the console. Returns the log file (None when the
    home cannot hold one: the console still works)."""
    path = Path(home) / "logs" / "kus.log"
    file_handler: logging.Handler | None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path)
        file_handler.setFormatter(logging.Formatter(FORMAT))
        file_handler.setLevel(logging.DEBUG)
        file_handler._kus = True  # type: ignore[attr-defined]
    except OSError:
        file_handler = None

    def console(level: int) -> logging.Handler:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(ConsoleFilter(level))
        handler._kus = True  # type: ignore[attr-defined]
        return handler

    targets = [(logging.getLogger(name), False) for name in OWN_PACKAGES] + [(logging.getLogger(), True)]
    for logger, is_root in targets:
        for handler in list(logger.handlers):
            if getattr(handler, "_kus", False):
                logger.removeHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(console(logging.WARNING if quiet else logging.INFO))
        if file_handler is not None:
            logger.addHandler(file_handler)
        if not is_root:
            logger.propagate = False
    for name in ("great_expectations", "httpx", "alembic", "urllib3", "botocore", "filelock", "matplotlib"):
        logging.getLogger(name).setLevel(logging.DEBUG)  # kept for the file; the console filter decides
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    return path if file_handler is not None else None
