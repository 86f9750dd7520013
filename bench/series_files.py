"""Benchmark results written a line per step: read every series of a results folder."""

from __future__ import annotations

import json
from pathlib import Path


def read_series(folder: Path) -> dict[str, list[dict]]:
    """{file stem: its JSON lines} for every non-empty ``*.jsonl`` in `folder`, by name."""
    series = {}
    for path in sorted(Path(folder).glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            series[path.stem] = rows
    return series
