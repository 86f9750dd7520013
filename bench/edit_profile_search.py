"""Editor settings on the demo's first refresh: what each candidate writes and what it breaks.

Sets up a demo home (catalogue, the demo's first change batch, ingest and sets exactly as the
service builds them), then for every candidate (an editor plan with hyperparameter overrides)
computes the delta on the base model and scores the retention table and catalogue agreement the
refresh would see. It is how the demo profile of SAUL was chosen (bench/results/edit_profile_search.md).

    ./dev.sh bench edit_profile_search --model var/models/demo \\
        --candidates '{"saul": {}, "saul-l3": {"layers": [3]}, "alphaedit+saul": {"_plan": "alphaedit,saul"}}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("efficacy_gen", "paraphrase_gen", "neighbourhood_unchanged", "unrelated_unchanged", "perplexity_drift",
           "fluency_drop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a built demo model directory")
    parser.add_argument("--candidates", required=True, help='JSON: {"name": {"_plan": "saul", "field": value}}')
    parser.add_argument("--out", type=Path, default=RESULTS / "edit_profile_search.jsonl")
    args = parser.parse_args()

    from editing.delta import Delta
    from editing.plan import run_plan
    from editing.protocol import EditContext
    from infra import repository as repo
    from infra.context import service_context
    from infra.demo.catalogue import generate_catalogue
    from infra.demo.changes import next_change_batch
    from infra.settings import Settings
    from tasks.catalogue_inputs import statistics_corpus_for
    from tasks.edit import fact_pool, plan_hparams
    from tasks.evaluate import base_answers
    from tasks.evaluation_sets import build_sets
    from tasks.ingest import ingest_changes
    from tasks.live_model import load_live_model
    from tasks.run_artifacts import load_sets
    from validation.agreement import agreement_answers, agreement_report
    from validation.evaluate import evaluate, retention_table

    with tempfile.TemporaryDirectory(prefix="kus-profile-") as tmp:
        settings = Settings.load(home=tmp, base_model_path=args.model)
        with service_context(settings) as ctx:
            with ctx.db.session() as session:
                repo.seed_facts(session, generate_catalogue(n_products=200))
                repo.upsert_facts(session, next_change_batch(repo.load_facts(session), 1), changed_by="demo-erp")
                facts = repo.load_facts(session)
            run_id = ingest_changes(ctx, "demo", "saul", "bench").run_id
            build_sets(ctx, run_id)
            sets = load_sets(ctx, run_id)
            live = load_live_model(ctx, "demo", head=None)
            base = base_answers(ctx, live, sets.agreement)
            before = evaluate(live.model, live.tokenizer, sets.targets, sets.regression)
            excluded = {p for p, _ in sets.regression.neighbourhood} | {p for p, _ in sets.regression.unrelated}
            context = EditContext(cache=ctx.store, fact_pool=fact_pool(ctx, sets.requests, excluded, live.model, live.tokenizer).keep,
                                  corpus=tuple(statistics_corpus_for(settings, facts)),
                                  model_fingerprint=live.base_fingerprint, from_base=True)
            for name, spec in json.loads(args.candidates).items():
                spec = dict(spec)
                plan = tuple(spec.pop("_plan", "saul").split(","))
                started = time.perf_counter()
                result = run_plan(live.model, live.tokenizer, sets.requests, plan_hparams(plan, live.model, spec), context)
                seconds = time.perf_counter() - started
                tensors = dict(result.tensors) | {f"state::{k}": v for k, v in result.state.items()}
                delta = Delta.create(tensors, editor=",".join(plan), hparams={}, base_fingerprint=live.base_fingerprint,
                                     parent=None, facts=[], model=live.model, extra={"apply_kind": result.apply_kind})
                handle = delta.apply(live.model)
                try:
                    after = evaluate(live.model, live.tokenizer, sets.targets, sets.regression)
                    agreement = agreement_report(sets.agreement,
                                                 agreement_answers(live.model, live.tokenizer, sets.agreement), base)
                finally:
                    handle.revert()
                table = {r["metric"]: r["after"] for r in retention_table(before, after).to_dict(orient="records")}
                row = {"candidate": name, "plan": list(plan), "overrides": spec, "seconds": round(seconds, 1),
                       **{c: round(float(table[c]), 3) for c in COLUMNS},
                       "agreement_changed": round(agreement.changed, 3), "unchanged_kept": round(agreement.unchanged_kept, 3),
                       "targets": len(sets.targets)}
                with args.out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
