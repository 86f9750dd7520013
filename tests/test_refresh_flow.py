"""The whole business process on real parts: Prefect flows, SQLite/PostgreSQL, local/S3 store, GX, a real model.

One refresh → approval of record through the CLI → promotion → the live model says the new facts
→ rollback restores the base weights bit for bit → the audit trail verifies, and a tampered row
is caught.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from editing.model_io import load_model, weights_fingerprint
from flows.cli import main as cli
from flows.demo import acting_as
from infra import repository as repo
from infra.context import service_context
from infra.demo.changes import next_change_batch
from infra.domain import Fact
from infra.errors import ApprovalRequired, IntegrityMismatch, InvalidState, PermissionDenied
from infra.settings import Settings
from infra.signing import generate_key, register_reviewer_key, write_private_key
from tasks.live_model import load_live_model
from tasks.promotion import promote_run, record_decision
from validation.scoring import greedy_answers

# Settings for the tiny test model (two layers of width 64); the family defaults suit the demo model.
TINY_FT = {"layers": [0], "lr": 0.02, "norm_constraint": 0.03, "steps": 60}
TINY_SAUL = {"layers": [1], "augment_ratio": 4.0, "steps": 60, "lr": 0.005, "reg_weight": 3.0, "corpus_share": 0.0}


@pytest.fixture(params=["sqlite+local", "postgres+s3"])
def service(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_world, prefect_harness) -> Settings:
    """Service settings in the environment, as a worker would get them; catalogue seeded."""
    facts, _templates, report = tiny_world
    monkeypatch.setenv("KUS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUS_BASE_MODEL", str(report.path))
    monkeypatch.setenv("KUS_REVIEWERS", "alice,bob")
    monkeypatch.setenv("KUS_USER", "catalogue-bot")
    monkeypatch.setenv("KUS_REVIEWER_KEYS", str(tmp_path / "reviewer_keys.json"))
    for reviewer in ("alice", "bob"):  # each reviewer's own key; the public halves registered
        pem, public = generate_key()
        write_private_key(tmp_path / "keys" / f"{reviewer}.pem", pem)
        register_reviewer_key(tmp_path / "reviewer_keys.json", reviewer, public)
    if request.param == "sqlite+local":
        monkeypatch.setenv("KUS_DATABASE_URL", f"sqlite:///{tmp_path / 'kus.db'}")
        monkeypatch.setenv("KUS_DELTA_STORE", (tmp_path / "deltas").as_uri())
    else:
        monkeypatch.setenv("KUS_DATABASE_URL", request.getfixturevalue("postgres_url"))
        monkeypatch.setenv("KUS_DELTA_STORE", f"s3://kus-{uuid.uuid4().hex[:8]}/deltas")
        monkeypatch.setenv("KUS_S3_ENDPOINT_URL", request.getfixturevalue("moto_endpoint"))
    settings = Settings.load()
    with service_context(settings) as ctx, ctx.db.session() as session:
        repo.seed_facts(session, facts)
    return settings


def reviewer_key(name: str) -> Path:
    return Path(os.environ["KUS_REVIEWER_KEYS"]).parent / "keys" / f"{name}.pem"


def cli_as(reviewer: str, args: list[str], key: Path | None = None) -> int:
    """The CLI run by `reviewer` in their own shell: their login name and their own signing key."""
    with acting_as(reviewer, key or reviewer_key(reviewer)):
        return cli(args)


def _apply_changes(settings: Settings, batch_no: int) -> list[Fact]:
    """The ERP's next batch (a rename, new prices and warranties) plus one row with an unknown relation."""
    with service_context(settings) as ctx, ctx.db.session() as session:
        batch = next_change_batch(repo.load_facts(session), batch_no)
        repo.upsert_facts(session, batch, changed_by="erp")
        repo.upsert_facts(session, [Fact(batch[0].subject, "energy_label", "A++")], changed_by="erp")
    return batch


def _apply_swaps(settings: Settings, n: int = 6, seed: int = 0) -> list[Fact]:
    """Changes the tiny model can express: each fact takes another product's value for its relation.

    (A renamed manufacturer's new name is made of word pieces the tiny model never produced; the
    demo model and the benchmarks cover those.)
    """
    rng = random.Random(seed)
    with service_context(settings) as ctx, ctx.db.session() as session:
        facts = repo.load_facts(session)
        batch: list[Fact] = []
        for relation in ("price", "warranty", "colour", "category", "price", "colour")[:n]:
            candidates = [f for f in facts if f.relation == relation and f.subject not in {b.subject for b in batch}]
            while True:
                a, b = rng.sample(candidates, 2)
                if a.object != b.object:
                    break
            batch.append(Fact(a.subject, relation, b.object, source="erp"))
        repo.upsert_facts(session, batch, changed_by="erp")
        repo.upsert_facts(session, [Fact(batch[0].subject, "energy_label", "A++")], changed_by="erp")
    return batch


