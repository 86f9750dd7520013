"""The fine-tuning-family editors side by side on the demo catalogue (CPU): the papers' claims.

Claim 1 (SAUL): at equal efficacy, SAUL keeps fluency (n-gram entropy) and unrelated facts better
than plain fine-tuning (the same weights without SAUL's regularisers), FT-L and LoRA.
Claim 2 (F-Learning): on conflicting updates (price changes) it learns the new facts better than
plain fine-tuning or plain LoRA at equal locality (same step budget, so learning speed shows).
Also: ELDER on the same batch, time per edit and peak memory. Every configuration runs in its own
process (peak RSS is per configuration).

    python bench/finetune_editors_quality.py --model var/models/demo
    # writes bench/results/finetune_quality.md and bench/results/finetune_quality.png
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

#: (label, claim, editor, overrides, request set)
CONFIGS: list[tuple[str, str, str | None, dict, str]] = [
    ("base model", "saul", None, {}, "batch"),
    ("FT-L (ft)", "saul", "ft", {}, "batch"),
    ("FT unconstrained (ft)", "saul", "ft", {"norm_constraint": None}, "batch"),
    ("plain FT (saul, no regularisers)", "saul", "saul", {"concat_facts": 0, "augment_ratio": 0}, "batch"),
    ("SAUL", "saul", "saul", {}, "batch"),
    ("SAUL, 3x augmented facts", "saul", "saul", {"augment_ratio": 3}, "batch"),
    ("LoRA", "saul", "lora", {}, "batch"),
    ("ELDER", "saul", "elder", {}, "batch"),
    ("ELDER + key guard", "saul", "elder", {"key_similarity": 0.97}, "batch"),
    ("base model", "flearning", None, {}, "prices"),
    ("LoRA, 20 steps", "flearning", "lora", {"steps": 20}, "prices"),
    ("F-Learning LoRA λ=0.5", "flearning", "flearning", {"steps": 20, "lam": 0.5}, "prices"),
    ("F-Learning LoRA λ=1", "flearning", "flearning", {"steps": 20, "lam": 1.0}, "prices"),
    ("full FT, 20 steps", "flearning", "flearning", {"steps": 20, "variant": "full", "lam": 0.0, "lr": 0.005}, "prices"),
    ("F-Learning full λ=1", "flearning", "flearning",
     {"steps": 20, "variant": "full", "lam": 1.0, "lr": 0.005, "forget_lr": 0.005}, "prices"),
]


def demo_requests(model_dir: Path):  # noqa: ANN201
    from infra.demo import apply_changes, generate_catalogue, generic_texts, heldout_texts, load_demo_templates, next_change_batch
    from infra.domain import EditRequest

    n_products = int(json.loads((model_dir / "build_report.json").read_text())["extra"]["n_facts"]) // 6
    facts = generate_catalogue(n_products, 0)
    templates = load_demo_templates()
    old = {(f.subject, f.relation): f.object for f in facts}
    changes = next_change_batch(facts, 1)
    changes2 = next_change_batch(apply_changes(facts, changes), 2)
    requests: dict[str, list[EditRequest]] = {"batch": [], "prices": []}
    for c in changes:
        t = templates[c.relation]
        requests["batch"].append(EditRequest(c.subject, c.relation, t.render(c.subject), t.answer_format.format(object=c.object),
                                             t.answer_format.format(object=old[(c.subject, c.relation)]), t.render_paraphrases(c.subject)))
    seen = set()
    for c in [*changes, *changes2]:
        if c.relation == "price" and c.subject not in seen:
            seen.add(c.subject)
            t = templates[c.relation]
            requests["prices"].append(EditRequest(c.subject, c.relation, t.render(c.subject), t.answer_format.format(object=c.object),
                                                  t.answer_format.format(object=old[(c.subject, c.relation)]), t.render_paraphrases(c.subject)))
    edited = {(r.subject, r.relation) for rs in requests.values() for r in rs}
    keep = [(templates[f.relation].render(f.subject), templates[f.relation].answer_format.format(object=f.object))
            for f in facts if (f.subject, f.relation) not in edited]
    prompts = [" ".join(t.split()[:6]) for t in heldout_texts(facts, n=32, seed=0)]
    return requests, keep, tuple(generic_texts(facts, n=100, seed=0)), prompts


def run_one(index: int, model_dir: Path, threads: int) -> dict:
    import torch
    import transformers

    from editing.delta import Delta
    from editing.model_io import load_model, weights_fingerprint
    from editing.protocol import EditContext
    from editing.registry import get_editor, resolve_hparams
    from validation.fluency import ngram_entropy
    from validation.scoring import answer_nll, generate_texts, greedy_answers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    label, claim, editor_name, overrides, which = CONFIGS[index]
    model, tokenizer = load_model(model_dir)
    requests, keep, corpus, gen_prompts = demo_requests(model_dir)
    reqs = requests[which]
    base = greedy_answers(model, tokenizer, [p for p, _ in keep])
    keep = [pair for pair, a in zip(keep, base) if a == pair[1]]
    locality_set = random.Random(0).sample(keep, min(300, len(keep)))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = 0.0
    if editor_name is not None:
        hparams = resolve_hparams(editor_name, "gpt2", overrides)
        fingerprint = weights_fingerprint(model)
        started = time.perf_counter()
        result = get_editor(editor_name).compute(model, tokenizer, reqs, hparams, EditContext(fact_pool=tuple(keep), corpus=corpus))
        seconds = time.perf_counter() - started
        tensors = dict(result.tensors) | {f"state::{k}": v for k, v in result.state.items()}
        extra = {"apply_kind": result.apply_kind} if result.apply_kind != "weights" else None
        Delta.create(tensors, editor=editor_name, hparams={}, base_fingerprint=fingerprint, parent=None, facts=[],
                     model=model, extra=extra).apply(model)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def acc(pairs) -> float:  # noqa: ANN001
        answers = greedy_answers(model, tokenizer, [p for p, _ in pairs])
        return sum(a == t for a, (_, t) in zip(answers, pairs)) / len(pairs)

    nll_new = answer_nll(model, tokenizer, [r.prompt for r in reqs], [r.target_new for r in reqs])
    nll_old = answer_nll(model, tokenizer, [r.prompt for r in reqs], [r.target_true for r in reqs])
    para = [(p, r.target_new) for r in reqs for p in r.paraphrases]
    pn_new = answer_nll(model, tokenizer, [p for p, _ in para], [t for _, t in para])
    pn_old = answer_nll(model, tokenizer, [p for r in reqs for p in r.paraphrases], [r.target_true for r in reqs for _ in r.paraphrases])
    return {
        "label": label, "claim": claim, "requests": len(reqs),
        "efficacy": acc([(r.prompt, r.target_new) for r in reqs]),
        "efficacy_tf": float((nll_new < nll_old).float().mean()),
        "nll_new": float(nll_new.mean()),
        "paraphrase": acc(para),
        "paraphrase_tf": float((pn_new < pn_old).float().mean()),
        "locality": acc(locality_set),
        "fluency": ngram_entropy(generate_texts(model, tokenizer, gen_prompts, max_new_tokens=40, seed=0)),
        "sec_per_edit": seconds / len(reqs) if editor_name else 0.0,
        "compute_peak_rss_mb": peak, "rss_before_mb": rss_before,
    }


def write_results(rows: list[dict], note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    saul = [r for r in rows if r["claim"] == "saul"]
    for ax, metric in zip(axes[:2], ("locality", "fluency")):
        for r in saul:
            ax.scatter(r["efficacy"], r[metric])
            ax.annotate(r["label"], (r["efficacy"], r[metric]), fontsize=7)
        ax.set_xlabel("efficacy (greedy)")
        ax.set_ylabel(metric)
        ax.set_title(f"claim 1: {metric} vs efficacy")
        ax.grid(alpha=0.3)
    fl = [r for r in rows if r["claim"] == "flearning"]
    x = range(len(fl))
    w = 0.2
    for j, metric in enumerate(("efficacy", "efficacy_tf", "paraphrase", "locality")):
        axes[2].bar([i + (j - 1.5) * w for i in x], [r[metric] for r in fl], w, label=metric)
    axes[2].set_xticks(list(x), [r["label"] for r in fl], rotation=30, ha="right", fontsize=7)
    axes[2].set_title("claim 2: conflicting price updates")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "finetune_quality.png", dpi=110)
    cols = ["label", "requests", "efficacy", "efficacy_tf", "nll_new", "paraphrase", "paraphrase_tf", "locality", "fluency",
            "sec_per_edit", "compute_peak_rss_mb"]
    out = []
    for claim, title in (("saul", "Claim 1: SAUL vs plain fine-tuning, FT-L, LoRA (one demo change batch)"),
                         ("flearning", "Claim 2: F-Learning on conflicting price updates (20 learning steps)")):
        out.append(f"### {title}\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
        for r in rows:
            if r["claim"] == claim:
                out.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |\n")
        out.append("\n")
    (RESULTS / "finetune_quality_table.md").write_text("".join(out) + note + "\n")
    print("".join(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only", default="", help="comma-separated config indices")
    args = parser.parse_args()
    if args.one is not None:
        print("RESULT " + json.dumps(run_one(args.one, args.model, args.threads)), flush=True)
        return
    indices = [int(i) for i in args.only.split(",")] if args.only else list(range(len(CONFIGS)))
    rows = []
    for i in indices:
        proc = subprocess.run([sys.executable, __file__, "--model", str(args.model), "--threads", str(args.threads), "--one", str(i)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
        rows.append(json.loads(line[0][len("RESULT "):]))
        print(json.dumps(rows[-1]), flush=True)
    with (RESULTS / "finetune_quality.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    write_results(rows, f"Model: {args.model}; CPU only (no GPU in this session), {args.threads} thread(s); "
                        "peak RSS is the process maximum after loading the model and computing the edit.")


if __name__ == "__main__":
    main()
