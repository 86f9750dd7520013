"""CPU speed of the locate-and-edit editors on the demo model: seconds per batch and stored size.

For each editor and batch size: the first call (key statistics computed) and a second call with
the statistics cached, the time spent in the batched target-vector optimisation, and the size of
the stored delta tensors (low-rank factors where smaller) and of the carried state. FT-L is the
reference. No GPU figures: this machine has no GPU.

    python bench/locate_editors_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.locate_editors_quality import LABELS, MemoryCache, world  # noqa: E402
from editing.model_io import load_model, weights_fingerprint  # noqa: E402
from editing.protocol import EditContext  # noqa: E402
from editing.registry import get_editor, resolve_hparams  # noqa: E402
from infra.demo import generic_texts  # noqa: E402
from infra.demo.model_builder import DemoModelConfig, ensure_demo_model  # noqa: E402

RESULTS = Path(__file__).with_name("results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--editors", nargs="+", default=["ft", "rome", "memit", "alphaedit", "prune"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    facts, templates, requests, _ = world(max(args.batch_sizes))
    report = ensure_demo_model(args.model_dir, facts, templates, DemoModelConfig.demo(), progress=False)
    model, tok = load_model(Path(report.path))
    fp = weights_fingerprint(model)
    corpus = tuple(generic_texts(facts, n=400)) + tuple(f"{templates[f.relation].render(f.subject)} {f.object}" for f in facts)
    rows = []
    for editor in args.editors:
        hp = resolve_hparams(editor, "gpt2")
        for n in args.batch_sizes:
            batch = requests[:n]
            cache = MemoryCache()
            times = []
            for _ in range(2):  # cold (statistics computed), then warm (statistics cached)
                t0 = time.perf_counter()
                result = get_editor(editor).compute(model, tok, batch, hp, EditContext(cache=cache, corpus=corpus, model_fingerprint=fp))
                times.append(time.perf_counter() - t0)
            stats = result.stats.get("base_stats", result.stats)
            rows.append({
                "editor": LABELS[editor], "batch": n, "cold_s": round(times[0], 2), "warm_s": round(times[1], 2),
                "targets_s": stats.get("target_seconds", float("nan")),
                "stored_kib": sum(t.numel() * t.element_size() for t in result.tensors.values()) / 1024,
                "state_kib": sum(t.numel() * t.element_size() for t in result.state.values()) / 1024,
                "parts": sorted({k.split("::")[1] for k in result.tensors}),
            })
            print(rows[-1], flush=True)
    dense_kib = sum(p.numel() * 4 for n_, p in model.named_parameters() if n_.endswith("mlp.c_proj.weight")) / 1024 / 4
    lines = ["# Locate-and-edit editors: CPU speed on the demo model", "",
             f"Demo GPT-2 (4 layers, width 128, MLP 512); {platform.processor() or platform.machine()}, torch threads={args.threads}, "
             "machine shared with other jobs (timings are indicative). **No GPU on this machine: GPU figures were not measured.**",
             f"`cold` includes the key statistics over {len(corpus)} corpus texts; `warm` reuses them from the cache.",
             f"One dense MLP projection is {dense_kib:.0f} KiB in float32.", "",
             "| editor | batch | cold s | warm s | target-vector s | stored delta KiB | carried state KiB | stored as |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['editor']} | {r['batch']} | {r['cold_s']:.1f} | {r['warm_s']:.1f} | {r['targets_s']} | {r['stored_kib']:.0f} | "
                     f"{r['state_kib']:.0f} | {', '.join(r['parts'])} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "locate_editors_speed.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "locate_editors_speed.json").write_text(json.dumps(rows, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"{r['editor']}\n{r['batch']}" for r in rows]
    ax.bar(range(len(rows)), [r["warm_s"] for r in rows], label="warm (statistics cached)")
    ax.bar(range(len(rows)), [r["cold_s"] - r["warm_s"] for r in rows], bottom=[r["warm_s"] for r in rows], label="statistics (first call)")
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("seconds per batch (CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "locate_editors_speed.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
