"""Times the main job (`kus demo`) from nothing, twice: first run (builds the model) and second run.

Usage: ./dev.sh bench demo_job [--size demo|tiny]
Prints a table and writes bench/results/demo_job.md. Each run is a fresh `kus demo` process in a
temporary KUS_HOME, exactly what a new user runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "demo_job.md"


def run_once(home: Path, size: str) -> tuple[float, str]:
    env = dict(os.environ, KUS_HOME=str(home), COLUMNS="200")
    kus = Path(sys.executable).with_name("kus")
    started = time.perf_counter()
    proc = subprocess.run([str(kus), "demo", "--size", size], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"kus demo failed with exit code {proc.returncode}")
    return seconds, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="demo", choices=["demo", "tiny"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "var"
        for label in ("first run (builds the model)", "second run (cached model, next batch)"):
            seconds, out = run_once(home, args.size)
            accuracy = next((line for line in out.splitlines() if "catalogue facts answered" in line), "").strip()
            approved = out.count("approved by demo-reviewer")  # a refresh that fails its gate is rejected (exit 3)
            rows.append((label, seconds, accuracy, approved))
            print(f"{label}: {seconds:.0f} s")
    cpus = os.cpu_count()
    lines = [
        f"# Demo job timing ({args.size})",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {cpus} CPU cores, no GPU.",
        "",
        "| run | seconds | refreshes that passed the retention suite and were approved | model |",
        "|---|---:|---:|---|",
        *[f"| {label} | {seconds:.0f} | {approved} of 2 | {acc} |" for label, seconds, acc, approved in rows],
        "",
        "Target: the whole job under 300 s on a 2-core machine, every refresh passing its gate with no override",
        "(`kus demo` exits 3 when a refresh fails its gate and the reviewer rejects it; the bench stops on it).",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