def _answers(settings: Settings, prompts: list[str]) -> list[str]:
    with service_context(settings) as ctx:
        live = load_live_model(ctx)
    return greedy_answers(live.model, live.tokenizer, prompts)


def test_refresh_approve_promote_rollback(service: Settings, tiny_world, capsys) -> None:
    from flows.refresh import catalogue_refresh

    _facts, templates, report = tiny_world
    batch = _apply_swaps(service)
    state = catalogue_refresh(started_by="carol", hparams=TINY_SAUL, return_state=True)  # the default editor
    result = state.result()
    run_id = result["run_id"]
    assert result["status"] == "awaiting_approval"
    assert result["rejected"] == 1
    # the state tells the truth: a failed retention check is not plain green
    assert state.is_completed() and state.name == ("AwaitingApproval" if result["validation_passed"] else "ValidationFailed")
    # while the run is with a reviewer, a refresh (the nightly tick) starts nothing and does not fail
    waiting = catalogue_refresh(return_state=True)
    assert waiting.is_completed() and waiting.name == "WaitingForDecision"
    assert f"run {run_id}" in waiting.message and waiting.result()["run_id"] is None

    with service_context(service) as ctx:
        with ctx.db.session() as session:
            run = repo.get_run(session, run_id)
            rejections = repo.rejections_for(session, run_id)
        assert run.status == "awaiting_approval" and run.delta_sha
        assert len(rejections) == 1 and "energy_label" in rejections[0].reason
        assert run.validation is not None and {c["metric"] for c in run.validation["checks"]} >= {"efficacy_gen"}
        # nobody promotes without an approval of record; the run's starter cannot approve it
        with pytest.raises(ApprovalRequired):
            promote_run(ctx, run_id, "carol")
        with pytest.raises(PermissionDenied):
            record_decision(ctx, run_id, "mallory", "approved", "not a reviewer")

    # before deciding, the reviewer reads the review: the changes, the knowledge diff, the validation;
    # the refresh published the same text as a Prefect artifact
    capsys.readouterr()
    assert cli(["review", str(run_id), "--markdown"]) == 0
    review = capsys.readouterr().out
    assert "## What changes (6 facts)" in review and "## Knowledge diff against the live model" in review
    with service_context(service) as ctx, ctx.db.session() as session:
        counts = repo.get_run(session, run_id).metrics["knowledge_diff"]
    assert f"- **broken: {counts['broken']}**" in review and counts["intended"] >= 1
    with service_context(service) as ctx, ctx.db.session() as session:
        agreed = repo.get_run(session, run_id).metrics["agreement"]["after"]
    assert "## Catalogue agreement" in review and f"{agreed['changed']:.3f} | {agreed['n_changed']} |" in review
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"run-{run_id}-review"])))
    assert review in [a.data for a in artifacts]  # (another test run may have a run of the same number)

    # the CLI is the approval path of record; it promotes on approval
    assert cli_as("alice", ["approve", str(run_id), "--reason", "checked", "--override-validation"]) == 0
    prompts = [templates[f.relation].render(f.subject) for f in batch]
    after = _answers(service, prompts)
    efficacy = sum(a == f.object for a, f in zip(after, batch)) / len(batch)
    assert efficacy >= 0.8, f"live model says {after}, database says {[f.object for f in batch]}"

    changed = {(f.subject, f.relation) for f in batch}
    kept = [f for f in _facts if (f.subject, f.relation) not in changed][:60]
    kept_prompts = [templates[f.relation].render(f.subject) for f in kept]
    base_model, base_tok = load_model(report.path)
    known = [a == f.object for a, f in zip(greedy_answers(base_model, base_tok, kept_prompts), kept)]
    kept_answers = _answers(service, kept_prompts)
    still = [a == f.object for a, f, k in zip(kept_answers, kept, known) if k]
    retention = sum(still) / len(still)
    assert retention >= 0.8, f"unchanged facts the base knew retained only {retention:.0%} ({len(still)} known)"

    # `kus show` gives each checked metric before and after the edit, and the base model's readiness is on record
    capsys.readouterr()
    assert cli(["show", str(run_id)]) == 0
    shown = capsys.readouterr().out
    assert "before" in shown and "after" in shown and "efficacy_gen" in shown
    with service_context(service) as ctx, ctx.db.session() as session:
        readiness = repo.get_run(session, run_id).metrics["base_readiness"]
    assert readiness["share"] >= 0.9 and readiness["warnings"] == []  # the tiny model knows its catalogue

    # rollback is a reviewer's signed decision: the catalogue bot may not, a reviewer may
    assert cli(["rollback", "--reason", "test rollback"]) == 1
    with service_context(service) as ctx:
        assert load_live_model(ctx).head is not None
    # rollback: the live model is the base model again, bit for bit
    assert cli_as("bob", ["rollback", "--reason", "test rollback"]) == 0
    base, _ = load_model(report.path)
    with service_context(service) as ctx:
        live = load_live_model(ctx)
        assert live.head is None
        assert weights_fingerprint(live.model) == weights_fingerprint(base)
        with ctx.db.session() as session:
            assert repo.get_run(session, run_id).status == "rolled_back"

    # the audit trail has every step and verifies; a tampered row is caught
    assert cli(["audit", "verify"]) == 0
    with service_context(service) as ctx, ctx.db.session() as session:
        actions = [e.action for e in repo_events(session)]
    for action in ("ingest", "build_sets", "edit", "evaluate", "validate", "approval_requested", "approved",
                   "promote", "rollback"):
        assert action in actions
    with service_context(service) as ctx, ctx.db.session() as session:
        rolled = [e for e in repo_events(session) if e.action == "rollback"][-1]
        written = len(repo.get_delta(session, repo.get_run(session, run_id).delta_sha).manifest["facts"])
    from infra.signing import read_reviewer_keys, verify

    assert rolled.actor == "bob" and rolled.payload["facts_outstanding_again"] == written > 0
    assert verify(read_reviewer_keys(service.reviewer_keys_file)["bob"], rolled.payload["signed_payload"].encode(),
                  rolled.payload["signature"])
    _tamper_with_audit(service)
    assert cli(["audit", "verify"]) == 3
    assert "BROKEN" in capsys.readouterr().out


