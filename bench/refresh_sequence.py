"""Consecutive demo refreshes through the service's own steps: does the live model keep agreeing
with the database as the catalogue keeps changing?

Each refresh: the ERP's next batch (price changes, new warranty terms, a renamed manufacturer)
plus a few facts changed back to their base value -> ingest -> sets -> edit (the plan, in the
chosen mode) -> evaluate -> GX retention suite -> the reviewer approves what passed (promotion) and
rejects what failed (its changes stay outstanding). The steps are the service's task functions
on SQLite and a local store (no Prefect server: its overhead is not the editor's).

After every refresh it records the live model's catalogue agreement on changed facts, on
unchanged facts the base knew, whether the run passed, the ledger size and the seconds spent.

    ./dev.sh bench refresh_sequence --plan saul --mode sequential --refreshes 50
    ./dev.sh bench refresh_sequence --report      # table + plots of every results file

Results: bench/results/refresh_sequence/<plan>-<mode>.jsonl (one line per refresh, written as it
goes), refresh_sequence.md and refresh_sequence.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

RESULTS = Path(__file__).resolve().parent / "results"
OUT_DIR = RESULTS / "refresh_sequence"
STARTER, REVIEWER = "catalogue-team", "bench-reviewer"


def batch_for(facts, base: dict, refresh: int, rng: random.Random):
    """The ERP's batch, plus up to three facts (changed earlier) set back to their base value."""
    from infra.demo.changes import next_change_batch
    from infra.domain import Fact

    batch = next_change_batch(facts, refresh)
    current = {(f.subject, f.relation): f.object for f in facts}
    in_batch = {(f.subject, f.relation) for f in batch}
    changed = sorted(k for k, v in current.items() if k in base and base[k] != v and k not in in_batch)
    for subject, relation in rng.sample(changed, min(3, len(changed))):
        batch.append(Fact(subject, relation, base[(subject, relation)], source="demo-erp"))
    return batch


