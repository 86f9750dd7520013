"""A catalogue refresh on SmolLM2-135M through the CLI, as a customer runs it: time per step and peak memory.

The catalogue is real data: CounterFact records the model knows (`counterfact_smollm2.select_known`),
one fact per record (subject, a relation per prompt shape, the true object); the changes are the
first `--changes` records' counterfactual objects. Every step is a `kus` command in its own process,
as a user types it (`init`, `seed-catalogue`, `doctor`, `import-facts`, `refresh`, `show`); each
process's peak RSS comes from `/usr/bin/time`, and the refresh's own steps (ingest, sets, edit,
evaluate, validate) are timed from the audit trail's timestamps.

    ./dev.sh bench smollm2_refresh --editor ultraedit --changes 60

Results: bench/results/smollm2_refresh.jsonl (a line per run), smollm2_refresh.md and .png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from infra.memory import resident_mb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KUS = ROOT / ".venv" / "bin" / "kus"
COLUMNS = ("date", "editor", "facts", "changes", "answer match", "threads", "stats corpus", "refresh s", "sets", "edit",
           "evaluate", "validate", "refresh peak RSS MB", "doctor peak MB", "efficacy_gen", "paraphrase_gen",
           "neighbourhood_unchanged", "unrelated_unchanged", "perplexity_drift", "agreement_changed", "unchanged_kept",
           "status")
STEPS = ("ingest", "build_sets", "edit", "evaluate", "validate", "approval_requested")


def relation_of(template: str) -> str:
    """A relation name for a prompt shape: its words, lowercased and joined (stable, readable)."""
    words = re.findall(r"[a-z]+", template.replace("{subject}", " ").lower())
    return "_".join(words)[:60] or "fact"


def catalogue_files(known: list[dict], folder: Path, n_changes: int) -> tuple[int, int]:
    """catalogue.csv (every known record's true fact), changes.csv (the first `n_changes` records'
    counterfactual objects), templates.yaml (a relation per prompt shape), held-out and generic text."""
    templates: dict[str, dict] = {}
    facts: dict[tuple[str, str], dict] = {}
    for record in known:
        subject = record["subject"]
        if subject not in record["prompt"]:
            continue
        shape = record["prompt"].replace(subject, "{subject}", 1)
        relation = relation_of(shape)
        entry = templates.setdefault(relation, {"prompt": shape, "paraphrases": []})
        if entry["prompt"] != shape or (subject, relation) in facts:
            continue  # two shapes with one name, or a subject asked twice: keep the first
        rephrase = record["rephrase_prompt"]
        if subject in rephrase and not entry["paraphrases"]:
            entry["paraphrases"].append(rephrase.replace(subject, "{subject}", 1))
        facts[(subject, relation)] = record
    with (folder / "catalogue.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["subject", "relation", "object"])
        for (subject, relation), record in facts.items():
            out.writerow([subject, relation, record["ground_truth"]])
    changed = list(facts.items())[:n_changes]
    with (folder / "changes.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["subject", "relation", "object"])
        for (subject, relation), record in changed:
            out.writerow([subject, relation, record["target_new"]])
    (folder / "templates.yaml").write_text(json.dumps(templates, indent=1))  # JSON is YAML
    edited = {id(r) for _, r in changed}
    rest = [r for r in known if id(r) not in edited]
    (folder / "heldout.txt").write_text("\n".join(f"{r['rephrase_prompt']} {r['ground_truth']}." for r in rest[:100]) + "\n")
    (folder / "generic.txt").write_text("\n".join(f"{r['prompt']} {r['ground_truth']}." for r in rest[100:400]) + "\n")
    return len(facts), len(changed)


class RssSampler(threading.Thread):
    """Samples a process's resident memory every `every` seconds: (wall-clock time, MB) pairs, to be
    cut into the refresh's steps by the audit trail's timestamps (`step_peaks`)."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.samples = pid, every, []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            mb = resident_mb(self.pid)
            if mb:
                self.samples.append((time.time(), round(mb, 1)))
            self.done.wait(self.every)