def repo_events(session):
    from infra.audit import list_events

    return list_events(session)


def _tamper_with_audit(settings: Settings) -> None:
    engine = sa.create_engine(settings.database_url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("DROP TRIGGER audit_events_no_update ON audit_events"))
        else:
            conn.execute(sa.text("DROP TRIGGER audit_events_no_update"))
        conn.execute(sa.text("UPDATE audit_events SET payload = :p WHERE seq = 2"), {"p": json.dumps({"forged": True})})
    engine.dispose()


@pytest.mark.parametrize("service", ["sqlite+local"], indirect=True)
def test_second_refresh_builds_on_promoted_head_and_crashed_runs_are_redone(service: Settings) -> None:
    from flows.refresh import catalogue_refresh

    _apply_changes(service, 1)
    first = catalogue_refresh(editor="ft", started_by="carol", hparams=TINY_FT)["run_id"]
    assert cli_as("bob", ["approve", str(first), "--reason", "ok", "--override-validation"]) == 0

    # a refresh starts nothing while another waits for approval (and does not fail: it waits)
    _apply_changes(service, 2)
    second = catalogue_refresh(editor="ft", started_by="carol", hparams=TINY_FT)["run_id"]
    waiting = catalogue_refresh(editor="ft", started_by="carol", hparams=TINY_FT, return_state=True)
    assert waiting.name == "WaitingForDecision" and waiting.result()["run_id"] is None
    from tasks.ingest import ingest_changes

    with service_context(service) as ctx:
        with ctx.db.session() as session:
            assert [r.id for r in repo.list_runs(session)] == [second, first]
        with pytest.raises(InvalidState):  # the ingest step itself refuses, for callers without the flow
            ingest_changes(ctx, "demo", "ft", "carol")
    assert cli_as("bob", ["reject", str(second), "--reason", "not today"]) == 0

    # a crashed run (stuck after its edit) is failed and its changes redone by the next refresh
    _apply_changes(service, 3)
    with service_context(service) as ctx, ctx.db.session() as session:
        wm = repo.watermark(session, "demo")
        crashed = repo.create_run(session, "demo", "ft", "carol", wm, repo.latest_change_id(session))
    third = catalogue_refresh(editor="ft", started_by="carol", hparams=TINY_FT)
    with service_context(service) as ctx, ctx.db.session() as session:
        assert repo.get_run(session, crashed.id).status == "failed"
        run = repo.get_run(session, third["run_id"])
        assert (run.watermark_from, run.watermark_to) == (crashed.watermark_from, crashed.watermark_to)
        delta = repo.get_delta(session, str(run.delta_sha))
        first_delta = repo.get_run(session, first).delta_sha
    assert delta.parent_sha == first_delta  # built on the promoted head, not on the base
    # its "before" pass started from what the first run's candidate (now the live model) answered, and
    # is what a pass computed afresh on the live model gives
    import pandas as pd

    from tasks.evaluate import ANSWERS_AFTER_FILE, head_answers
    from tasks.run_artifacts import get_json, load_sets
    from validation.evaluate import evaluate

    with service_context(service) as ctx:
        memo, source = head_answers(ctx, first_delta)
        assert source == first and memo.greedy and memo.scores
        sets = load_sets(ctx, third["run_id"])
        live = load_live_model(ctx, head=sets.head)
        fresh = evaluate(live.model, live.tokenizer, sets.targets, sets.regression)
        stored = pd.DataFrame(get_json(ctx, third["run_id"], "evaluation_rows_before.json"))
        pd.testing.assert_frame_equal(stored[list(fresh.rows.columns)], fresh.rows, check_dtype=False)
        # a changed answers file is refused, not trusted
        key = f"runs/{first}/{ANSWERS_AFTER_FILE}"
        ctx.store.put_blob(key, ctx.store.get_blob(key).replace(b'"$', b'"#'))
        with pytest.raises(IntegrityMismatch):
            head_answers(ctx, first_delta)
    assert cli_as("alice", ["approve", str(third["run_id"]), "--reason", "ok", "--override-validation"]) == 0
    with service_context(service) as ctx:
        live = load_live_model(ctx)
        assert [d.id for d in live.chain] == [first_delta, run.delta_sha]