def run_sequence(plan: str, mode: str, refreshes: int, home: Path, model_dir: Path, policy: str = "gate",
                 tag: str = "", max_targets: int | None = None) -> Path:
    """`policy`: "gate" (the reviewer approves what passed the retention suite, rejects the rest) or
    "promote-all" (every candidate is promoted, failed ones by override: how the chain itself ages)."""
    from infra import repository as repo
    from infra.context import service_context
    from infra.demo.catalogue import generate_catalogue
    from infra.settings import Settings
    from tasks.edit import compute_delta
    from tasks.evaluate import evaluate_delta
    from tasks.evaluation_sets import build_sets
    from tasks.ingest import ingest_changes
    from tasks.promotion import promote_run, record_decision
    from tasks.run_artifacts import load_sets
    from infra.audit import list_events
    from tasks.validate import request_approval, validate_run

    from infra.signing import generate_key, load_private_key, register_reviewer_key

    settings = Settings.load(home=home, base_model_path=model_dir, default_editor=plan, edit_mode=mode,
                             reviewers=(REVIEWER,), **({"max_targets": max_targets} if max_targets else {}))
    pem, public = generate_key()
    register_reviewer_key(settings.reviewer_keys_file, REVIEWER, public)
    reviewer_key = load_private_key(pem)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"{plan.replace(',', '+')}-{mode}{'' if policy == 'gate' else '-' + policy}{'-' + tag if tag else ''}.jsonl"
    out.write_text("")
    # what the series ran on, in every row: the same policy gives different series on another model build
    from editing.model_io import load_model, weights_fingerprint

    model_fingerprint = weights_fingerprint(load_model(model_dir)[0])[:12]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True).stdout.strip()
    rng = random.Random(0)
    seed = generate_catalogue(n_products=200)
    base = {(f.subject, f.relation): f.object for f in seed}
    with service_context(settings) as ctx:
        with ctx.db.session() as session:
            repo.seed_facts(session, seed)
        for refresh in range(1, refreshes + 1):
            with ctx.db.session() as session:
                facts = repo.load_facts(session)
                repo.upsert_facts(session, batch_for(facts, base, refresh, rng), changed_by="demo-erp")
            started = time.perf_counter()
            outcome = ingest_changes(ctx, settings.model_name, plan, STARTER)
            if outcome.run_id is None:
                continue
            run_id = outcome.run_id
            build_sets(ctx, run_id)
            t_edit = time.perf_counter()
            compute_delta(ctx, run_id)
            edit_seconds = time.perf_counter() - t_edit
            evaluate_delta(ctx, run_id)
            validation = validate_run(ctx, run_id)
            request_approval(ctx, run_id)
            passed = bool(validation["success"])
            promoted = passed or policy == "promote-all"
            record_decision(ctx, run_id, REVIEWER, "approved" if promoted else "rejected",
                            "bench: retention suite " + ("passed" if passed else "failed"),
                            override_validation=policy == "promote-all", signing_key=reviewer_key)
            if promoted:
                promote_run(ctx, run_id, REVIEWER)
            seconds = time.perf_counter() - started
            with ctx.db.session() as session:
                run = repo.get_run(session, run_id)
                ledger = len(repo.ledger(session))
                events = list_events(session)
                edit_event = next((e.payload for e in reversed(events)
                                   if e.action == "edit" and e.subject == f"run:{run_id}"), {})
                sets_event = next((e.payload for e in reversed(events)
                                   if e.action == "build_sets" and e.subject == f"run:{run_id}"), {})
            agreement = run.metrics["agreement"]["after" if promoted else "before"]
            row = {
                "refresh": refresh, "run": run_id, "plan": plan, "mode": run.metrics.get("mode"), "passed": passed,
                "model_fingerprint": model_fingerprint, "commit": commit,
                "promoted": promoted, "policy": policy,
                "failed": [c["metric"] for c in validation["checks"] if not c["success"]],
                "ledger": ledger, "targets": outcome.outstanding, "seconds": round(seconds, 1),
                "edited": len(load_sets(ctx, run_id).targets), "cap": sets_event.get("cap"),
                "attempt": edit_event.get("attempt", 0),
                "repair_facts": edit_event.get("repair_facts", 0),
                "steps": sum(r.get("steps") or 0 for r in edit_event.get("routing", [])),
                "edit_seconds": round(edit_seconds, 1),
                "held": sets_event.get("held", 0), "deferred": sets_event.get("deferred", 0),
                "retries": sets_event.get("retries", 0),
                # the catalogue's view: facts deferred to later refreshes are changed facts the live model
                # does not say yet (outstanding by definition), so they count against agreement here
                "catalogue_changed_agree": _with_deferred(agreement, sets_event.get("deferred", 0)),
                "agreement_changed": agreement["changed"], "unchanged_kept": agreement["unchanged_kept"],
                "agreement_unchanged": agreement["unchanged"],
                "candidate_changed": run.metrics["agreement"]["after"]["changed"],
                "candidate_kept": run.metrics["agreement"]["after"]["unchanged_kept"],
                **process_footprint(ctx),
            }
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    return out


def _with_deferred(agreement: dict, deferred: int) -> float | None:
    n = agreement.get("n_changed")
    if agreement.get("changed") is None or not n:
        return None
    return agreement["changed"] * n / (n + deferred)


def process_footprint(ctx) -> dict:  # noqa: ANN001 - a ServiceContext
    """Resident memory, open file descriptors and database connections checked out now: flat over a
    long sequence, or something leaks."""
    fds = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else -1
    pool = ctx.db.engine.pool
    import resource

    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the high-water mark so far (Linux: kB)
    from infra.memory import resident_mb

    return {"rss_mb": round(resident_mb(), 1), "peak_rss_mb": round(peak_kb / 1024, 1), "open_fds": fds,
            "db_connections": pool.checkedout() if hasattr(pool, "checkedout") else -1}


