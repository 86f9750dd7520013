"""Benchmark: build the demo model from scratch and report its size, time and accuracy.

    .venv/bin/python bench/demo_model_build.py            # demo() and tiny()
    .venv/bin/python bench/demo_model_build.py --only demo

Prints a table and writes bench/results/demo_model_build.md.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.demo.catalogue import generate_catalogue, load_demo_templates  # noqa: E402
from infra.demo.model_builder import DemoModelConfig, build_demo_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "demo_model_build.md"
CASES = {"demo": (200, DemoModelConfig.demo), "tiny": (30, DemoModelConfig.tiny)}


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    args = parser.parse_args()
    templates = load_demo_templates()
    rows = []
    for name in args.only or list(CASES):
        n_products, make_config = CASES[name]
        facts = generate_catalogue(n_products, seed=0)
        config = make_config()
        load_before = _load()
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            report = build_demo_model(facts, templates, Path(tmp) / "model", config, progress=True)
            wall = time.perf_counter() - t0
        rows.append((name, n_products, len(facts), config, report, wall, load_before, _load()))

    header = (
        "| config | products | facts | layers x width | threads | params | epochs | seconds "
        "| main-prompt acc | paraphrase acc | load avg before -> after |"
    )
    lines = [header, "|" + "---|" * 11]
    for name, n_products, n_facts, config, report, wall, before, after in rows:
        lines.append(
            f"| {name} | {n_products} | {n_facts} | {config.n_layer} x {config.n_embd} | {config.num_threads} "
            f"| {report.n_params:,} | {report.epochs} | {wall:.1f} | {report.accuracy:.3f} "
            f"| {report.paraphrase_accuracy:.3f} | {before} -> {after} |"
        )
    table = "\n".join(lines)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# Demo model build\n\n"
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; `bench/demo_model_build.py`. Seconds are the whole build "
        "(tokenizer, training with early stop, greedy evaluation, save). Accuracy is greedy exact match; "
        "the machine is shared, so the load average is given.\n\n" + table + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