# AlphaEdit on the tiny model: its one edited layer (the gpt2 defaults spread over three of the demo's four)
TINY_ALPHAEDIT = {"layers": [0], "l2": 0.1}


def _carried_keys(settings: Settings, delta_sha: str):
    """(parent delta, AlphaEdit's carried key factor of layer 0, how many facts the delta edits)."""
    from editing.delta import Delta

    with service_context(settings) as ctx:
        delta = Delta.from_files(ctx.store.get(delta_sha))
    return delta.parent, delta.state()["alphaedit.keys.0"], len(delta.manifest["facts"])


@pytest.mark.parametrize("service", ["sqlite+local"], indirect=True)
def test_editor_state_follows_the_promoted_chain_and_rolls_back_with_it(service: Settings, monkeypatch) -> None:
    """In sequential mode the tenth refresh continues the first nine: AlphaEdit's edited keys travel
    with the delta chain (one key per edited fact, added to the parent's), and after a rollback the
    next refresh continues from the state of the head it rolled back to (redoing the undone facts)."""
    from flows.refresh import catalogue_refresh

    monkeypatch.setenv("KUS_EDIT_MODE", "sequential")

    def refresh(seed: int, approve: bool = True) -> str:
        _apply_swaps(service, seed=seed)
        result = catalogue_refresh(editor="alphaedit", started_by="carol", hparams=TINY_ALPHAEDIT)
        if approve:
            assert cli_as("alice", ["approve", str(result["run_id"]), "--reason", "ok", "--override-validation"]) == 0
        with service_context(service) as ctx, ctx.db.session() as session:
            return str(repo.get_run(session, result["run_id"]).delta_sha)

    first = refresh(seed=0)
    parent1, keys1, facts1 = _carried_keys(service, first)
    assert parent1 is None and keys1.size(1) == facts1 > 0

    second = refresh(seed=1)
    parent2, keys2, facts2 = _carried_keys(service, second)
    assert parent2 == first
    assert keys2.size(1) == keys1.size(1) + facts2
    assert torch.equal(keys2[:, : keys1.size(1)], keys1)  # the first's keys, then the second's

    assert cli_as("alice", ["rollback", "--reason", "undo the second refresh"]) == 0
    third = refresh(seed=2, approve=False)
    parent3, keys3, facts3 = _carried_keys(service, third)
    assert parent3 == first  # built on the head it rolled back to
    assert facts3 > facts2  # the rolled-back facts are edited again, with the new ones
    # continued from the first's state: had it started from the undone second's, it would hold keys2 + facts3 columns
    assert keys3.size(1) == keys1.size(1) + facts3
    assert torch.equal(keys3[:, : keys1.size(1)], keys1)


