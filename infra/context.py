"""The one place that wires settings to the database and the delta store.

Every task and CLI command starts from here, so a worker on another machine needs only the same
settings (env vars or config file) to reach the same database and store::

    ctx = ServiceContext.open()                   # KUS_* env vars / kus.toml / embedded defaults
    with ctx.db.session() as session: ...
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.db.session import Database
from infra.delta_store import DeltaStore, open_delta_store
from infra.settings import Settings


class ServiceContext:
    """Settings, the database, and the delta store, opened on first use: commands that only read
    the database (`kus runs`, `kus show`, `kus audit verify`) work while the store is unreachable,
    and a failed run can be marked failed without it."""

    def __init__(self, settings: Settings, db: Database, store: DeltaStore | None = None) -> None:
        self.settings = settings
        self.db = db
        self._store = store

    @property
    def store(self) -> DeltaStore:
        if self._store is None:
            store = open_delta_store(
                self.settings.delta_store_uri, s3_endpoint_url=self.settings.s3_endpoint_url,
                s3_checksums=self.settings.s3_checksums,
            )
            ensure = getattr(store, "ensure_bucket", None)
            if callable(ensure):
                ensure()
            self._store = store
        return self._store

    @classmethod
    def open(cls, settings: Settings | None = None) -> "ServiceContext":
        """Connect to the database (migrating it to head); the delta store connects when first used."""
        settings = settings or Settings.load()
        settings.home.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url, audit_key=settings.audit_key())
        db.upgrade()
        return cls(settings=settings, db=db)

    def close(self) -> None:
        self.db.dispose()

    def run_dir(self, run_id: int) -> Path:
        path = self.settings.home / "runs" / str(run_id)
        path.mkdir(parents=True, exist_ok=True)
        return path


def current_user() -> str:
    """Who is acting: KUS_USER if set (service accounts, CI), otherwise the OS login name."""
    return os.environ.get("KUS_USER") or getpass.getuser()


@contextmanager
def service_context(settings: Settings | None = None) -> Iterator[ServiceContext]:
    """Open a context for one unit of work (a task, a CLI command) and close it afterwards."""
    ctx = ServiceContext.open(settings)
    try:
        yield ctx
    finally:
        ctx.close()
