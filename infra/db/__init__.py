"""Database layer: typed models, Alembic migrations, the session / unit of work.

Usage::

    from infra.db import Database
    db = Database(settings.database_url)
    db.upgrade()
    with db.session() as session:
        ...
"""

from infra.db.session import Database

__all__ = ["Database"]