@pytest.mark.parametrize("service", ["sqlite+local"], indirect=True)
def test_cumulative_refreshes_edit_the_base_over_the_whole_ledger(service: Settings, tiny_world) -> None:
    """AlphaEdit refreshes in cumulative mode: each delta is computed from the base over every ledger
    fact, so the live model is the base plus the newest delta alone; a fact changed back to its base
    value leaves the ledger; rolling back restores the previous delta's model."""
    from editing.delta import Delta
    from flows.refresh import catalogue_refresh

    _facts, templates, _report = tiny_world

    def refresh(seed: int) -> tuple[int, str]:
        batch = _apply_swaps(service, n=3, seed=seed)
        result = catalogue_refresh(editor="alphaedit", started_by="carol", hparams=TINY_ALPHAEDIT)
        assert cli_as("alice", ["approve", str(result["run_id"]), "--reason", "ok", "--override-validation"]) == 0
        with service_context(service) as ctx, ctx.db.session() as session:
            return result["run_id"], str(repo.get_run(session, result["run_id"]).delta_sha), batch

    _, first, batch1 = refresh(seed=10)
    # one fact of the first batch goes back to its base value
    back = batch1[0]
    with service_context(service) as ctx, ctx.db.session() as session:
        base_value = repo.base_values(session)[(back.subject, back.relation)]
        repo.upsert_facts(session, [Fact(back.subject, back.relation, str(base_value))], changed_by="erp")
        ledger = {e.key for e in repo.ledger(session)}
    assert (back.subject, back.relation) not in ledger
    run2, second, batch2 = refresh(seed=11)
    with service_context(service) as ctx:
        delta = Delta.from_files(ctx.store.get(second))
        live = load_live_model(ctx)
        with ctx.db.session() as session:
            run = repo.get_run(session, run2)
            ledger_now = repo.ledger(session)
    assert delta.manifest["basis"] == "base" and delta.manifest["mode"] == "cumulative"
    assert delta.parent == first                          # the chain is history ...
    assert [d.id for d in live.chain] == [second]          # ... the live model is base + one delta
    # every ledger fact was asked of the editor: written, or named as not written
    assert len(delta.manifest["facts"]) + len(delta.manifest["unwritten"]) == len(ledger_now)
    agreement = run.metrics["agreement"]
    assert agreement["after"]["n_changed"] >= len(batch2) and 0.0 <= agreement["after"]["changed"] <= 1.0
    assert cli_as("alice", ["rollback", "--reason", "back to the first"]) == 0
    with service_context(service) as ctx:
        assert [d.id for d in load_live_model(ctx).chain] == [first]


