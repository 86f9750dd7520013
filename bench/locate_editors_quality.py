"""Sequential editing quality on the demo catalogue: FT-L, MEMIT, AlphaEdit, PRUNE(MEMIT), ROME.

1,000 counterfactual edits (a fact's object replaced by another valid object of its relation,
CounterFact-style) applied in batches of 100, each batch computed on the model with every earlier
batch applied and the editor's carried state passed on, exactly as the service chains deltas.
After each batch:

- efficacy:      P(new) > P(old) on the batch's prompts (teacher-forced, CounterFact ES) and greedy exact match;
- paraphrase:    the same on the batch's paraphrase prompts;
- retention:     efficacy (ES) on up to 300 edits of *earlier* batches (do later edits overwrite them?);
- neighbourhood: unedited facts of products that have an edited fact: greedy answer still the true one;
- unrelated:     facts of 30 products never edited: greedy answer still the true one;
- perplexity drift on held-out generic text, and fluency (n-gram entropy of sampled text).

Usage (one editor per process, then `--plot` merges the JSON files)::

    python bench/locate_editors_quality.py --editor memit --edits 1000
    python bench/locate_editors_quality.py --plot
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.locate_world import LABELS, demo_model, es, exact, statistics_corpus, world  # noqa: E402
from editing.delta import Delta  # noqa: E402
from editing.protocol import EditContext, MemoryBlobCache  # noqa: E402
from editing.registry import get_editor, resolve_hparams  # noqa: E402
from infra.demo import heldout_texts  # noqa: E402
from validation.fluency import ngram_entropy  # noqa: E402
from validation.scoring import generate_texts, perplexity  # noqa: E402

log = logging.getLogger("bench.locate_quality")
RESULTS = Path(__file__).with_name("results")


def evaluate(model, tok, batch, earlier, neighbourhood, unrelated, heldout, gen_prompts, rng) -> dict[str, float]:
    para = [(p, r) for r in batch for p in r.paraphrases]
    past = rng.sample(earlier, min(300, len(earlier)))
    nb = rng.sample(neighbourhood, min(300, len(neighbourhood)))
    texts = generate_texts(model, tok, gen_prompts, max_new_tokens=40, seed=0)
    return {
        "efficacy": es(model, tok, [r.prompt for r in batch], [r.target_new for r in batch], [r.target_true for r in batch]),
        "efficacy_exact": exact(model, tok, [r.prompt for r in batch], [r.target_new for r in batch]),
        "paraphrase": es(model, tok, [p for p, _ in para], [r.target_new for _, r in para], [r.target_true for _, r in para]),
        "paraphrase_exact": exact(model, tok, [p for p, _ in para], [r.target_new for _, r in para]),
        "retention": es(model, tok, [r.prompt for r in past], [r.target_new for r in past], [r.target_true for r in past]),
        "neighbourhood": exact(model, tok, [p for p, _ in nb], [a for _, a in nb]),
        "unrelated": exact(model, tok, [p for p, _ in unrelated], [a for _, a in unrelated]),
        "perplexity": perplexity(model, tok, heldout),
        "fluency": ngram_entropy(texts),
    }


def run(editor: str, n_edits: int, batch_size: int, model_dir: Path, threads: int, overrides: dict | None = None) -> dict:
    torch.set_num_threads(threads)
    facts, templates, requests, unrelated = world(n_edits)
    model, tok, base_fp = demo_model(model_dir, facts, templates)
    corpus = statistics_corpus(facts, templates)
    heldout = heldout_texts(facts, n=64)
    gen_prompts = [t.split(" ")[0] + " " + t.split(" ")[1] for t in heldout[:32]]
    hp = resolve_hparams(editor, "demo", overrides)
    cache = MemoryBlobCache()
    rng = random.Random(1)
    edited_subjects: set[str] = set()
    edited_keys: set[tuple[str, str]] = set()
    base_row = None
    rows = []
    state: dict[str, torch.Tensor] = {}
    parent = None
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        earlier = requests[:start]
        if base_row is None:
            nb0 = [(templates[f.relation].render(f.subject), f.object) for f in facts
                   if f.subject in {r.subject for r in batch} and (f.subject, f.relation) not in {(r.subject, r.relation) for r in batch}]
            base_row = evaluate(model, tok, batch, earlier, nb0, unrelated, heldout, gen_prompts, random.Random(1))
            base_row |= {"edits": 0, "seconds": 0.0, "stored_bytes": 0, "state_bytes": 0}
            rows.append(base_row)
        context = EditContext(state=state, cache=cache, corpus=corpus, model_fingerprint=base_fp)
        t0 = time.perf_counter()
        result = get_editor(editor).compute(model, tok, batch, hp, context)
        seconds = time.perf_counter() - t0
        tensors = dict(result.tensors) | {f"state::{k}": v for k, v in result.state.items()}
        delta = Delta.create(tensors, editor=editor, hparams={}, base_fingerprint=base_fp, parent=parent, facts=[], model=model)
        delta.apply(model)
        state, parent = delta.state(), delta.id
        edited_subjects |= {r.subject for r in batch}
        edited_keys |= {(r.subject, r.relation) for r in batch}
        neighbourhood = [(templates[f.relation].render(f.subject), f.object) for f in facts
                         if f.subject in edited_subjects and (f.subject, f.relation) not in edited_keys]
        row = evaluate(model, tok, batch, earlier, neighbourhood, unrelated, heldout, gen_prompts, rng)
        row |= {"edits": start + len(batch), "seconds": round(seconds, 2),
                "stored_bytes": sum(t.numel() * t.element_size() for t in result.tensors.values()),
                "state_bytes": sum(t.numel() * t.element_size() for t in result.state.values()),
                "delta_file_bytes": delta.size_bytes}
        rows.append(row)
        log.info("%s after %d edits: %s", editor, row["edits"], {k: round(v, 3) for k, v in row.items()})
    return {"editor": editor, "label": LABELS.get(editor, editor), "hparams": {k: v for k, v in vars(hp).items()} if hasattr(hp, "__dict__") else {},
            "batch_size": batch_size, "rows": rows, "threads": threads}


def plot(paths: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(p.read_text()) for p in paths]
    metrics = ["efficacy", "paraphrase", "retention", "neighbourhood", "unrelated", "perplexity", "fluency", "efficacy_exact"]
    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    for ax, metric in zip(axes.flat, metrics):
        for r in runs:
            xs = [row["edits"] for row in r["rows"]]
            ys = [row[metric] for row in r["rows"]]
            ax.plot(xs, ys, marker="o", label=r["label"])
        ax.set_title(metric + (" (log scale)" if metric == "perplexity" else ""))
        if metric == "perplexity":
            ax.set_yscale("log")
        ax.set_xlabel("edits applied")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle("Sequential editing on the demo model (batches of 100)")
    fig.tight_layout()
    fig.savefig(RESULTS / "locate_editors_quality.png", dpi=110)
    lines = ["# Locate-and-edit editors: sequential quality on the demo catalogue", "",
             "Demo model: GPT-2, 4 layers, width 128, 200 products x 6 relations; counterfactual edits in batches of 100,",
             "each batch computed on the model carrying every earlier batch (and the editor's carried state).",
             "efficacy / paraphrase / retention = P(new) > P(old) (CounterFact ES); neighbourhood / unrelated = greedy answer",
             "still the true object; `exact` = greedy answer equals the new object. CPU, 1 thread, shared machine.", ""]
    header = "| editor | edits | efficacy | exact | paraphrase | retention | neighbourhood | unrelated | perplexity | fluency | s/batch | stored delta |"
    lines += [header, "|" + "---|" * 12]
    for r in runs:
        for row in r["rows"]:
            lines.append(
                f"| {r['label']} | {row['edits']} | {row['efficacy']:.2f} | {row['efficacy_exact']:.2f} | {row['paraphrase']:.2f} | "
                f"{row['retention']:.2f} | {row['neighbourhood']:.2f} | {row['unrelated']:.2f} | {row['perplexity']:.2f} | "
                f"{row['fluency']:.2f} | {row['seconds']:.1f} | {row['stored_bytes'] / 1024:.0f} KiB |"
            )
    (RESULTS / "locate_editors_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editor", choices=sorted(LABELS))
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--model-dir", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--overrides", default="", help="JSON object of hyperparameter overrides (a sweep)")
    parser.add_argument("--tag", default="", help="suffix of the result file, for sweeps")
    parser.add_argument("--plot", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.plot:
        order = ["ft", "memit", "alphaedit", "prune", "rome"]
        paths = [RESULTS / f"locate_quality_{e}.json" for e in order if (RESULTS / f"locate_quality_{e}.json").exists()]
        plot(paths)
        return
    overrides = json.loads(args.overrides) if args.overrides else None
    result = run(args.editor, args.edits, args.batch_size, args.model_dir, args.threads, overrides)
    result["overrides"] = overrides or {}
    out = RESULTS / "sweeps" if args.tag else RESULTS
    out.mkdir(exist_ok=True)
    (out / f"locate_quality_{args.editor}{'_' + args.tag if args.tag else ''}.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