def kus(args: list[str], env: dict[str, str], log: Path) -> dict:
    """One CLI command in its own process: exit code, seconds, peak RSS (MB), RSS samples and its output."""
    timing = log.with_suffix(".time")
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ kus {' '.join(args)}\n")
        out.flush()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(timing), str(KUS), *args], env=env,
                                stdout=subprocess.PIPE, stderr=out, text=True)
        sampler = None
        for _ in range(200):  # the kus process is /usr/bin/time's child
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            kids = children.read_text().split() if children.exists() else []
            if kids:
                sampler = RssSampler(int(kids[0]))
                sampler.start()
                break
            time.sleep(0.02)
        stdout, _ = proc.communicate()
        if sampler is not None:
            sampler.done.set()
            sampler.join()
        out.write(stdout)
    seconds = time.perf_counter() - started
    peak_kb = int(timing.read_text().strip().splitlines()[-1]) if timing.is_file() else 0
    return {"rc": proc.returncode, "seconds": round(seconds, 1), "peak_rss_mb": round(peak_kb / 1024, 1),
            "stdout": stdout, "rss": sampler.samples if sampler else []}


def step_peaks(samples: list[tuple[float, float]], events: list[tuple[str, datetime]]) -> dict[str, float]:
    """Peak RSS (MB) of the refresh process within each step: the samples between the step's audit
    event and the one before it ("start" is everything before the first event: start-up, model load)."""
    peaks: dict[str, float] = {}
    bounds = [("start", float("-inf"))] + [(action, at.timestamp()) for action, at in events]
    for (_, prev), (action, at) in zip(bounds, bounds[1:]):
        inside = [mb for t, mb in samples if prev < t <= at]
        if inside and action in ("start", *STEPS):
            peaks[action] = max(inside)
    first = bounds[1][1] if len(bounds) > 1 else float("inf")
    before = [mb for t, mb in samples if t <= first]
    if before:
        peaks["start"] = max(before)
    after = [mb for t, mb in samples if t > bounds[-1][1]]
    if after:
        peaks["after the last event"] = max(after)
    return peaks


def run_events(home: Path, env: dict[str, str]) -> list[tuple[str, datetime]]:
    """(action, time) of run 1's audit events, in order (from a JSON lines export)."""
    out = home / "audit.jsonl"
    subprocess.run([str(KUS), "--quiet", "audit", "export", "--format", "jsonl", "--out", str(out)], env=env,
                   check=True, capture_output=True)
    events = [json.loads(line) for line in out.read_text().splitlines()]
    return [(e["action"], datetime.fromisoformat(e["at"])) for e in events if e["subject"] == "run:1"]


def step_seconds(stamps: list[tuple[str, datetime]]) -> dict[str, float]:
    """Seconds of each refresh step, from consecutive audit events of the run."""
    return {action: round((at - prev).total_seconds(), 1)
            for (_, prev), (action, at) in zip(stamps, stamps[1:]) if action in STEPS}


READ_TABLE = """
import json
from infra import repository as repo
from infra.context import service_context
with service_context() as ctx, ctx.db.session() as session:
    run = repo.get_run(session, 1)
    print(json.dumps({"status": run.status, "table": (run.metrics or {}).get("table", [])}))
"""


def retention_after(env: dict[str, str]) -> dict:
    """The run's status and retention table (metric -> after), read from the service's database."""
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", READ_TABLE], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=True)
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"status": data["status"], **{r["metric"]: round(float(r["after"]), 3) for r in data["table"]
                                         if r.get("after") is not None}}