@pytest.mark.parametrize("service", ["sqlite+local", "postgres+s3"], indirect=True)
def test_approvals_are_signed_by_the_reviewer_and_cannot_be_forged(service: Settings, tmp_path: Path) -> None:
    """Naming a reviewer is not enough: the decision must be signed with that reviewer's own key; a
    decision changed in the database afterwards no longer verifies, and promotion refuses it."""
    from flows.refresh import catalogue_refresh

    _apply_swaps(service, n=3, seed=21)
    run_id = catalogue_refresh(editor="ft", started_by="carol", hparams=TINY_FT)["run_id"]

    # mallory (no reviewer) says she is alice and signs with her own key: refused, nothing recorded
    pem, _public = generate_key()
    write_private_key(tmp_path / "mallory.pem", pem)
    assert cli_as("alice", ["approve", str(run_id), "--reason", "trust me", "--override-validation"],
                  key=tmp_path / "mallory.pem") != 0
    # the run's starter cannot approve it, even with a registered key of their own
    with service_context(service) as ctx:
        with pytest.raises(PermissionDenied):
            record_decision(ctx, run_id, "carol", "approved", "mine", True, signing_key=reviewer_key("alice"))
        with ctx.db.session() as session:
            assert repo.approvals_for(session, run_id) == []

    # alice's own signed approval, then someone edits the approvals row in the database
    with service_context(service) as ctx:
        first = record_decision(ctx, run_id, "alice", "approved", "checked", True, signing_key=reviewer_key("alice"))
        again = record_decision(ctx, run_id, "alice", "approved", "checked twice", True, signing_key=reviewer_key("alice"))
        assert again.id == first.id  # a second approval records nothing new
    engine = sa.create_engine(service.database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE approvals SET reviewer = 'bob' WHERE run_id = :r"), {"r": run_id})
    engine.dispose()
    with service_context(service) as ctx:
        with pytest.raises(ApprovalRequired, match="signature"):
            promote_run(ctx, run_id, "carol")
        assert load_live_model(ctx).head is None
    engine = sa.create_engine(service.database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE approvals SET reviewer = 'alice' WHERE run_id = :r"), {"r": run_id})
    engine.dispose()
    with service_context(service) as ctx:  # restored, it verifies again
        assert promote_run(ctx, run_id, "carol")


@pytest.mark.parametrize("service", ["sqlite+local"], indirect=True)
def test_a_refresh_edits_at_most_max_targets_and_the_rest_follow_in_feed_order(service: Settings, monkeypatch,
                                                                              capsys) -> None:  # noqa: ANN001
    """Bounded work: with KUS_MAX_TARGETS=4, six changes give a run of four targets (the first four
    in feed order, scored for agreement) and the next refresh, with no new change, takes the other two."""
    from flows.refresh import catalogue_refresh
    from tasks.catalogue_inputs import templates_for
    from tasks.run_artifacts import load_sets

    monkeypatch.setenv("KUS_MAX_TARGETS", "4")
    batch = _apply_swaps(service, n=6, seed=4)
    first = catalogue_refresh(editor="ft", started_by="carol", hparams=TINY_FT)["run_id"]
    settings = Settings.load()
    with service_context(settings) as ctx:
        sets = load_sets(ctx, first)
        with ctx.db.session() as session:
            event = [e for e in repo_events(session) if e.action == "build_sets"][-1]
    keys = [(f.subject, f.relation) for f in batch]
    assert [(t.subject, t.relation) for t in sets.targets] == keys[:4]
    assert event.payload["deferred"] == 2 and event.payload["targets"] == 4
    templates = templates_for(settings)
    deferred_prompts = {templates[r].render(s) for s, r in keys[4:]}
    # agreement scores this run's targets as its changes, and the deferred facts nowhere
    assert {prompt for prompt, _, _ in sets.agreement.changed} == {t.prompt for t in sets.targets}
    assert not deferred_prompts & {prompt for prompt, _, _ in sets.agreement.unchanged}
    capsys.readouterr()
    assert cli(["show", str(first)]) == 0
    assert "2 outstanding changes left to later refreshes" in " ".join(capsys.readouterr().out.split())
    assert cli_as("bob", ["approve", str(first), "--reason", "ok", "--override-validation"]) == 0

    second = catalogue_refresh(editor="ft", started_by="carol", hparams=TINY_FT)["run_id"]
    with service_context(settings) as ctx:
        assert [(t.subject, t.relation) for t in load_sets(ctx, second).targets] == keys[4:]
    # a retry on the same head leaves out what the rejected attempt did not take (they stay outstanding)
    from tasks.run_artifacts import EVALUATION_ROWS_AFTER_FILE, get_json
    from validation.evaluate import targets_not_taken

    assert cli_as("bob", ["reject", str(second), "--reason", "did not generalise"]) == 0
    with service_context(settings) as ctx:
        rejected_targets = load_sets(ctx, second).targets
        missed = {(t.subject, t.relation) for t, _ in targets_not_taken(
            rejected_targets, get_json(ctx, second, EVALUATION_ROWS_AFTER_FILE), settings.thresholds["paraphrase_min"])}
    retry = catalogue_refresh(editor="ft", started_by="carol", hparams=TINY_FT)["run_id"]
    with service_context(settings) as ctx:
        with ctx.db.session() as session:
            event = [e for e in repo_events(session) if e.action == "build_sets"][-1].payload
        retried = [(t.subject, t.relation) for t in load_sets(ctx, retry).targets]
    expected = [k for k in keys[4:] if k not in missed] or keys[4:]  # all held: all edited again
    assert retried == expected and event["rejected_attempts"] == 1
    assert event["held"] == len(keys[4:]) - len(expected) == len(event["held_facts"])
    capsys.readouterr()
    assert cli(["show", str(retry)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert (f"{event['held']} changes held back" in shown) == bool(event["held"])
