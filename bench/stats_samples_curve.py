"""How many corpus texts the key statistics need: efficacy and locality against the sample count.

For MEMIT and AlphaEdit on one batch of 100 demo edits, the key second moments are computed from
the first N texts of a shuffled corpus (generic catalogue text + the catalogue's facts, as the
service passes), for growing N. Reported: efficacy (P(new) > P(old)), locality (unedited facts
whose greedy answer did not change) and the statistics' compute time. The smallest N whose
locality is within one point of the largest N's is the recommended default.

    python bench/stats_samples_curve.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.locate_world import demo_model, es, statistics_corpus, world  # noqa: E402
from editing.delta import Delta  # noqa: E402
from editing.locate.statistics import second_moments  # noqa: E402
from editing.protocol import EditContext  # noqa: E402
from editing.registry import get_editor, resolve_hparams  # noqa: E402
from validation.scoring import greedy_answers  # noqa: E402

RESULTS = Path(__file__).with_name("results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, nargs="+", default=[25, 50, 100, 200, 400, 800, 1600])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    facts, templates, requests, _ = world(100, seed=3)
    model, tok, _ = demo_model(args.model_dir, facts, templates)
    edited = {(r.subject, r.relation) for r in requests}
    corpus = list(statistics_corpus(facts, templates))
    random.Random(0).shuffle(corpus)
    others = [templates[f.relation].render(f.subject) for f in facts if (f.subject, f.relation) not in edited]
    before = greedy_answers(model, tok, others)
    rows = []
    for editor in ("memit", "alphaedit"):
        for n in args.samples:
            hp = resolve_hparams(editor, "demo", {"mom2_n_samples": n})
            t0 = time.perf_counter()
            second_moments(model, tok, hp.layers, corpus, n)
            stats_s = time.perf_counter() - t0
            result = get_editor(editor).compute(model, tok, requests, hp, EditContext(corpus=tuple(corpus)))
            applied = Delta.create(result.tensors, editor=editor, hparams={}, base_fingerprint="", parent=None, facts=[], model=model).apply(model)
            eff = es(model, tok, [r.prompt for r in requests], [r.target_new for r in requests], [r.target_true for r in requests])
            after = greedy_answers(model, tok, others)
            applied.revert()
            loc = sum(a == b for a, b in zip(before, after)) / len(others)
            rows.append({"editor": editor, "samples": n, "efficacy": eff, "locality": loc, "stats_s": round(stats_s, 2),
                         "null_space_dim": result.stats.get("null_space_dim")})
            print(rows[-1], flush=True)
    lines = ["# Key statistics: efficacy and locality against the number of corpus texts", "",
             f"Demo GPT-2, one batch of 100 counterfactual edits, gpt2 defaults; corpus = {len(corpus)} shuffled texts "
             "(generic catalogue sentences + the catalogue's facts). Locality = unedited facts whose greedy answer did not change.", "",
             "| editor | texts | efficacy | locality | statistics s | null-space dims |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['editor']} | {r['samples']} | {r['efficacy']:.2f} | {r['locality']:.3f} | {r['stats_s']:.2f} | {r['null_space_dim'] or ''} |")
    for editor in ("memit", "alphaedit"):
        mine = [r for r in rows if r["editor"] == editor]
        best = mine[-1]["locality"]
        pick = next(r["samples"] for r in mine if r["locality"] >= best - 0.01)
        lines.append(f"\n{editor}: smallest sample count within one point of the largest's locality: **{pick}** texts.")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "locate_stats_samples.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "locate_stats_samples.json").write_text(json.dumps(rows, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for editor in ("memit", "alphaedit"):
        mine = [r for r in rows if r["editor"] == editor]
        axes[0].plot([r["samples"] for r in mine], [r["efficacy"] for r in mine], marker="o", label=editor)
        axes[1].plot([r["samples"] for r in mine], [r["locality"] for r in mine], marker="o", label=editor)
    for ax, title in zip(axes, ("efficacy", "locality")):
        ax.set_xscale("log")
        ax.set_xlabel("corpus texts in the statistics")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "locate_stats_samples.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
