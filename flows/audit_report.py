"""The auditor's report: one static HTML page per run and a summary across runs.

An auditor (or compliance staff who do not read logs) needs, in one file that opens offline in any
browser, what a run changed, with which editor and settings, how validation went, who decided,
whether it went live or was rolled back, and whether the audit trail behind all of it is intact.
The pages are rendered from templates (Jinja2, autoescaped: facts and reasons come from users) and
kept in the delta store beside the run, so the report travels with the evidence::

    with service_context() as ctx:
        published = publish_run_report(ctx, run_id=7, out=Path("run-7.html"))
        published.key                           # "runs/7/audit-report.html" in the delta store
        publish_summary(ctx, out=Path("audit-summary.html"))

Everything is read through the repository, the audit trail and the run's verified files; a file
that fails its integrity check is reported as such, never trusted. Rendering writes nothing to the
audit trail, so producing a report never changes what it reports.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy.orm import Session

from infra import repository as repo
from infra.audit import AuditEvent, ChainReport, head_anchor, list_events, verify_chain
from infra.context import ServiceContext, current_user
from infra.db.models import utc, utcnow
from infra.errors import IntegrityMismatch, NotFound, ServiceError
from infra.signing import approval_payload, read_reviewer_keys, verify
from tasks.run_artifacts import VALIDATION_DOCS_FILE, artifact_key, load_sets, put_bytes

#: The run report's name among the run's files (`runs/<id>/audit-report.html` in the store).
RUN_REPORT_FILE = "audit-report.html"
#: Where the summary across runs is kept in the store (overwritten by each new summary).
SUMMARY_KEY = "reports/audit-summary.html"
#: The run's GX result file (written by the validation step), named in the report.
GX_RESULT_FILE = "retention_validation.json"
#: Rows listed per table; the counts are always complete.
LISTED_CHANGES = 1000
LISTED_REJECTIONS = 50
#: Characters of an event's payload shown in the trail table (the export has it in full).
PAYLOAD_CHARS = 400


# ----------------------------------------------------------------------------------- what is shown


@dataclass(frozen=True)
class ChainStatus:
    """`verify_chain`'s verdict, and the trail's head the report was made against."""

    verified: bool
    events_checked: int
    first_bad_seq: int | None
    problem: str | None
    keyed: bool
    anchored: bool
    head_seq: int
    head_hash: str

    @classmethod
    def check(cls, session: Session, anchor: dict[str, Any] | None) -> "ChainStatus":
        """Walk the chain now. Keyed/anchored say what was checked, also when the walk stopped early."""
        report: ChainReport = verify_chain(session, anchor=anchor)
        head = head_anchor(session)
        return cls(report.ok, report.events_checked, report.first_bad_seq, report.problem,
                   bool(session.info.get("audit_key")), anchor is not None, int(head["seq"]), str(head["hash"]))


@dataclass(frozen=True)
class FactChangeLine:
    subject: str
    relation: str
    old: str | None
    new: str


@dataclass(frozen=True)
class RejectedLine:
    """An incoming feed row the run refused, as the source system sent it, and why."""

    change_id: int
    subject: str
    relation: str
    value: str
    reason: str


@dataclass(frozen=True)
class CheckLine:
    """One expectation of the GX retention suite."""

    metric: str
    before: float | None
    observed: float | None
    bound: str
    passed: bool


@dataclass(frozen=True)
class DecisionLine:
    reviewer: str
    decision: str
    reason: str
    at: datetime
    signature: str  # "verified", "does not verify", "unsigned", "reviewer key not registered"
    override: bool


@dataclass(frozen=True)
class HeadMove:
    """A promotion of the run's delta, or a rollback that undid it."""

    action: str  # "promoted" | "rolled back"
    actor: str
    at: datetime
    detail: str
    reason: str
    signature: str


@dataclass(frozen=True)
class EventLine:
    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    details: str
    hash: str


