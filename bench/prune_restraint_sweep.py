"""PRUNE's restraint function on one batch of demo edits: how much of MEMIT's edit each choice keeps.

One batch of 100 counterfactual edits (the quality bench's first batch), MEMIT with the gpt2
defaults, then PRUNE(MEMIT) with each restraint (`log` with base α, or `linear`). Reported: efficacy
(P(new) > P(old)), the share of never-edited products' facts still answered correctly, and the
condition number of every edited matrix before and after the restraint. Writes
`bench/results/prune_restraint_sweep.md`.

    python bench/prune_restraint_sweep.py
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.locate_world import demo_model, edit_applied, es, exact, statistics_corpus, world  # noqa: E402
from editing.protocol import EditContext, MemoryBlobCache  # noqa: E402
from editing.registry import resolve_hparams  # noqa: E402

RESULTS = Path(__file__).with_name("results")
RESTRAINTS = [("log", math.e), ("log", 2.0), ("log", 1.5), ("log", 1.2), ("log", 1.05), ("linear", math.e)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    facts, templates, requests, unrelated = world(1000)
    model, tok, fp = demo_model(args.model_dir, facts, templates)
    context = EditContext(cache=MemoryBlobCache(), corpus=statistics_corpus(facts, templates), model_fingerprint=fp)
    batch = requests[:100]

    def measure(editor: str, hp) -> tuple[float, float, dict]:
        with edit_applied(editor, hp, model, tok, batch, context) as result:
            efficacy = es(model, tok, [r.prompt for r in batch], [r.target_new for r in batch], [r.target_true for r in batch])
            kept = exact(model, tok, [p for p, _ in unrelated], [a for _, a in unrelated])
        return efficacy, kept, result.stats

    base_kept = exact(model, tok, [p for p, _ in unrelated], [a for _, a in unrelated])
    memit_eff, memit_kept, _ = measure("memit", resolve_hparams("memit", "demo"))
    lines = ["# PRUNE's restraint on one batch of 100 demo edits (MEMIT, gpt2 defaults)", "",
             f"Unrelated facts answered correctly before editing: {base_kept:.3f}. CPU, {args.threads} thread(s).", "",
             "| editor | efficacy | unrelated kept | condition number per edited layer: raw → served |", "|---|---|---|---|",
             f"| MEMIT (no restraint) | {memit_eff:.2f} | {memit_kept:.3f} | – |"]
    for reduce, alpha in RESTRAINTS:
        hp = resolve_hparams("prune", "demo", {"reduce": reduce, "alpha": alpha})
        eff, kept, stats = measure("prune", hp)
        conds = ", ".join(f"L{name.split('.')[2]}: {p['cond_raw']:,.0f} → {p['cond_served']:,.0f}" for name, p in stats["per_param"].items())
        sig = ", ".join(f"L{name.split('.')[2]}: σ₁ {p['sigma1_raw']:,.0f} vs σ_max(W) {p['sigma_max_w']:.1f}" for name, p in stats["per_param"].items())
        label = f"PRUNE log α = {alpha:.3g}" if reduce == "log" else "PRUNE linear"
        lines.append(f"| {label} | {eff:.2f} | {kept:.3f} | {conds} |")
        print(lines[-1], flush=True)
    lines += ["", f"Raw update against the weights: {sig}."]
    (RESULTS / "prune_restraint_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
