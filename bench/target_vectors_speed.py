"""Seconds of the locate editors' target-vector optimisation on SmolLM2-135M, whole model against upper stack.

Nearly all of a locate edit's time on this model is the target-vector optimisation (MEMIT: 616 of
624 s for 10 edits). Each of its steps used to run the whole model on every row and the LM head
at every position; `editing.locate.upper_stack` runs the blocks up to the shifted one once and then
only the blocks above it, with the LM head read at the answer and fact tokens. This bench runs the
same optimisation both ways on the same CounterFact requests (the model knows them) and reports
seconds, row passes, seconds per row pass, and how far the two results differ::

    ./dev.sh bench target_vectors_speed --editor memit --requests 10 --threads 2

Appends a row per run to bench/results/target_vectors_speed.jsonl and rewrites target_vectors_speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.counterfact_smollm2 import DATA, select_known  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
JSONL = RESULTS / "target_vectors_speed.jsonl"
TABLE = RESULTS / "target_vectors_speed.md"
COLUMNS = ("date", "commit", "editor", "requests", "prefixes", "layer", "threads", "mode", "seconds", "steps",
           "row_passes", "ms_per_row_pass", "speed_up", "max_delta_diff", "nll_first", "nll_last")


def run(args: argparse.Namespace) -> list[dict]:
    from editing.architecture import layout_of
    from editing.locate import target_vectors
    from editing.locate.context import context_prefixes
    from editing.locate.settings import target_settings
    from editing.model_io import load_model
    from editing.registry import hparams_for_model
    from infra.domain import EditRequest

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    records = json.loads(args.data.read_text())[: args.scan]
    known, _ = select_known(model, tok, records)
    chosen = known[: args.requests]
    requests = [EditRequest(r["subject"], r.get("relation_id", "cf"), r["prompt"], r["target_new"], r["ground_truth"])
                for r in chosen]
    hp = hparams_for_model(args.editor, model, json.loads(args.hparams) if args.hparams else {})
    layer = hp.layer if hasattr(hp, "layer") else hp.layers[-1]
    block = layout_of(model).block_module(layer)
    prefixes = context_prefixes(model, tok, hp.context_templates, seed=hp.seed) if hp.context_templates else ("",)
    settings = target_settings(hp)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip():
        commit += "-dirty"  # the code that ran is not the commit's
    results = {}
    rows = []
    for mode in ("whole model", "upper stack"):
        budget = 0 if mode == "whole model" else target_vectors.REPLAY_BUDGET
        saved, target_vectors.REPLAY_BUDGET = target_vectors.REPLAY_BUDGET, budget
        try:
            started = time.perf_counter()
            result = target_vectors.optimise_targets(model, tok, requests, block, settings, prefixes)
            seconds = time.perf_counter() - started
        finally:
            target_vectors.REPLAY_BUDGET = saved
        results[mode] = result
        rows.append({
            "date": f"{datetime.now(timezone.utc):%Y-%m-%d}", "commit": commit, "editor": args.editor,
            "requests": len(requests), "prefixes": len(prefixes), "layer": layer, "threads": args.threads, "mode": mode,
            "seconds": round(seconds, 1), "steps": result.steps, "row_passes": result.row_passes,
            "ms_per_row_pass": round(1000 * seconds / max(1, result.row_passes), 1),
            "nll_first": round(float(result.nll_first.mean()), 3), "nll_last": round(float(result.nll_last.mean()), 3),
        })
        print(f"{mode}: {seconds:.1f} s, {result.steps} steps, {result.row_passes} row passes", flush=True)
    whole, upper = results["whole model"], results["upper stack"]
    rows[1]["speed_up"] = round(rows[0]["seconds"] / max(rows[1]["seconds"], 1e-9), 2)
    rows[1]["max_delta_diff"] = f"{float((whole.delta - upper.delta).abs().max()):.1e}"
    return rows


def write_table() -> None:
    rows = [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]
    lines = [
        "# Target-vector optimisation on SmolLM2-135M: whole model against upper stack (CPU)",
        "",
        "`bench/target_vectors_speed.py`: the same requests (CounterFact records the model knows, teacher-forced rule of "
        "`counterfact_smollm2.py`) optimised with the editor's defaults for this model, first running the whole model "
        "every step, then the blocks above the shifted one from cached block outputs with the LM head read only at "
        "the answer and fact tokens (`editing/locate/upper_stack.py`). `max_delta_diff`: the largest difference "
        f"between the two runs' target vectors. Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU.",
        "",
        "Command: `./dev.sh bench target_vectors_speed --editor EDITOR --requests N --threads T`",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |" for row in rows]
    TABLE.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--editor", default="memit", choices=["memit", "alphaedit", "rome", "prune"])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--scan", type=int, default=200, help="records scanned for known facts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hparams", default=None, help="JSON overrides")
    parser.add_argument("--model", type=Path, default=ROOT / "var" / "models" / "smollm2-135m")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--report", action="store_true", help="only rewrite the table")
    args = parser.parse_args()
    if not args.report:
        rows = run(args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        with JSONL.open("a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    write_table()
    print(TABLE.read_text())


if __name__ == "__main__":
    main()
