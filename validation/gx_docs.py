"""The Great Expectations Data Docs page of a validation result, as one self-contained offline file.

GX's own renderer makes the page (``ValidationResultsPageRenderer`` + ``DefaultJinjaPageView``, the
same code that builds a Data Docs site), so it is the real Data Docs page. GX's template pulls
bootstrap, jQuery, vega and font-awesome from CDNs, so offline it renders unstyled and its buttons
do nothing; this module then makes it self-contained: every remote ``<script>``/``<link>``/``<img>``
goes, links to files of a Data Docs site that is not there become plain text, and the page carries
GX's own stylesheet (which its template inlines) plus a short one of ours that stands in for
bootstrap (system fonts, tables, badges, PASS/FAIL marks) and a few lines of plain JavaScript for
the "Failed Only" filter and the "Show more info" toggle. Nothing is fetched when it opens.

Usage::

    retention = validate_retention(table, thresholds)          # validation.gx_suites
    html = render_validation_docs(retention.gx_result,
                                  observed={c["metric"]: c["observed"] for c in retention.checks})
    Path("retention_validation.html").write_text(html)

GX is imported on first use, with analytics off, as in :mod:`validation.gx_suites`.
"""

from __future__ import annotations

import copy
import html as html_lib
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["render_validation_docs", "make_offline", "REMOTE_REFERENCE"]

