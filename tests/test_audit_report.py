"""The auditor's report: a real history (refresh, signed approval, promotion, signed rollback) rendered
as HTML, kept in the delta store, and opened in headless Chromium to check what a reader sees.

Chromium is required, not optional: CI installs it (`.ci/run`); a missing browser fails the test.
The screenshot is kept under var/test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from flows.audit_report import RUN_REPORT_FILE, SUMMARY_KEY
from flows.cli import main as cli
from infra import repository as repo
from infra.audit import append_event
from infra.context import service_context
from infra.domain import Fact
from infra.settings import Settings
from tasks.run_artifacts import artifact_key, get_bytes
from tests.test_refresh_flow import TINY_SAUL, _apply_swaps, cli_as, service  # noqa: F401 - `service` is a fixture
from tests.headless_chromium import chromium, screenshot

ARTIFACTS = Path(__file__).resolve().parents[1] / "var" / "test-artifacts"
#: A subject and a reason as a hostile or careless user might type them: they must show as text.
HOSTILE_SUBJECT = "<script>alert('subject')</script>"
HOSTILE_REASON = "checked <script>alert('reason')</script> & signed"


def _chromium(*args: str, profile: Path):  # noqa: ANN202
    return chromium(*args, profile=profile, page="the audit report")


def _text(html: str) -> str:
    """What a reader sees: tags dropped, entities of the escaped user text kept as they are."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.mark.parametrize("service", ["sqlite+local"], indirect=True)
def test_run_report_and_summary_show_the_history_and_open_in_chromium(service: Settings, tmp_path: Path,  # noqa: F811
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from flows.refresh import catalogue_refresh

    assert cli(["--quiet", "audit", "keygen"]) == 0  # a keyed trail, as in production
    batch = _apply_swaps(service)
    with service_context(service) as ctx, ctx.db.session() as session:  # refused (unknown relation), shown as text
        repo.upsert_facts(session, [Fact(HOSTILE_SUBJECT, "energy_label", "A")], changed_by="erp")
    result = catalogue_refresh(started_by="carol", hparams=TINY_SAUL)
    run_id = result["run_id"]
    assert result["status"] == "awaiting_approval" and result["rejected"] == 2
    assert cli_as("alice", ["approve", str(run_id), "--reason", HOSTILE_REASON, "--override-validation"]) == 0
    assert cli_as("bob", ["rollback", "--reason", "customer complaint"]) == 0

    capsys.readouterr()
    run_file, summary_file = tmp_path / "report" / "run.html", tmp_path / "report" / "summary.html"
    assert cli(["audit", "report", "--run", str(run_id), "--out", str(run_file)]) == 0
    said = capsys.readouterr().out
    assert str(run_file) in said and f"runs/{run_id}/{RUN_REPORT_FILE}" in said
    assert cli(["audit", "report", "--out", str(summary_file)]) == 0
    assert SUMMARY_KEY in capsys.readouterr().out

    html = run_file.read_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # kept for a person to read, as the screenshot below
    (ARTIFACTS / f"audit-report-run-{run_id}.html").write_text(html)
    (ARTIFACTS / "audit-summary.html").write_text(summary_file.read_text())
    text = _text(html)
    passed = bool(result["validation_passed"])
    assert f"Audit report: refresh run {run_id}" in text and "started by carol" in text
    for fact in batch:  # every changed fact with its new value
        assert fact.subject in text and fact.object in text
    assert "saul" in text and "Hyperparameters fingerprint" in text and "reg_weight" in text
    assert ("PASS" if passed else "FAIL") in text and "efficacy_gen" in text and "Great Expectations" in text
    assert "Rejected incoming rows: 2" in text and "is not a known relation" in text
    assert "alice" in text and "APPROVED" in text and "VERIFIED" in text and "BROKEN" not in text
    assert ("OVERRIDE" in text) == (not passed)
    assert "ROLLED BACK" in text and "bob" in text and "customer complaint" in text and "PROMOTED" in text
    for action in ("ingest", "build_sets", "edit", "evaluate", "validate", "approved", "promote", "rollback"):
        assert f"<strong>{action}</strong>" in html
    assert "MAC verified" in text
    # user text is shown, never run: escaped everywhere, and no script or external resource in the page
    assert "&lt;script&gt;alert(&#39;subject&#39;)&lt;/script&gt;" in html
    assert "checked &lt;script&gt;alert(&#39;reason&#39;)&lt;/script&gt; &amp; signed" in html
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html

    summary = _text(summary_file.read_text())
    assert "Audit summary" in summary and "VERIFIED" in summary
    assert re.search(rf"{run_id} demo \S+ \S+ UTC carol saul 6 (PASS|FAIL) APPROVED alice rolled back", summary), summary

    # kept in the delta store beside the run (its sha256 recorded with the run's files), and the summary too
    with service_context(service) as ctx:
        assert get_bytes(ctx, run_id, RUN_REPORT_FILE) == run_file.read_bytes()
        assert ctx.store.get_blob(artifact_key(run_id, RUN_REPORT_FILE)) == run_file.read_bytes()
        assert ctx.store.get_blob(SUMMARY_KEY) == summary_file.read_bytes()

    # what a reader's browser shows: the DOM Chromium built, and a screenshot kept for people
    dom = _chromium("--dump-dom", run_file.as_uri(), profile=tmp_path / "chromium")
    assert dom.returncode == 0, dom.stderr[-2000:]
    shown = _text(dom.stdout)
    for expected in (f"Audit report: refresh run {run_id}", batch[0].subject, batch[0].object, "alice",
                     "VERIFIED", "ROLLED BACK", "PASS" if passed else "FAIL"):
        assert expected in shown, expected
    assert "&lt;script&gt;alert" in dom.stdout and "<script" not in dom.stdout.lower()
    screenshot(run_file, ARTIFACTS / f"audit-report-run-{run_id}.png", 2000, tmp_path / "chromium", "the audit report")


def test_a_tampered_trail_shows_broken_in_the_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUS_DATABASE_URL", f"sqlite:///{tmp_path / 'kus.db'}")
    monkeypatch.setenv("KUS_DELTA_STORE", (tmp_path / "deltas").as_uri())
    settings = Settings.load()
    with service_context(settings) as ctx, ctx.db.session() as session:
        for n in range(2):
            run = repo.create_run(session, "demo", "ft", "carol", n, n + 1)
            append_event(session, "carol", "ingest", f"run:{run.id}", {"changes": 1, "accepted": 1, "rejected": 0})
    out = tmp_path / "summary.html"
    assert cli(["audit", "report", "--out", str(out)]) == 0
    assert "VERIFIED" in _text(out.read_text())

    engine = sa.create_engine(settings.database_url)  # what someone who gets round the triggers could do
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER audit_events_no_update"))
        conn.execute(sa.text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2"))
    engine.dispose()
    capsys.readouterr()
    assert cli(["audit", "report", "--out", str(out)]) == 3
    assert "BROKEN" in capsys.readouterr().out
    text = _text(out.read_text())
    assert "BROKEN" in text and "VERIFIED" not in text and "first bad event is number 2" in text
    assert "seq 2: content does not match its hash (changed)" in text
    with service_context(settings) as ctx:
        assert ctx.store.get_blob(SUMMARY_KEY) == out.read_bytes()
    # the run report says the same
    assert cli(["audit", "report", "--run", "1", "--out", str(tmp_path / "run1.html")]) == 3
    assert "BROKEN" in _text((tmp_path / "run1.html").read_text())
