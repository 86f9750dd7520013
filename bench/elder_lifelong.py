"""ELDER vs per-edit LoRA in lifelong editing: N sequential single edits on the demo model (CPU).

Each edit is computed on the live model (base + every earlier delta of the chain) and applied;
ELDER carries its experts, routers and codes from delta to delta (`EditContext.state`) and each new
ELDER delta replaces the older module, LoRA merges one low-rank delta per edit. At checkpoints we
score, greedily: efficacy on every edit so far, paraphrase generalisation (paraphrases are never
trained on), and locality (unedited facts the base model answered correctly that still are).

    python bench/elder_lifelong.py --model var/models/demo --n 1000 --checkpoints 5
    # writes bench/results/elder_lifelong.md and bench/results/elder_lifelong.png
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from editing.delta import Delta  # noqa: E402
from editing.model_io import load_model, weights_fingerprint  # noqa: E402
from editing.protocol import EditContext  # noqa: E402
from editing.registry import get_editor, resolve_hparams  # noqa: E402
from infra.demo import generate_catalogue, generic_texts, load_demo_templates  # noqa: E402
from infra.domain import EditRequest  # noqa: E402
from validation.scoring import greedy_answers  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

METHODS = {
    "elder": ("elder", {}),
    "elder+keys": ("elder", {"key_similarity": 0.97}),
    "lora (per edit)": ("lora", {}),
}


def counterfactual_edits(facts, templates, n: int, seed: int) -> list[EditRequest]:  # noqa: ANN001
    """n edits on distinct (subject, relation) keys; the new object is another object of the relation."""
    rng = random.Random(seed)
    objects: dict[str, list[str]] = {}
    for f in facts:
        objects.setdefault(f.relation, [])
        if f.object not in objects[f.relation]:
            objects[f.relation].append(f.object)
    chosen = rng.sample(list(facts), min(n, len(facts)))
    out = []
    for f in chosen:
        t = templates[f.relation]
        new = rng.choice([o for o in objects[f.relation] if o != f.object])
        out.append(EditRequest(f.subject, f.relation, t.render(f.subject), t.answer_format.format(object=new),
                               t.answer_format.format(object=f.object), t.render_paraphrases(f.subject)))
    return out


def accuracy(model, tokenizer, pairs) -> float:  # noqa: ANN001
    if not pairs:
        return float("nan")
    answers = greedy_answers(model, tokenizer, [p for p, _ in pairs])
    return sum(a == t for a, (_, t) in zip(answers, pairs)) / len(pairs)


def run(method: str, model_dir: Path, n: int, checkpoints: list[int], seed: int) -> list[dict]:
    editor_name, overrides = METHODS[method]
    torch.manual_seed(seed)
    model, tokenizer = load_model(model_dir)
    facts = generate_catalogue(int(json.loads((model_dir / "build_report.json").read_text())["extra"]["n_facts"]) // 6, 0)
    templates = load_demo_templates()
    edits = counterfactual_edits(facts, templates, n, seed)
    edited = {(r.subject, r.relation) for r in edits}
    keep = [(templates[f.relation].render(f.subject), templates[f.relation].answer_format.format(object=f.object))
            for f in facts if (f.subject, f.relation) not in edited]
    base_answers = greedy_answers(model, tokenizer, [p for p, _ in keep])
    keep = [pair for pair, a in zip(keep, base_answers) if a == pair[1]]
    locality_set = random.Random(seed).sample(keep, min(200, len(keep)))
    context_pool = tuple(keep)
    corpus = tuple(generic_texts(facts, n=100, seed=seed))
    hparams = resolve_hparams(editor_name, "gpt2", overrides)
    editor = get_editor(editor_name)
    fingerprint = weights_fingerprint(model)
    state: dict = {}
    handles = []
    rows = []
    seconds = 0.0
    for i, request in enumerate(edits, start=1):
        started = time.perf_counter()
        result = editor.compute(model, tokenizer, [request], hparams,
                                EditContext(state=state, fact_pool=context_pool, corpus=corpus))
        tensors = dict(result.tensors) | {f"state::{k}": v for k, v in result.state.items()}
        extra = {"apply_kind": result.apply_kind} if result.apply_kind != "weights" else None
        delta = Delta.create(tensors, editor=editor_name, hparams={}, base_fingerprint=fingerprint, parent=None,
                             facts=[], model=model, extra=extra)
        handles.append(delta.apply(model, verify=False))
        state = result.state
        seconds += time.perf_counter() - started
        if i in checkpoints:
            done = edits[:i]
            row = {
                "method": method, "edits": i,
                "efficacy": accuracy(model, tokenizer, [(r.prompt, r.target_new) for r in done]),
                "paraphrase": accuracy(model, tokenizer, [(p, r.target_new) for r in done for p in r.paraphrases]),
                "locality": accuracy(model, tokenizer, locality_set),
                "sec_per_edit": seconds / i,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "state_params": sum(v.numel() for k, v in state.items() if k.startswith("elder.") and ".lora_" in k or ".router." in k),
                "codes": int(state["elder.codes"].shape[0]) if "elder.codes" in state else 0,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def write_results(rows: list[dict], n: int, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric in zip(axes, ("efficacy", "paraphrase", "locality")):
        for m in methods:
            pts = [r for r in rows if r["method"] == m]
            ax.plot([r["edits"] for r in pts], [r[metric] for r in pts], marker="o", label=m)
        ax.set_title(metric)
        ax.set_xlabel("sequential edits")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Lifelong editing on the demo model (CPU), {n} single edits")
    fig.tight_layout()
    fig.savefig(RESULTS / "elder_lifelong.png", dpi=110)
    header = "| method | edits | efficacy | paraphrase | locality | s/edit | peak RSS MB | stored codes |\n|---|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r['method']} | {r['edits']} | {r['efficacy']:.3f} | {r['paraphrase']:.3f} | {r['locality']:.3f} | "
        f"{r['sec_per_edit']:.2f} | {r['peak_rss_mb']:.0f} | {r['codes']} |\n" for r in rows)
    (RESULTS / "elder_lifelong_table.md").write_text(header + body + "\n" + note + "\n")
    print(header + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jsonl", type=Path, default=RESULTS / "elder_lifelong.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    checkpoints = sorted({max(1, round(args.n * (k + 1) / args.checkpoints)) for k in range(args.checkpoints)} | {1})
    rows = []
    args.jsonl.parent.mkdir(parents=True, exist_ok=True)
    for method in args.methods.split(","):
        for row in run(method, args.model, args.n, checkpoints, args.seed):
            rows.append(row)
            with args.jsonl.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    write_results(rows, args.n, f"Model: {args.model}; CPU only (no GPU in this session), {args.threads} thread(s).")


if __name__ == "__main__":
    main()