@dataclass(frozen=True)
class RunReport:
    run: repo.RunRecord
    changes: list[FactChangeLine]
    changes_total: int
    changes_source: str
    feed: dict[str, Any]
    rejected_count: int
    rejections: list[RejectedLine]
    editor: str
    hparams: list[tuple[str, str]]
    hparams_sha256: str | None
    parent_sha: str | None
    validation_passed: bool | None
    checks: list[CheckLine]
    gx_result: str | None
    gx_docs: str | None  # the Data Docs page of the same result (runs written before it have none)
    agreement: list[tuple[str, float | None, float | None, int | None]]
    decisions: list[DecisionLine]
    head_moves: list[HeadMove]
    events: list[EventLine]
    chain: ChainStatus
    store_key: str
    generated_at: datetime
    generated_by: str


@dataclass(frozen=True)
class SummaryRow:
    run_id: int
    model: str
    started_at: datetime
    started_by: str
    editor: str
    changes: int | None
    validation_passed: bool | None
    decision: str | None
    reviewer: str | None
    status: str
    promoted_at: datetime | None
    rolled_back_at: datetime | None


@dataclass(frozen=True)
class SummaryReport:
    rows: list[SummaryRow]
    truncated: bool  # more runs exist than the `limit` newest listed
    chain: ChainStatus
    event_count: int
    store_key: str
    generated_at: datetime
    generated_by: str


@dataclass(frozen=True)
class Published:
    """Where a rendered report went: the local file and its key in the delta store."""

    path: Path
    key: str
    store_uri: str
    chain_verified: bool


# ----------------------------------------------------------------------------------- gathering


def run_report(ctx: ServiceContext, run_id: int, anchor: dict[str, Any] | None = None,
               generated_by: str | None = None) -> RunReport:
    """Everything an auditor asks about one run, from the database, the audit trail and the run's files.

    Args:
        ctx: the service context (database and delta store).
        run_id: the refresh run.
        anchor: an exported trail head ({"seq", "hash"}) to verify the chain against, if any.
        generated_by: who asks (default: the current user); printed on the report.

    Raises:
        NotFound: there is no such run.
    """
    with ctx.db.session() as session:
        run = repo.get_run(session, run_id)
        rejections = repo.rejections_for(session, run_id)
        rejected_rows = _rejected_rows(session, rejections[:LISTED_REJECTIONS])
        approvals = repo.approvals_for(session, run_id)
        delta = repo.get_delta(session, run.delta_sha) if run.delta_sha else None
        gx_sha = repo.artifact_sha(session, run_id, GX_RESULT_FILE)
        docs_sha = repo.artifact_sha(session, run_id, VALIDATION_DOCS_FILE)
        chain = ChainStatus.check(session, anchor)
        events = list_events(session)
    changes, total, source = _changes(ctx, run, {r.change_id for r in rejections})
    mine = _events_of_run(events, run)
    ingest = next((e.payload for e in mine if e.action == "ingest"), {})
    validation = run.validation or {}
    passed = None if not validation else bool(validation.get("success"))
    keys = read_reviewer_keys(ctx.settings.reviewer_keys_file)
    manifest = delta.manifest if delta else {}
    return RunReport(
        run=run,
        changes=changes,
        changes_total=total,
        changes_source=source,
        feed={k: ingest.get(k) for k in ("feed_from", "feed_to", "changes", "accepted", "rejected", "outstanding")},
        rejected_count=len(rejections),
        rejections=rejected_rows,
        editor=str(manifest.get("editor", run.editor)),
        hparams=_flat(manifest.get("hparams") or {}),
        hparams_sha256=manifest.get("hparams_sha256"),
        parent_sha=delta.parent_sha if delta else None,
        validation_passed=passed,
        checks=_checks(validation, run.metrics),
        gx_result=f"{artifact_key(run_id, GX_RESULT_FILE)} (sha256 {gx_sha})" if gx_sha else None,
        gx_docs=f"{artifact_key(run_id, VALIDATION_DOCS_FILE)} (sha256 {docs_sha})" if docs_sha else None,
        agreement=_agreement(run.metrics),
        decisions=[_decision(a, run, keys, mine, passed) for a in approvals],
        head_moves=_head_moves(mine, run, keys),
        events=[_event_line(e) for e in mine],
        chain=chain,
        store_key=artifact_key(run_id, RUN_REPORT_FILE),
        generated_at=utcnow(),
        generated_by=generated_by or current_user(),
    )