#: A src/href attribute (or a CSS url()) that points to the network.
REMOTE_REFERENCE = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?\s*|url\(\s*["']?\s*)(?:https?:)?//""", re.I)

_EXPECT_WITH_VALUE = ("expect_column_values_to_be_between",)


def render_validation_docs(gx_result: Mapping[str, Any], *, observed: Mapping[str, float | None] | None = None,
                           run_name: str | None = None) -> str:
    """GX's Data Docs page for one validation result, made self-contained (see the module docstring).

    Args:
        gx_result: an ``ExpectationSuiteValidationResult`` as its JSON dict (``RetentionReport.gx_result``).
        observed: column -> the value GX validated there (the retention suite validates a one-row
            frame; its SUMMARY result lists a value only when it fails, so without this a passing
            check shows "0% unexpected"). Shown in GX's "Observed Value" column; the stored JSON
            result is not changed.
        run_name: shown in the page's breadcrumb and run info instead of GX's "__none__".

    Returns:
        the HTML page (UTF-8 text) with no network reference.
    """
    result = copy.deepcopy(dict(gx_result))
    if observed:
        _add_observed_values(result, observed)
    if run_name:
        meta = dict(result.get("meta") or {})
        load_time = (meta.get("batch_markers") or {}).get("ge_load_time", "")
        meta["run_id"] = {"run_name": run_name, "run_time": load_time}
        result["meta"] = meta
    return make_offline(_gx_page(result))


def _add_observed_values(result: dict, observed: Mapping[str, float | None]) -> None:
    for evr in result.get("results") or []:
        config = evr.get("expectation_config") or {}
        column = (config.get("kwargs") or {}).get("column")
        if config.get("type") in _EXPECT_WITH_VALUE and column in observed:
            value = observed[column]
            evr["result"] = {**(evr.get("result") or {}), "observed_value": "missing" if value is None else value}


def _gx_page(result: dict) -> str:
    """GX's own page for `result` (its Data Docs renderer and Jinja view), as GX writes it."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResultSchema
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    validation = ExpectationSuiteValidationResultSchema().load(result)
    document = ValidationResultsPageRenderer().render(validation)
    page = DefaultJinjaPageView().render(document)
    return page if isinstance(page, str) else "\n".join(page)


# ----------------------------------------------------------------------------------------------
# Offline


def make_offline(page: str) -> str:
    """A GX Data Docs page without any network reference, styled by what it carries.

    Removes every ``<script>`` (remote ones, and GX's inline ones, which need jQuery), every
    ``<link>`` (CDN stylesheets, font-awesome, a favicon of a site that is not there) and GX's
    newsletter footer; an image from the network becomes its alt text; a link out of the page
    becomes its text; a CSS ``url()`` to the network becomes ``none``. Then adds our stylesheet and
    script. Raises ValueError if a network reference survives (a GX upgrade changed its template).
    """
    page = re.sub(r"<script\b[^>]*>.*?</script\s*>", "", page, flags=re.S | re.I)
    page = re.sub(r"<link\b[^>]*>", "", page, flags=re.I)
    page = re.sub(r"<footer\b[^>]*>.*?</footer\s*>", "", page, flags=re.S | re.I)
    page = re.sub(r"<img\b[^>]*>", _image_to_text, page, flags=re.I)
    page = re.sub(r"<a\b([^>]*)>(.*?)</a\s*>", _outside_link_to_text, page, flags=re.S | re.I)
    page = re.sub(r"""url\(\s*["']?\s*(?:https?:)?//[^)]*\)""", "none", page, flags=re.I)
    page = re.sub(r"""<i class="([^"]*\bfa-(check-circle|times)\b[^"]*)"\s*""", _status_mark, page)
    page = page.replace("<html>", '<html lang="en">', 1)
    head_end = page.lower().find("</head>")
    if head_end < 0:
        raise ValueError("GX's Data Docs page has no </head>")
    page = page[:head_end] + f"<style>{OFFLINE_CSS}</style>\n<script>{OFFLINE_JS}</script>\n" + page[head_end:]
    left = REMOTE_REFERENCE.search(page)
    if left:
        raise ValueError(f"a network reference is left in the Data Docs page: {page[left.start():left.start() + 80]!r}")
    return page


def _image_to_text(match: re.Match[str]) -> str:
    tag = match.group(0)
    src = re.search(r"""\bsrc\s*=\s*["']([^"']*)""", tag, re.I)
    if src and not src.group(1).lower().startswith("data:"):
        alt = re.search(r"""\balt\s*=\s*["']([^"']*)""", tag, re.I)
        return f'<span class="ge-brand">{alt.group(1) if alt else ""}</span>'
    return tag


def _outside_link_to_text(match: re.Match[str]) -> str:
    """Keep in-page links (``#section-2``, GX's collapse toggles); a link elsewhere becomes its text."""
    attributes, text = match.group(1), match.group(2)
    href = re.search(r"""\bhref\s*=\s*["']?([^"'\s>]*)""", attributes, re.I)
    if href is None or href.group(1).startswith("#"):
        return match.group(0)
    return f'<span class="ge-link-text">{text}</span>'


def _status_mark(match: re.Match[str]) -> str:
    """GX marks success/failure with font-awesome icons: give them a label (our CSS draws the mark)."""
    label = "passed" if match.group(2) == "check-circle" else "failed"
    return f'<i class="{match.group(1)}" role="img" aria-label="{label}" title="{html_lib.escape(label)}" '


#: Stands in for bootstrap 4 (the classes GX's validation page uses) and font-awesome's two status icons.
OFFLINE_CSS = """
:root { color-scheme: light dark; --fg: #1f2328; --muted: #59636e; --bg: #ffffff; --panel: #f6f8fa;
  --line: #d0d7de; --ok: #1a7f37; --ok-bg: #dafbe1; --bad: #cf222e; --bad-bg: #ffebe9; --accent: #0969da; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6edf3; --muted: #9198a1; --bg: #0d1117; --panel: #161b22; --line: #3d444d;
    --ok: #3fb950; --ok-bg: #12261e; --bad: #f85149; --bad-bg: #2d1214; --accent: #4493f8; }
  .table { background-color: transparent !important; color: var(--fg) !important; }
}
html { font-size: 15px; }
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  line-height: 1.45; color: var(--fg); background: var(--bg); }
h4, h5, h6, .h6 { margin: 0 0 .3rem; font-weight: 600; }
h4 { font-size: 1.25rem; } h5 { font-size: 1.1rem; } h6, .h6 { font-size: .95rem; }
p { margin: 0 0 .6rem; } .lead { color: var(--muted); font-size: .95rem; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
body > .navbar { display: flex; align-items: center; height: auto !important; padding: .6rem 1.5rem;
  border-bottom: 1px solid var(--line); background: var(--panel); }
body > .navbar nav { display: flex; align-items: center; gap: 1rem; flex-wrap: wrap; }
.ge-brand { font-weight: 700; font-size: 1.15rem; color: #ff6210; }
.breadcrumb { display: flex; list-style: none; margin: 0; padding: 0; background: none !important; }
.breadcrumb-item + .breadcrumb-item::before { content: "/"; padding: 0 .5rem; color: var(--muted); }
.breadcrumb-item.active { color: var(--muted); }
.container, .container-fluid { box-sizing: border-box; width: 100%; padding: 1.2rem 1.5rem !important; }
.ge-section.container-fluid { padding: 0 !important; margin-bottom: 1.2rem; }
.row { display: flex; flex-wrap: wrap; gap: 0; }
.row > [class*="col-"] { box-sizing: border-box; }
.row > .table-responsive { flex: 1 1 100%; min-width: 0; }
.col-12 { flex: 0 0 100%; max-width: 100%; } .col-6 { flex: 0 0 50%; max-width: 50%; }
.col-lg-2 { flex: 0 0 16rem; max-width: 16rem; padding-right: 1.2rem !important; }
.col-lg-10 { flex: 1 1 0; min-width: 0; }
@media (max-width: 800px) { .col-lg-2, .col-lg-10, .col-6 { flex: 0 0 100%; max-width: 100%; } }
.sticky { position: sticky; top: 1rem; }
.card { border: 1px solid var(--line); border-radius: 6px; margin-bottom: .9rem; background: var(--bg); }
.card-header { padding: .45rem .7rem; border-bottom: 1px solid var(--line); background: var(--panel); }
.card-body { padding: .6rem .7rem; }
.card-body.collapse, .collapse { display: none; } .collapse.show { display: block; }
.nav { list-style: none; margin: 0; padding: 0; }
.nav-item { padding: 0; } .nav-link { display: block; padding: .2rem .5rem; font-size: .85rem; }
.nav-link.ml-1 { padding-left: 1rem; }
.ge-navigation-sidebar-link { word-break: normal !important; overflow-wrap: anywhere !important; }
.btn-group { display: flex; } .btn { padding: .25rem .6rem; border: 1px solid var(--accent); color: var(--accent);
  cursor: pointer; font-size: .85rem; } .btn:first-child { border-radius: 4px 0 0 4px; }
.btn:last-child { border-radius: 0 4px 4px 0; } .btn.active { background: var(--accent); color: #fff; }
.btn-group-toggle input { position: absolute; clip: rect(0 0 0 0); }
.alert { padding: .55rem .8rem; border-radius: 6px; margin: 0 0 .5rem; }
.alert-secondary { background: var(--panel); border: 1px solid var(--line); }
.table-responsive { overflow-x: auto; }
table { border-collapse: collapse; font-size: .9rem; }
.table { width: 100%; margin: .3rem 0 .6rem; }
.table th, .table td { padding: .4rem .6rem; border-top: 1px solid var(--line); vertical-align: top; text-align: left; }
.table thead th { border-bottom: 2px solid var(--line); border-top: 0; font-weight: 600; }
.table-sm th, .table-sm td { padding: .25rem .5rem; }
.table-bordered, .table-bordered th, .table-bordered td { border: 1px solid var(--line); }
.table-bordered { margin-top: .5rem; } .table-bordered td, .table-bordered th { padding: .2rem .5rem; }
.show-scrollbars { overflow: visible; }
.badge { display: inline-block; padding: .05rem .4rem; border-radius: 4px; font-size: .85em; font-weight: 600;
  background: var(--panel); border: 1px solid var(--line); font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.text-danger { color: var(--bad); } .text-success { color: var(--ok); }
strong.text-danger { font-weight: 600; }
.fas::before { font-style: normal; font-weight: 700; }
.fa-check-circle::before { content: "\\2714"; } .fa-times::before { content: "\\2718"; }
td .fa-check-circle::before, td .fa-times::before { display: inline-block; padding: .05rem .45rem;
  border-radius: 4px; font-size: .8rem; letter-spacing: .03em; }
td .fa-check-circle::before { content: "\\2714  PASS"; color: var(--ok); background: var(--ok-bg); }
td .fa-times::before { content: "\\2718  FAIL"; color: var(--bad); background: var(--bad-bg); }
i.fas { font-style: normal; }
.ge-hidden { display: none !important; }
@media print { .col-lg-2 { display: none; } .collapse { display: block; } }
"""

#: GX's own buttons call these (its versions need jQuery); the collapse toggle is bootstrap's.
OFFLINE_JS = """
function geShow(sel, on) { document.querySelectorAll(sel).forEach(function (e) { e.classList.toggle('ge-hidden', !on); }); }
function showAllValidations() { geShow('.ge-hidden', true); }
function hideSucceededValidations() {
  document.querySelectorAll('.hide-succeeded-validation-target-child').forEach(function (e) { e.parentElement.classList.add('ge-hidden'); });
  geShow('.hide-succeeded-validation-target', false);
  document.querySelectorAll('.hide-succeeded-validations-column-section-target-child').forEach(function (e) {
    var section = e.parentElement.parentElement; section.classList.add('ge-hidden');
    geShow('a[href="#' + section.id + '"]', false);
  });
}
document.addEventListener('click', function (ev) {
  var label = ev.target.closest('.btn-group-toggle .btn');
  if (label) { label.parentElement.querySelectorAll('.btn').forEach(function (b) { b.classList.toggle('active', b === label); }); }
  var toggle = ev.target.closest('[data-toggle="collapse"]');
  if (!toggle) { return; }
  ev.preventDefault();
  var target = document.getElementById((toggle.getAttribute('href') || '').slice(1));
  if (target) { target.classList.toggle('show'); toggle.setAttribute('aria-expanded', target.classList.contains('show')); }
});
"""
