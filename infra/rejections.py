"""A bounded record of refused rows, for any number of them: the first ones listed, every one counted
by check, and the full list as a compressed JSON-lines blob (spooled to disk past a few MB).

Usage::

    log = RejectionLog(id_field="line")
    for error in errors:
        log.add(error.line, error.reason, error.raw)
    payload = log.summary()            # small enough for one audit event
    blob = log.full_list()             # gzip'd JSON lines: {"line", "reason", "raw"} per row
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from typing import Any

#: A reason's check is its words up to the first quote, digit, colon or parenthesis: the row's own
#: values never make a check of their own (counts stay bounded by the number of checks).
_CHECK_END = re.compile(r"""[(:'"0-9]""")
#: Refused rows listed one by one in an audit event; the rest are counted.
LISTED_REJECTIONS = 50


class RejectionLog:
    def __init__(self, id_field: str = "change_id", listed: int = LISTED_REJECTIONS) -> None:
        self.id_field = id_field
        self.listed = listed
        self.count = 0
        self._first: list[dict[str, Any]] = []
        self._by_check: dict[str, int] = {}
        self._spool = tempfile.SpooledTemporaryFile(max_size=4 << 20)
        self._gzip = gzip.GzipFile(fileobj=self._spool, mode="wb", mtime=0)

    def add(self, row_id: int, reason: str, raw: str | None = None) -> None:
        self.count += 1
        check = _CHECK_END.split(reason, 1)[0].strip() or reason[:60]
        self._by_check[check] = self._by_check.get(check, 0) + 1
        if len(self._first) < self.listed:
            self._first.append({self.id_field: row_id, "reason": reason[:300]})
        entry: dict[str, Any] = {self.id_field: row_id, "reason": reason}
        if raw is not None:
            entry["raw"] = raw
        self._gzip.write((json.dumps(entry, ensure_ascii=False) + "\n").encode())

    def summary(self) -> dict[str, Any]:
        return {"rejections": list(self._first), "rejections_not_listed": max(0, self.count - self.listed),
                "rejections_by_check": dict(self._by_check)}

    def full_list(self) -> bytes:
        """Every refused row, gzip'd JSON lines (deterministic bytes for the same rows)."""
        self._gzip.close()
        self._spool.seek(0)
        data = self._spool.read()
        self._gzip = gzip.GzipFile(fileobj=self._spool, mode="ab", mtime=0)  # stays usable
        return data