def summary_report(ctx: ServiceContext, anchor: dict[str, Any] | None = None, limit: int = 1000,
                   generated_by: str | None = None) -> SummaryReport:
    """One row per run (newest first, at most `limit`), the chain's verdict and the number of events."""
    with ctx.db.session() as session:
        runs = repo.list_runs(session, limit=limit + 1)
        truncated, runs = len(runs) > limit, runs[:limit]
        approvals = {run.id: repo.approvals_for(session, run.id) for run in runs}
        chain = ChainStatus.check(session, anchor)
        events = list_events(session)
    rows = []
    for run in runs:
        mine = _events_of_run(events, run)
        sets_event = next((e.payload for e in mine if e.action == "build_sets"), None)
        decided = approvals[run.id][-1] if approvals[run.id] else None
        promoted = next((e.at for e in mine if e.action == "promote"), None)
        rolled = next((e.at for e in mine if e.action == "rollback"), None)
        rows.append(SummaryRow(
            run_id=run.id, model=run.model_name, started_at=run.started_at, started_by=run.started_by,
            editor=run.editor, changes=sets_event.get("targets") if sets_event else None,
            validation_passed=None if not run.validation else bool(run.validation.get("success")),
            decision=decided.decision if decided else None, reviewer=decided.reviewer if decided else None,
            status=run.status, promoted_at=promoted, rolled_back_at=rolled,
        ))
    return SummaryReport(rows=rows, truncated=truncated, chain=chain, event_count=len(events),
                         store_key=SUMMARY_KEY, generated_at=utcnow(), generated_by=generated_by or current_user())


def _changes(ctx: ServiceContext, run: repo.RunRecord, rejected: set[int]) -> tuple[list[FactChangeLine], int, str]:
    """The facts the run set out to change: its edit targets (a verified run file) or, for a run that
    stopped before writing them, the accepted feed rows it read. Says which, and why."""
    name = artifact_key(run.id, "sets.json")
    try:
        targets = load_sets(ctx, run.id).targets
        lines = [FactChangeLine(t.subject, t.relation, t.target_true, t.target_new) for t in targets]
        return lines[:LISTED_CHANGES], len(lines), f"the run's edit targets ({name}, sha256 verified)"
    except IntegrityMismatch as exc:
        why = f"{name} FAILED its integrity check ({exc}); shown instead: the feed rows the run read"
    except NotFound:
        why = f"the run wrote no {name} (it stopped earlier); shown instead: the feed rows it read"
    except ServiceError as exc:  # the store is unreachable: the database still answers
        why = f"{name} could not be read ({exc}); shown instead: the feed rows the run read"
    with ctx.db.session() as session:
        feed = repo.changes_since(session, run.watermark_from, run.watermark_to)
    lines = [FactChangeLine(c.subject, c.relation, c.old_object, c.new_object) for c in feed if c.change_id not in rejected]
    return lines[:LISTED_CHANGES], len(lines), why


def _rejected_rows(session: Session, rejections: list[repo.Rejection]) -> list[RejectedLine]:
    """The refused feed rows themselves (subject, relation, value) beside the reason: the reason alone
    does not say which fact was refused."""
    if not rejections:
        return []
    ids = {r.change_id for r in rejections}
    feed = {c.change_id: c for c in repo.changes_since(session, min(ids) - 1, max(ids)) if c.change_id in ids}
    lines = []
    for r in rejections:
        row = feed.get(r.change_id)
        lines.append(RejectedLine(r.change_id, row.subject if row else "?", row.relation if row else "?",
                                  row.new_object if row else "?", r.reason))
    return lines


