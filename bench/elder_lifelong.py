"""ELDER vs per-edit LoRA in lifelong editing: N sequential single edits on the demo model (CPU).

Each edit is computed on the live model (base + every earlier delta of the chain) and applied;
ELDER carries its experts, routers and stored keys from delta to delta (`EditContext.state`) and each
new ELDER delta replaces the older module (the older one is reverted, as serving only ever uses the
newest), LoRA merges one low-rank delta per edit. At checkpoints we score, greedily, on fixed samples
so evaluation stays cheap: efficacy on up to `--eval-edits` of the edits so far (a fixed random order
of the whole edit list, restricted to those done), paraphrase generalisation on their paraphrases
(never trained on), and locality on up to 200 unedited facts the base model answered correctly (half of them
with 1,000 edits of the 1,200 demo facts; the other half is the fact pool the editors may train on).
ELDER's chain is scored twice: with code deferral only (ELDER) and with our key guard on the same
state ("elder+keys": serving option only, training is identical).

    python bench/elder_lifelong.py --model var/models/demo --n 1000 --checkpoints 1,10,50,100,250,500,1000
    # writes bench/results/elder_lifelong_table.md, elder_lifelong.png, elder_lifelong.jsonl
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
    "lora (per edit)": ("lora", {}),
}
KEY_GUARD = 0.97  # cosine of the optional key guard, scored on the ELDER chain as "elder+keys"


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


def run(method: str, model_dir: Path, n: int, checkpoints: list[int], seed: int, eval_edits: int, overrides_extra: dict,
        on_checkpoint=None) -> list[dict]:  # noqa: ANN001
    editor_name, overrides = METHODS[method]
    overrides = overrides | overrides_extra
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
    # half of the unedited facts score locality, the other half are the editors' fact pool (ELDER's
    # negatives): never train deferral on the facts that measure it
    locality_set = random.Random(seed).sample(keep, min(200, len(keep) // 2))
    context_pool = tuple(pair for pair in keep if pair not in set(locality_set))
    corpus = tuple(generic_texts(facts, n=100, seed=seed))
    hparams = resolve_hparams(editor_name, "demo", overrides)
    editor = get_editor(editor_name)
    fingerprint = weights_fingerprint(model)
    state: dict = {}
    order = list(range(len(edits)))
    random.Random(seed + 1).shuffle(order)  # the evaluation sample: the first `eval_edits` done edits in this order
    applied = None
    rows = []
    seconds = 0.0
    steps = 0
    started_all = time.perf_counter()
    for i, request in enumerate(edits, start=1):
        started = time.perf_counter()
        result = editor.compute(model, tokenizer, [request], hparams,
                                EditContext(state=state, fact_pool=context_pool, corpus=corpus))
        tensors = dict(result.tensors) | {f"state::{k}": v for k, v in result.state.items()}
        extra = {"apply_kind": result.apply_kind} if result.apply_kind != "weights" else None
        delta = Delta.create(tensors, editor=editor_name, hparams={}, base_fingerprint=fingerprint, parent=None,
                             facts=[], model=model, extra=extra)
        if result.apply_kind == "elder" and applied is not None:
            applied.revert()  # the new ELDER delta carries everything the older one had
        applied = delta.apply(model, verify=False)  # LoRA: merged for good (its revert handle is dropped)
        state = result.state
        seconds += time.perf_counter() - started
        steps += int(result.stats.get("steps", hparams.steps))
        if i in checkpoints:
            sample = [edits[j] for j in order if j < i][:eval_edits]
            scored = {}
            guards = [(method, None)] + ([("elder+keys", KEY_GUARD)] if editor_name == "elder" else [])
            for label, guard in guards:
                runtime = _elder_runtime(model)
                if runtime is not None:
                    runtime.key_similarity = guard
                scored[label] = {
                    "efficacy": accuracy(model, tokenizer, [(r.prompt, r.target_new) for r in sample]),
                    "paraphrase": accuracy(model, tokenizer, [(p, r.target_new) for r in sample for p in r.paraphrases]),
                    "locality": accuracy(model, tokenizer, locality_set),
                }
            runtime = _elder_runtime(model)
            if runtime is not None:
                runtime.key_similarity = hparams.key_similarity
            memory = sum(v.numel() * v.element_size() for k, v in state.items()
                         if k in ("elder.codes", "elder.key_queries", "elder.key_probs"))
            for label, metrics in scored.items():
                row = {
                    "method": label, "edits": i, "eval_edits": len(sample), **metrics,
                    "sec_per_edit": seconds / i, "steps_per_edit": steps / i,
                    "wall_s": time.perf_counter() - started_all,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "state_params": sum(v.numel() for k, v in state.items() if ".lora_" in k or ".router." in k),
                    "codes": int(state["elder.codes"].shape[0]) if "elder.codes" in state else 0,
                    "keys": int(state["elder.key_queries"].shape[0]) if "elder.key_queries" in state else 0,
                    "memory_kb": memory / 1024,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            if on_checkpoint is not None:
                on_checkpoint(rows)
    return rows


def _elder_runtime(model):  # noqa: ANN001, ANN202
    """The runtime of the ELDER modules now serving in `model` (None without ELDER)."""
    from editing.elder.modules import ElderLinear

    for module in model.modules():
        if isinstance(module, ElderLinear):
            return module._runtime  # noqa: SLF001
    return None


def write_results(rows: list[dict], n: int, note: str, out: Path = RESULTS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
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
    fig.savefig(out / "elder_lifelong.png", dpi=110)
    header = ("| method | edits | scored edits | efficacy | paraphrase | locality | s/edit | steps/edit | peak RSS MB | "
              "stored keys | distinct codes | key memory KB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['method']} | {r['edits']} | {r['eval_edits']} | {r['efficacy']:.3f} | {r['paraphrase']:.3f} | {r['locality']:.3f} | "
        f"{r['sec_per_edit']:.2f} | {r['steps_per_edit']:.1f} | {r['peak_rss_mb']:.0f} | {r['keys']} | {r['codes']} | "
        f"{r['memory_kb']:.1f} |\n" for r in rows)
    (out / "elder_lifelong_table.md").write_text(header + body + "\n" + note + "\n")
    print(header + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--checkpoints", default="1,10,50,100,250,500,1000", help="comma-separated edit counts")
    parser.add_argument("--eval-edits", type=int, default=150, help="edits scored at a checkpoint (fixed sample)")
    parser.add_argument("--hparams", default="{}", help="JSON overrides for every method")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the table, plot and jsonl go")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if int(c) <= args.n} | {args.n})
    rows = []
    jsonl = args.out / "elder_lifelong.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl.write_text("")
    note = (f"Model: {args.model}; CPU only (no GPU in this session), {args.threads} thread(s); "
            f"overrides {args.hparams}.")
    for method in args.methods.split(","):
        for row in run(method, args.model, args.n, checkpoints, args.seed, args.eval_edits, json.loads(args.hparams),
                       on_checkpoint=lambda done: write_results(rows + done, args.n, note + " (partial)", args.out)):
            rows.append(row)
            with jsonl.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    write_results(rows, args.n, f"Model: {args.model}; CPU only (no GPU in this session), {args.threads} thread(s); "
                                f"overrides {args.hparams}.", args.out)


if __name__ == "__main__":
    main()