def report() -> None:
    """refresh_sequence.md (the last refresh of every series, and its pass rate) and one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from series_files import read_series

    series = read_series(OUT_DIR)
    lines = [
        "# Consecutive demo refreshes: catalogue agreement, retention pass rate, time",
        "",
        "Command: `./dev.sh bench refresh_sequence --plan <plan> --mode <mode> --refreshes <n>`, then `--report`.",
        "Live model after each refresh (the candidate when it was promoted, else the previous head). Policy",
        "`gate`: the reviewer approves what passed the retention suite and rejects the rest (its changes stay",
        "outstanding); `promote-all`: every candidate is promoted (failed ones by override), to see how a chain ages.",
        "Goal for the default: after 50 refreshes changed facts agree >= 0.95, unchanged facts the base",
        "knew still right >= 0.98, every refresh passes the retention suite, time grows slower than the ledger.",
        "",
        "Seconds are wall time on 2 cores; for part of some series other benchmarks shared them, so compare",
        "a series' own first and last refreshes with care. `candidate` columns are the edited model each",
        "refresh proposed (what a reviewer saw), whether or not it was promoted.",
        "",
        "`catalogue: changed agree` counts the changes a refresh left out (over the cap, or held back after a",
        "rejection) as what they are, changes the live model does not say yet; `live: changed agree` scores only",
        "the changes the run took on (series before 2026-11-29 evening lack the catalogue column).",
        "",
        "| series | refreshes | passed | live: changed agree (last) | catalogue: changed agree (last) | outstanding (last) | live: unchanged kept (last) | candidate: changed agree (last) | candidate: unchanged kept (last) | min candidate kept | ledger (last) | s/refresh first 5 | s/refresh last 5 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in series.items():
        passed = sum(r["passed"] for r in rows)
        kept = [r["candidate_kept"] for r in rows if r["candidate_kept"] is not None]
        first = sum(r["seconds"] for r in rows[:5]) / min(5, len(rows))
        last = sum(r["seconds"] for r in rows[-5:]) / min(5, len(rows))
        catalogue = rows[-1].get("catalogue_changed_agree")
        lines.append(f"| {name} | {len(rows)} | {passed}/{len(rows)} | {rows[-1]['agreement_changed']:.3f} | "
                     f"{'–' if catalogue is None else f'{catalogue:.3f}'} | {rows[-1]['targets']} | "
                     f"{rows[-1]['unchanged_kept']:.3f} | {rows[-1]['candidate_changed']:.3f} | "
                     f"{rows[-1]['candidate_kept']:.3f} | {min(kept):.3f} | {rows[-1]['ledger']} | {first:.0f} | {last:.0f} |")
    failures: dict[str, dict[str, int]] = {}
    for name, rows in series.items():
        for r in rows:
            for metric in r["failed"]:
                failures.setdefault(name, {}).setdefault(metric, 0)
                failures[name][metric] += 1
    if failures:
        lines += ["", "Checks that failed (refreshes):", ""]
        for name, counts in failures.items():
            lines.append(f"- {name}: " + ", ".join(f"{m} {n}" for m, n in sorted(counts.items())))
    (RESULTS / "refresh_sequence.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, rows in series.items():
        x = [r["refresh"] for r in rows]
        axes[0].plot(x, [r["candidate_changed"] for r in rows], label=name)
        axes[1].plot(x, [r["candidate_kept"] for r in rows], label=name)
        axes[2].plot([r["ledger"] for r in rows], [r["seconds"] for r in rows], marker=".", label=name)
    axes[0].set(title="changed facts the edited model agrees on", xlabel="refresh", ylim=(0, 1.02))
    axes[1].set(title="unchanged facts the base knew: still right", xlabel="refresh", ylim=(0.0, 1.02))
    axes[2].set(title="seconds per refresh vs ledger size", xlabel="ledger (facts)", ylabel="s")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "refresh_sequence.png", dpi=110)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", default="saul")
    parser.add_argument("--mode", default="auto", choices=["auto", "sequential", "cumulative"])
    parser.add_argument("--refreshes", type=int, default=50)
    parser.add_argument("--policy", choices=["gate", "promote-all"], default="gate",
                        help="promote-all: promote failed candidates too (by override), to measure how the chain ages")
    parser.add_argument("--model", type=Path, default=None, help="a built demo model (default: build one under the run's home)")
    parser.add_argument("--tag", default="", help="a suffix for the series' file name (e.g. the profile it ran with)")
    parser.add_argument("--max-targets", type=int, default=None,
                        help="KUS_MAX_TARGETS for the series: the most facts one refresh edits (the rest wait)")
    parser.add_argument("--report", action="store_true", help="only write the table and plot from the results files")
    args = parser.parse_args()
    if args.report:
        report()
        return
    with tempfile.TemporaryDirectory(prefix="kus-bench-") as tmp:
        home = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            from flows.demo import ensure_model
            from infra.settings import Settings

            model_dir = ensure_model(Settings.load(home=home)).path
        run_sequence(args.plan, args.mode, args.refreshes, home, model_dir, args.policy, args.tag, args.max_targets)
    report()


if __name__ == "__main__":
    main()