def _events_of_run(events: list[AuditEvent], run: repo.RunRecord) -> list[AuditEvent]:
    """The run's own events, its promotion, and any rollback that undid its delta, oldest first."""
    subject = f"run:{run.id}"
    return [
        e for e in events
        if e.subject == subject
        or (e.action == "promote" and e.payload.get("run") == run.id)
        or (e.action == "rollback" and run.delta_sha is not None and run.delta_sha in (e.payload.get("undone") or []))
    ]


def _flat(hparams: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Hyperparameters as (name, value) rows; nested settings (a plan of editors) get dotted names."""
    rows: list[tuple[str, str]] = []
    for key in sorted(hparams):
        value = hparams[key]
        if isinstance(value, dict) and value:
            rows += _flat(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value if isinstance(value, str) else json.dumps(value)))
    return rows


def _checks(validation: dict[str, Any], metrics: dict[str, Any] | None) -> list[CheckLine]:
    before = {row["metric"]: row.get("before") for row in (metrics or {}).get("table", [])}
    return [
        CheckLine(metric=c["metric"], before=before.get(c["metric"]), observed=c.get("observed"),
                  bound=f"{'≥' if c.get('kind') == 'min' else '≤'} {float(c['threshold']):.3f}",
                  passed=bool(c.get("success")))
        for c in validation.get("checks", [])
    ]


def _agreement(metrics: dict[str, Any] | None) -> list[tuple[str, float | None, float | None, int | None]]:
    """(what, before, after, facts asked) for the catalogue agreement the evaluation measured."""
    agreement = (metrics or {}).get("agreement")
    if not agreement:
        return []
    before, after = agreement.get("before", {}), agreement.get("after", {})
    return [
        ("Changed facts: the model says the new database value", before.get("changed"), after.get("changed"),
         after.get("n_changed")),
        ("Unchanged facts: the model says the database value", before.get("unchanged"), after.get("unchanged"),
         after.get("n_unchanged")),
        ("Unchanged facts the base model knew, still right", None, after.get("unchanged_kept"), None),
    ]


def _decision(approval: repo.ApprovalRecord, run: repo.RunRecord, keys: dict[str, str], events: list[AuditEvent],
              validation_passed: bool | None) -> DecisionLine:
    event = next((e for e in events if e.action == approval.decision and e.actor == approval.reviewer
                  and e.payload.get("reason") == approval.reason), None)
    override = bool(event.payload.get("override_validation")) if event else (
        approval.decision == "approved" and validation_passed is False)
    return DecisionLine(approval.reviewer, approval.decision, approval.reason, approval.at,
                        _decision_signature(approval, run, keys), override)


def _decision_signature(approval: repo.ApprovalRecord, run: repo.RunRecord, keys: dict[str, str]) -> str:
    """Does the stored signature cover exactly this decision, made with the reviewer's registered key?"""
    if not approval.signed_payload or not approval.signature:
        return "unsigned"
    try:
        fields = json.loads(approval.signed_payload)
    except ValueError:
        return "does not verify"
    expected = json.loads(approval_payload(run_id=run.id, delta_sha=run.delta_sha, reviewer=approval.reviewer,
                                           decision=approval.decision, reason=approval.reason,
                                           at=str(fields.get("at"))))
    public = keys.get(approval.reviewer)
    if public is None:
        return "reviewer key not registered"
    ok = fields == expected and verify(public, approval.signed_payload.encode(), approval.signature)
    return "verified" if ok else "does not verify"


def _head_moves(events: list[AuditEvent], run: repo.RunRecord, keys: dict[str, str]) -> list[HeadMove]:
    moves = []
    for e in events:
        if e.action == "promote":
            previous = e.payload.get("previous_head")
            moves.append(HeadMove("promoted", e.actor, e.at,
                                  f"model head moved from {_short(previous) or 'the base model'} to "
                                  f"{_short(e.payload.get('delta'))}", "", "not signed (follows the approval)"))
        elif e.action == "rollback":
            to = e.payload.get("to")
            moves.append(HeadMove("rolled back", e.actor, e.at,
                                  f"model head moved from {_short(e.payload.get('from'))} back to "
                                  f"{_short(to) or 'the base model'}; {e.payload.get('facts_outstanding_again', 0)} "
                                  "facts to be edited again", str(e.payload.get("reason", "")),
                                  _rollback_signature(e, keys)))
    return moves


def _rollback_signature(event: AuditEvent, keys: dict[str, str]) -> str:
    signed, signature = event.payload.get("signed_payload"), event.payload.get("signature")
    if not signed or not signature:
        return "unsigned"
    try:
        fields = json.loads(signed)
    except ValueError:
        return "does not verify"
    matches = (fields.get("kind") == "kus-rollback/v1" and fields.get("reviewer") == event.actor
               and fields.get("from_sha256") == event.payload.get("from") and fields.get("to_sha256") == event.payload.get("to")
               and fields.get("reason") == event.payload.get("reason"))
    public = keys.get(event.actor)
    if public is None:
        return "reviewer key not registered"
    return "verified" if matches and verify(public, signed.encode(), signature) else "does not verify"


def _event_line(event: AuditEvent) -> EventLine:
    text = json.dumps(event.payload, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))
    if len(text) > PAYLOAD_CHARS:
        text = f"{text[:PAYLOAD_CHARS]}… ({len(text) - PAYLOAD_CHARS} more characters in the export)"
    return EventLine(event.seq, event.at, event.actor, event.action, event.subject, text, event.hash)


