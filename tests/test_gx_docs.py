"""GX Data Docs page of the retention validation (validation.gx_docs): GX's own renderer, made to open offline.

Real GX 1.24 validations rendered by GX's Data Docs renderer; the page is checked as HTML (every metric,
its observed value and PASS/FAIL, no network reference, inline CSS), then opened in headless Chromium
(required, as for the audit report: `.ci/run` installs it). The screenshot is kept under
var/test-artifacts/ for a person to look at. Last, the validation step keeps the page as a run file.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from flows.audit_report import render_run, run_report
from infra import leases
from infra import repository as repo
from infra.context import service_context
from infra.errors import NotFound
from infra.settings import DEFAULT_THRESHOLDS, Settings
from tasks.run_artifacts import VALIDATION_DOCS_FILE, VALIDATION_RESULT_FILE, get_bytes, get_json
from validation.gx_docs import render_validation_docs
from validation.gx_suites import validate_retention
from tests.headless_chromium import chromium, screenshot

ARTIFACTS = Path(__file__).resolve().parents[1] / "var" / "test-artifacts"

#: after-edit values, each distinct so that it can be found on the page; agreement_changed fails (min 0.9)
AFTER = {
    "efficacy_tf": 0.97,
    "efficacy_gen": 0.95,
    "paraphrase_gen": 0.85,
    "neighbourhood_unchanged": 0.93,
    "unrelated_unchanged": 0.996,
    "perplexity_drift": 0.013,
    "fluency_drop": 0.004,
    "agreement_changed": 0.42,
    "unchanged_kept": 0.98,
}
FAILING = "agreement_changed"


def table(**after: float) -> pd.DataFrame:
    values = {**AFTER, **after}
    return pd.DataFrame({"metric": list(values), "before": math.nan, "after": list(values.values()), "change": math.nan})


def page_of(after: pd.DataFrame) -> tuple[str, object]:
    report = validate_retention(after, DEFAULT_THRESHOLDS)
    observed = {c["metric"]: c["observed"] for c in report.checks}
    return render_validation_docs(report.gx_result, observed=observed, run_name="refresh run 7"), report


class _Refs(HTMLParser):
    """Every tag's src/href, and the text of <style> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        self.refs += [(tag, name, value or "") for name, value in attrs if name in ("src", "href", "srcset", "action")]

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def _sections(html: str) -> dict[str, str]:
    """GX's page has one section per column (metric) after its overview: {metric: section html}."""
    parts = re.split(r'<div id="section-\d+" class="ge-section', html)[1:]
    found = {}
    for part in parts:
        title = re.search(r"<h5[^>]*>\s*([^<]+?)\s*</h5>", part)
        assert title, part[:500]
        if title.group(1) != "Overview":
            found[title.group(1)] = part
    return found


def test_page_shows_every_check_with_its_value_and_verdict_and_needs_no_network() -> None:
    html, report = page_of(table())
    assert not report.success and [c["metric"] for c in report.checks if not c["success"]] == [FAILING]

    parser = _Refs()
    parser.feed(html)
    remote = [r for r in parser.refs if re.match(r"\s*(https?:)?//", r[2], re.I)]
    assert remote == [], remote
    assert all(r[2].startswith("#") for r in parser.refs), parser.refs  # only in-page links are left
    assert "<link" not in html.lower() and "<img" not in html.lower()
    assert not re.search(r"<script[^>]*\bsrc=", html, re.I)
    assert not re.search(r"https?://", html), re.search(r".{60}https?://.{60}", html)  # not even as text
    css = "\n".join(parser.styles)
    assert ".cooltip" in css and ".ge-section" in css  # GX's own shipped stylesheet, inlined by its template
    assert "system-ui" in css and "FAIL" in css  # ours: system fonts, the PASS/FAIL marks

    assert "Expectation Validation Result" in html and "Validations / retention / refresh run 7" in html
    overview = _text(html.split('id="section-2"')[0])
    assert "Status: Failed" in overview and "Evaluated Expectations 18" in overview
    assert "Successful Expectations 17" in overview and "Unsuccessful Expectations 1" in overview

    sections = _sections(html)
    assert sorted(sections) == sorted(AFTER)
    for metric, value in AFTER.items():
        section = sections[metric]
        text = _text(section)
        assert f"{value:g}" in text, (metric, value, text)  # the observed value, in GX's "Observed Value" column
        assert "values must never be null" in text and "values must be" in text
        marks = re.findall(r'aria-label="(passed|failed)"', section)
        assert marks == (["passed", "failed"] if metric == FAILING else ["passed", "passed"]), (metric, marks)
    failing = _text(sections[FAILING])
    assert "greater than or equal to 0.9" in failing and "1 unexpected values found" in failing
    assert f"Unexpected Value Count {AFTER[FAILING]:g} 1" in failing

    passing, report = page_of(table(agreement_changed=0.91))
    assert report.success
    assert "Status: Succeeded" in _text(passing) and 'aria-label="failed"' not in passing
    assert sum(part.count('aria-label="passed"') for part in _sections(passing).values()) == 18


