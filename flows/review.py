"""What a reviewer reads before deciding: the run's changes, the knowledge diff and the validation.

One Markdown text serves `kus review RUN` (rendered on the terminal) and the refresh's Prefect
artifact, so the UI and the CLI never disagree. The decision itself stays the CLI's signed path.
"""

from __future__ import annotations

from typing import Any

from infra import repository as repo
from infra.context import ServiceContext
from tasks.evaluate import KNOWLEDGE_DIFF_FILE
from tasks.run_artifacts import get_json, load_sets

#: Facts listed per section of the knowledge diff (the counts are always complete).
LISTED = 25


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", "\\n")


def review_markdown(ctx: ServiceContext, run_id: int) -> str:
    """The review of an evaluated run, as Markdown."""
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
    sets = load_sets(ctx, run_id)
    diff = get_json(ctx, run_id, KNOWLEDGE_DIFF_FILE)
    validation = run.validation or {}
    after = {d["prompt"]: d["after"] for d in diff["intended"] + diff["broken"] + diff["churn"]}
    lines = [f"# Run {run.id}: {run.model_name}, editor {run.editor}, status {run.status}", "",
             f"Started by {run.started_by}; delta `{(run.delta_sha or '-')[:12]}`. "
             f"Decide with `kus approve {run.id} --reason ...` or `kus reject {run.id} --reason ...`.", "",
             f"## What changes ({len(sets.targets)} facts)", "",
             "| fact | live model says | database says | edited model says |", "|---|---|---|---|"]
    for target in sets.targets[:LISTED * 2]:
        says = after.get(target.prompt, target.target_new)
        lines.append(f"| {_cell(target.prompt)} | {_cell(target.target_true)} | {_cell(target.target_new)} | {_cell(says)} |")
    if len(sets.targets) > LISTED * 2:
        lines.append(f"| ... and {len(sets.targets) - LISTED * 2} more | | | |")
    counts = diff["counts"]
    lines += ["", f"## Knowledge diff against the live model ({diff['n_facts']} catalogue facts asked)", "",
              f"- intended: {counts['intended']} changed facts now say the database value",
              f"- **broken: {counts['broken']}** facts the live model said right and the edited model says wrong",
              f"- repaired: {counts['repaired']} unchanged facts the live model said wrong and now says right",
              f"- churn: {counts['churn']} facts wrong before and wrong, differently, after"]
    for section in ("broken", "churn", "repaired"):
        if diff[section]:
            lines += ["", f"### {section}", "", "| fact | database | before | after |", "|---|---|---|---|"]
            for item in diff[section][:LISTED]:
                lines.append(f"| {_cell(item['prompt'])} | {_cell(item['database'])} | {_cell(item['before'])} | "
                             f"{_cell(item['after'])} |")
            if len(diff[section]) > LISTED:
                lines.append(f"| ... and {len(diff[section]) - LISTED} more | | | |")
    agreement = (run.metrics or {}).get("agreement") or {}
    if agreement:
        before, after_agree = agreement.get("before", {}), agreement.get("after", {})

        def share(value: Any) -> str:
            return "-" if value is None else f"{float(value):.3f}"

        lines += ["", "## Catalogue agreement (does the model say what the database says?)", "",
                  "| facts | live model | edited model | asked |", "|---|---:|---:|---:|",
                  f"| changed facts | {share(before.get('changed'))} | {share(after_agree.get('changed'))} | "
                  f"{after_agree.get('n_changed', 0)} |",
                  f"| unchanged facts | {share(before.get('unchanged'))} | {share(after_agree.get('unchanged'))} | "
                  f"{after_agree.get('n_unchanged', 0)} |",
                  f"| unchanged facts the base knew, still right | - | {share(after_agree.get('unchanged_kept'))} | |"]
    lines += ["", f"## Retention validation: {'PASS' if validation.get('success') else 'FAIL'}", "",
              "| metric | observed | bound | result |", "|---|---:|---|---|"]
    for check in validation.get("checks", []):
        observed = "missing" if check["observed"] is None else f"{check['observed']:.3f}"
        bound = f"{'>=' if check['kind'] == 'min' else '<='} {check['threshold']:.3f}"
        lines.append(f"| {check['metric']} | {observed} | {bound} | {'pass' if check['success'] else '**FAIL**'} |")
    return "\n".join(lines) + "\n"