def _short(sha: Any) -> str:
    return str(sha)[:12] if sha else ""


# ----------------------------------------------------------------------------------- rendering


def _environment() -> jinja2.Environment:
    """A fresh environment per render (no module state); autoescaped, as facts and reasons come from users."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("flows", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["utc"] = _utc_text
    env.filters["num"] = _num
    env.filters["short"] = _short
    return env


def _utc_text(value: datetime | None) -> str:
    return "-" if value is None else utc(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def render_run(report: RunReport) -> str:
    """The run report as one self-contained HTML page (inline CSS, no scripts, no external resources)."""
    return _environment().get_template("audit_run.html.j2").render(r=report)


def render_summary(report: SummaryReport) -> str:
    """The summary across runs as one self-contained HTML page."""
    return _environment().get_template("audit_summary.html.j2").render(r=report)


# ----------------------------------------------------------------------------------- publishing


def publish_run_report(ctx: ServiceContext, run_id: int, out: Path | None = None,
                       anchor: dict[str, Any] | None = None) -> Published:
    """Render run `run_id`'s report, write it to `out` (default ./audit-report-run-<id>.html) and keep it
    in the delta store as ``runs/<id>/audit-report.html`` (its sha256 recorded with the run's files)."""
    report = run_report(ctx, run_id, anchor=anchor)
    html = render_run(report)
    path = _write_local(Path(out) if out else Path(f"audit-report-run-{run_id}.html"), html)
    key = put_bytes(ctx, run_id, RUN_REPORT_FILE, html.encode("utf-8"))
    return Published(path, key, ctx.store.uri, report.chain.verified)


def publish_summary(ctx: ServiceContext, out: Path | None = None, anchor: dict[str, Any] | None = None) -> Published:
    """Render the summary across runs, write it to `out` (default ./audit-summary.html) and keep it in
    the delta store as ``reports/audit-summary.html``."""
    report = summary_report(ctx, anchor=anchor)
    html = render_summary(report)
    path = _write_local(Path(out) if out else Path("audit-summary.html"), html)
    ctx.store.put_blob(SUMMARY_KEY, html.encode("utf-8"))
    return Published(path, SUMMARY_KEY, ctx.store.uri, report.chain.verified)


def _write_local(path: Path, html: str) -> Path:
    """Written beside `path` and renamed into place: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path.resolve()