def _chromium(*args: str, profile: Path):  # noqa: ANN202
    return chromium(*args, profile=profile, page="the Data Docs page")


def test_page_opens_offline_in_chromium_and_its_filter_works(tmp_path: Path) -> None:
    html, _ = page_of(table())
    page = tmp_path / "retention_validation.html"
    page.write_text(html, encoding="utf-8")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "gx-data-docs.html").write_text(html, encoding="utf-8")

    dom = _chromium("--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri(), profile=tmp_path / "chromium")
    assert dom.returncode == 0, dom.stderr[-2000:]
    shown = _text(dom.stdout)
    for metric in AFTER:
        assert metric in shown, metric
    assert "Status: Failed" in shown and "Observed Value" in shown
    assert "Uncaught" not in dom.stderr, dom.stderr[-2000:]  # no script error (GX's jQuery ones are gone)

    # GX's "Failed Only" button (its jQuery version replaced by ours) leaves only the failing check
    page.write_text(html.replace("</body>", "<script>hideSucceededValidations()</script></body>"), encoding="utf-8")
    dom = _chromium("--dump-dom", page.as_uri(), profile=tmp_path / "chromium")
    assert dom.returncode == 0, dom.stderr[-2000:]
    hidden = set(re.findall(r'<div id="(section-\d+)" class="[^"]*\bge-hidden\b', dom.stdout))
    sections = {title: re.search(r"section-\d+", part).group(0) for title, part in _sections(dom.stdout).items()}
    assert hidden == {sid for metric, sid in sections.items() if metric != FAILING}, (hidden, sections)

    page.write_text(html, encoding="utf-8")
    screenshot(page, ARTIFACTS / "gx-data-docs.png", 1400, tmp_path / "chromium", "the Data Docs page")


# ------------------------------------------------------------------------------ kept with the run


def _evaluated_run(ctx, model: str, after: pd.DataFrame) -> int:
    """A run as the evaluation step leaves it: holding the model's lease, status edited, its metrics table stored."""
    with ctx.db.session() as session:
        leases.acquire(session, model, "carol", timedelta(hours=1))
        run = repo.create_run(session, model, "ft", "carol", 0, 1)
        leases.bind(session, model, run.id)
        repo.update_run(session, run.id, status="edited", metrics={"table": after.to_dict("records")})
    return run.id


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("KUS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUS_DATABASE_URL", f"sqlite:///{tmp_path / 'kus.db'}")
    monkeypatch.setenv("KUS_DELTA_STORE", (tmp_path / "deltas").as_uri())
    return Settings.load()


def test_validation_step_keeps_the_page_with_the_run(settings: Settings) -> None:
    from tasks.validate import validate_run

    with service_context(settings) as ctx:
        run_id = _evaluated_run(ctx, "demo", table())
        summary = validate_run(ctx, run_id)
        assert summary["success"] is False
        page = get_bytes(ctx, run_id, VALIDATION_DOCS_FILE).decode("utf-8")  # its sha256 recorded and checked
        assert get_json(ctx, run_id, VALIDATION_RESULT_FILE)["success"] is False  # the record, as before
        report = run_report(ctx, run_id)
    sha = hashlib.sha256(page.encode("utf-8")).hexdigest()
    assert f"Validations / retention / refresh run {run_id}" in page and not re.search(r"https?://", page)
    for metric, value in AFTER.items():
        assert metric in page and f"{value:g}" in _text(page)
    assert 'aria-label="failed"' in _sections(page)[FAILING]
    # the auditor's report names it beside the JSON result
    assert report.gx_docs == f"runs/{run_id}/{VALIDATION_DOCS_FILE} (sha256 {sha})"
    assert f"GX Data Docs page: runs/{run_id}/{VALIDATION_DOCS_FILE} (sha256 {sha})" in _text(render_run(report))


def test_a_page_that_cannot_be_made_never_fails_the_run(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    import tasks.validate

    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(tasks.validate, "render_validation_docs", broken)
    with service_context(settings) as ctx:
        run_id = _evaluated_run(ctx, "demo", table(agreement_changed=0.95))
        with caplog.at_level(logging.ERROR, logger="tasks.validate"):
            summary = tasks.validate.validate_run(ctx, run_id)
        assert summary["success"] is True
        with ctx.db.session() as session:
            assert repo.get_run(session, run_id).status == "validated"
        assert get_json(ctx, run_id, VALIDATION_RESULT_FILE)["success"] is True
        with pytest.raises(NotFound):
            get_bytes(ctx, run_id, VALIDATION_DOCS_FILE)
        report = run_report(ctx, run_id)
    assert "Data Docs page" in caplog.text and "renderer exploded" in caplog.text
    assert report.gx_docs is None and report.gx_result is not None
    assert "GX Data Docs page" not in render_run(report)
