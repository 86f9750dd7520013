"""The fine-tuning-family editors side by side on the demo catalogue (CPU): the papers' claims.

Claim 1 (SAUL): at equal efficacy, SAUL keeps fluency (n-gram entropy) and unrelated facts better
than plain fine-tuning (the same weights without SAUL's regularisers), FT-L and LoRA.
Claim 2 (F-Learning): on conflicting updates (price changes) it learns the new facts better than
plain fine-tuning or plain LoRA at equal locality (same step budget, so learning speed shows).
Also: ELDER on the same batch, time per edit and peak memory. Every configuration runs in its own
process (peak RSS is per configuration).
Claim 2, harder (`--claim conflict`): 60 price facts the base model answers most confidently, each
changed to another catalogue price; F-Learning (LoRA and full, λ 0.5 and 1) vs plain LoRA and plain
fine-tuning of the same weights (λ = 0) over a sweep of learning steps (no early stop), so
efficacy can be read at equal locality.

    python bench/finetune_editors_quality.py --model var/models/demo
    # writes bench/results/finetune_quality_table.md, finetune_quality.png, finetune_quality.jsonl
    python bench/finetune_editors_quality.py --model var/models/demo --claim conflict
    # writes bench/results/finetune_conflict_table.md, finetune_conflict.png, finetune_conflict.jsonl
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

#: The conflicting-update sweep: (label, flearning overrides); every one at each of CONFLICT_STEPS.
CONFLICT_METHODS: list[tuple[str, dict]] = [
    ("LoRA (λ=0)", {"variant": "lora", "lam": 0.0}),
    ("F-Learning LoRA λ=0.5", {"variant": "lora", "lam": 0.5}),
    ("F-Learning LoRA λ=1", {"variant": "lora", "lam": 1.0}),
    ("full FT (λ=0)", {"variant": "full", "lam": 0.0, "lr": 0.005}),
    ("F-Learning full λ=0.5", {"variant": "full", "lam": 0.5, "lr": 0.005, "forget_lr": 0.005}),
    ("F-Learning full λ=1", {"variant": "full", "lam": 1.0, "lr": 0.005, "forget_lr": 0.005}),
]
CONFLICT_STEPS = (5, 10, 20)
N_CONFLICT = 60
CONFLICT_CONFIGS: list[tuple[str, str, str | None, dict, str]] = [("base model", "conflict", None, {}, "conflict")] + [
    (f"{label}, {steps} steps", "conflict", "flearning", overrides | {"steps": steps, "early_stop_loss": 0.0}, "conflict")
    for label, overrides in CONFLICT_METHODS for steps in CONFLICT_STEPS]


def conflict_requests(model, tokenizer, model_dir: Path):  # noqa: ANN001, ANN201
    """The N_CONFLICT price facts the base model answers correctly with the lowest answer NLL, each
    changed to another price of the catalogue (seeded): updates that conflict with confident knowledge."""
    from infra.demo import generate_catalogue, load_demo_templates
    from infra.domain import EditRequest
    from validation.scoring import answer_nll, greedy_answers

    n_products = int(json.loads((model_dir / "build_report.json").read_text())["extra"]["n_facts"]) // 6
    facts = [f for f in generate_catalogue(n_products, 0) if f.relation == "price"]
    t = load_demo_templates()["price"]
    prompts = [t.render(f.subject) for f in facts]
    answers = [t.answer_format.format(object=f.object) for f in facts]
    greedy = greedy_answers(model, tokenizer, prompts)
    nll = answer_nll(model, tokenizer, prompts, answers)
    known = sorted((float(nll[i]), i) for i in range(len(facts)) if greedy[i] == answers[i])
    prices = sorted({f.object for f in facts})
    rng = random.Random(0)
    out = []
    for _, i in known[:N_CONFLICT]:
        f = facts[i]
        new = rng.choice([p for p in prices if p != f.object])
        out.append(EditRequest(f.subject, "price", prompts[i], t.answer_format.format(object=new), answers[i],
                               t.render_paraphrases(f.subject)))
    return out


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


def run_one(index: int, model_dir: Path, threads: int, conflict: bool = False) -> dict:
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
    label, claim, editor_name, overrides, which = (CONFLICT_CONFIGS if conflict else CONFIGS)[index]
    model, tokenizer = load_model(model_dir)
    requests, keep, corpus, gen_prompts = demo_requests(model_dir)
    if which == "conflict":
        requests["conflict"] = conflict_requests(model, tokenizer, model_dir)
        changed = {r.prompt for r in requests["conflict"]}
        keep = [pair for pair in keep if pair[0] not in changed]
    reqs = requests[which]
    base = greedy_answers(model, tokenizer, [p for p, _ in keep])
    keep = [pair for pair, a in zip(keep, base) if a == pair[1]]
    locality_set = random.Random(0).sample(keep, min(300, len(keep)))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = 0.0
    if editor_name is not None:
        hparams = resolve_hparams(editor_name, "demo", overrides)
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
        "fluency": None if conflict else ngram_entropy(generate_texts(model, tokenizer, gen_prompts, max_new_tokens=40, seed=0)),
        "steps": overrides.get("steps"), "lam": overrides.get("lam"), "variant": overrides.get("variant"),
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


def write_conflict(rows: list[dict], note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    base = next((r for r in rows if r["label"] == "base model"), None)
    for label, _ in CONFLICT_METHODS:
        pts = sorted((r for r in rows if r["label"].startswith(label + ",")), key=lambda r: r["steps"])
        style = "--" if "λ=0)" in label else "-"
        for ax, metric in zip(axes, ("efficacy", "paraphrase", "efficacy_tf")):
            ax.plot([r["locality"] for r in pts], [r[metric] for r in pts], style, marker="o", label=label)
            for r in pts:
                ax.annotate(str(r["steps"]), (r["locality"], r[metric]), fontsize=6)
    for ax, metric in zip(axes, ("efficacy (greedy)", "paraphrase (greedy)", "P(new) > P(old)")):
        ax.set_xlabel("locality (unedited facts kept)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if base is not None:
            ax.axvline(base["locality"], color="grey", lw=0.5)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Claim 2: {N_CONFLICT} confidently known prices changed; points = learning steps {CONFLICT_STEPS}")
    fig.tight_layout()
    fig.savefig(RESULTS / "finetune_conflict.png", dpi=110)
    cols = ["label", "requests", "efficacy", "efficacy_tf", "nll_new", "paraphrase", "paraphrase_tf", "locality",
            "sec_per_edit", "compute_peak_rss_mb"]
    out = [f"### Claim 2 (harder): F-Learning on {N_CONFLICT} conflicting price updates, step sweep (no early stop)\n\n| "
           + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"]
    for r in rows:
        out.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |\n")
    (RESULTS / "finetune_conflict_table.md").write_text("".join(out) + "\n" + note + "\n")
    print("".join(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only", default="", help="comma-separated config indices")
    parser.add_argument("--claim", choices=("saul-flearning", "conflict"), default="saul-flearning")
    args = parser.parse_args()
    conflict = args.claim == "conflict"
    if args.one is not None:
        print("RESULT " + json.dumps(run_one(args.one, args.model, args.threads, conflict)), flush=True)
        return
    indices = [int(i) for i in args.only.split(",")] if args.only else list(range(len(CONFLICT_CONFIGS if conflict else CONFIGS)))
    rows = []
    for i in indices:
        proc = subprocess.run([sys.executable, __file__, "--model", str(args.model), "--threads", str(args.threads),
                               "--claim", args.claim, "--one", str(i)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
        rows.append(json.loads(line[0][len("RESULT "):]))
        print(json.dumps(rows[-1]), flush=True)
    note = (f"Model: {args.model}; CPU only (no GPU in this session), {args.threads} thread(s); "
            "peak RSS is the process maximum after loading the model and computing the edit.")
    if conflict:
        with (RESULTS / "finetune_conflict.jsonl").open("w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
        write_conflict(rows, note)
        return
    with (RESULTS / "finetune_quality.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    write_results(rows, f"Model: {args.model}; CPU only (no GPU in this session), {args.threads} thread(s); "
                        "peak RSS is the process maximum after loading the model and computing the edit.")


if __name__ == "__main__":
    main()