def run(args: argparse.Namespace) -> dict:
    import torch

    from counterfact_smollm2 import DATA, select_known
    from editing.model_io import load_model

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    model, tok = load_model(args.model)
    records = json.loads(DATA.read_text())[: args.scan]
    known, _ = select_known(model, tok, records)
    del model
    folder = Path(tempfile.mkdtemp(prefix="kus-smollm2-refresh-"))
    n_facts, n_changes = catalogue_files(known, folder, args.changes)
    env = {**os.environ, "KUS_HOME": str(folder / "home"), "KUS_BASE_MODEL": str(args.model),
           "KUS_MODEL_NAME": "smollm2-135m", "KUS_TEMPLATES": str(folder / "templates.yaml"),
           "KUS_HELDOUT_TEXT": str(folder / "heldout.txt"), "KUS_STATS_CORPUS": str(Path(args.corpus_file).resolve() if args.corpus_file else folder / "generic.txt"),
           "KUS_EDITOR": args.editor, "KUS_USER": "catalogue-bot", "HF_HUB_OFFLINE": "1"}
    for key in ("KUS_DATABASE_URL", "KUS_DELTA_STORE", "PREFECT_API_URL"):
        env.pop(key, None)
    log = folder / "commands.log"
    steps = {}
    for name, argv in (("init", ["init"]), ("seed", ["seed-catalogue", str(folder / "catalogue.csv")]),
                       ("doctor", ["doctor"]), ("import", ["import-facts", str(folder / "changes.csv")]),
                       ("refresh", ["refresh"]), ("show", ["show", "1"])):
        steps[name] = kus(argv, env, log)
        print(f"{name}: rc {steps[name]['rc']}, {steps[name]['seconds']} s, peak {steps[name]['peak_rss_mb']} MB",
              flush=True)
    table = retention_after(env)
    events = run_events(folder / "home", env)
    model_mb = sum(f.stat().st_size for f in Path(args.model).glob("*.safetensors")) / 2**20
    row = {"date": time.strftime("%Y-%m-%d"), "editor": args.editor, "facts": n_facts, "changes": n_changes,
           "answer_match": env.get("KUS_ANSWER_MATCH", "auto"),
           "threads": torch.get_num_threads(),
           "doctor": steps["doctor"]["stdout"].strip().splitlines()[:12],
           "commands": {k: {kk: vv for kk, vv in v.items() if kk not in ("stdout", "rss")} for k, v in steps.items()},
           "refresh_steps": step_seconds(events), "after": table, "folder": str(folder),
           "model_mb": round(model_mb, 1), "step_peak_rss_mb": step_peaks(steps["refresh"]["rss"], events),
           "refresh_rss": steps["refresh"]["rss"][::4], "code": args.code or time.strftime("%Y-%m-%d"),
           "stats_corpus": Path(args.corpus_file).stem if args.corpus_file else "counterfact"}
    with (RESULTS / "smollm2_refresh.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def report() -> None:
    rows = [json.loads(line) for line in (RESULTS / "smollm2_refresh.jsonl").read_text().splitlines() if line.strip()]
    lines = ["# A refresh on SmolLM2-135M through the CLI (2-core CPU)", "",
             "`bench/smollm2_refresh.py`: CounterFact records the model knows as the catalogue (a relation per prompt "
             "shape), the first N records' counterfactual objects as the changes; every step a `kus` command in its "
             "own process. Peak RSS per command from `/usr/bin/time`; the refresh's steps from the gaps between its audit "
             "events (`refresh s` also holds start-up, model loading and ingest). Plot: `smollm2_refresh.png`. Command, "
             "one row each: `OMP_NUM_THREADS=1 ./dev.sh bench smollm2_refresh --editor EDITOR --changes 60 [--corpus-file FILE]`.", "",
             "| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if c in ("date", "editor", "answer match", "status") else "---:" for c in COLUMNS) + "|"]
    for r in rows:
        s, c, a = r["refresh_steps"], r["commands"], r["after"]
        lines.append(
            f"| {r['date']} | {r['editor']} | {r['facts']} | {r['changes']} | {r.get('answer_match', 'exact')} | {r['threads']} | "
            f"{r.get('stats_corpus', 'counterfact')} | {c['refresh']['seconds']} | "
            f"{s.get('build_sets', '-')} | {s.get('edit', '-')} | {s.get('evaluate', '-')} | "
            f"{s.get('validate', '-')} | {c['refresh']['peak_rss_mb']} | {c['doctor']['peak_rss_mb']} | "
            f"{a.get('efficacy_gen', '-')} | {a.get('paraphrase_gen', '-')} | {a.get('neighbourhood_unchanged', '-')} | "
            f"{a.get('unrelated_unchanged', '-')} | {a.get('perplexity_drift', '-')} | {a.get('agreement_changed', '-')} | "
            f"{a.get('unchanged_kept', '-')} | {a.get('status', '-')} |")
    lines += memory_table(rows)
    (RESULTS / "smollm2_refresh.md").write_text("\n".join(lines) + "\n")
    plot(rows)
    plot_memory(rows)
    print("\n".join(lines))


MEMORY_STEPS = ("start", "ingest", "build_sets", "edit", "evaluate", "validate", "approval_requested")


def memory_table(rows: list[dict]) -> list[str]:
    """Peak RSS of `kus refresh` within each step (sampled every 0.25 s; runs that recorded samples)."""
    sampled = [r for r in rows if r.get("step_peak_rss_mb")]
    if not sampled:
        return []
    lines = ["", "## Peak memory per refresh step", "",
             "Resident memory of the `kus refresh` process, sampled every 0.25 s and cut into steps by the run's "
             "audit events (`start`: start-up and everything before the first event; each step ends at its own "
             "event). `x model` divides the refresh's peak by the size of the model's weights on disk; the last column "
             "leaves out what the process holds before it loads a model (Python, torch, transformers, Prefect, GX). "
             "Plot: `smollm2_refresh_memory.png`.", "",
             "| code | editor | changes | model MB | " + " | ".join(MEMORY_STEPS) + " | peak MB | x model | "
             "(peak - start) / model |",
             "|---|---|---:|---:|" + "---:|" * (len(MEMORY_STEPS) + 3)]
    for r in sampled:
        peaks = r["step_peak_rss_mb"]
        top = max(peaks.values())
        lines.append(f"| {r.get('code', r['date'])} | {r['editor']} | {r['changes']} | {r['model_mb']} | "
                     + " | ".join(str(peaks.get(s, "-")) for s in MEMORY_STEPS)
                     + f" | {top} | {top / r['model_mb']:.1f} | {(top - peaks['start']) / r['model_mb']:.1f} |")
    return lines


def plot_memory(rows: list[dict]) -> None:
    """RSS of `kus refresh` over time, one line per sampled run, with the model's size for scale."""
    sampled = [r for r in rows if r.get("refresh_rss")]
    if not sampled:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in sampled:
        t0 = r["refresh_rss"][0][0]
        ax.plot([t - t0 for t, _ in r["refresh_rss"]], [mb for _, mb in r["refresh_rss"]],
                label=f"{r['editor']}, {r['changes']} changes: {r.get('code', r['date'])[:60]}")
    ax.axhline(sampled[-1]["model_mb"], color="grey", linestyle=":", label="model weights")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("RSS MB (kus refresh)")
    ax.set_title("Memory of a refresh on SmolLM2-135M, 2-core CPU")
    ax.legend(fontsize=6.5)
    fig.tight_layout()
    fig.savefig(RESULTS / "smollm2_refresh_memory.png", dpi=110)


def plot(rows: list[dict]) -> None:
    """Seconds per refresh step, one stacked bar per run (the rest: start-up, model loading, ingest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['editor']}\n{r['changes']} changes" for r in rows]
    bottom = [0.0] * len(rows)
    for step, name in (("build_sets", "sets"), ("edit", "edit"), ("evaluate", "evaluate"), ("validate", "validate")):
        values = [float(r["refresh_steps"].get(step, 0.0)) for r in rows]
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    rest = [max(0.0, float(r["commands"]["refresh"]["seconds"]) - b) for r, b in zip(rows, bottom)]
    ax.bar(labels, rest, bottom=bottom, label="start-up, load, ingest", color="lightgrey")
    ax.axhline(300, color="red", linestyle="--", linewidth=1, label="goal: 300 s")
    ax.set_ylabel("seconds (kus refresh)")
    ax.set_title("A refresh on SmolLM2-135M, 2-core CPU")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "smollm2_refresh.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "var" / "models" / "smollm2-135m")
    parser.add_argument("--editor", default="ultraedit")
    parser.add_argument("--changes", type=int, default=60)
    parser.add_argument("--scan", type=int, default=400, help="CounterFact records scanned for known facts")
    parser.add_argument("--corpus-file", default=None,
                        help="KUS_STATS_CORPUS for the refresh (e.g. var/corpora/lee-news.txt); default: sentences of "
                             "known records that are not in the catalogue's changes")
    parser.add_argument("--code", default=None, help="a label for the code this run measures (the memory table's first column)")
    parser.add_argument("--report", action="store_true", help="only write the table from the results file")
    args = parser.parse_args()
    if not args.report:
        run(args)
    report()


if __name__ == "__main__":
    main()
