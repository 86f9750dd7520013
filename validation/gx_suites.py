"""Great Expectations suites: incoming fact changes and post-edit retention.

This is the only module that imports ``great_expectations`` (pinned to 1.24; its API moves between
minor versions), and it does so on first use, not at import. Every call builds its suite in code and runs it in a fresh ephemeral context with
analytics and progress bars off, so nothing is written to disk and nothing goes over the network.

Usage::

    report = validate_incoming_changes(changes_df, known_relations={"price", "colour"})
    report.accepted_ids, report.rejections      # [1, 4], [(2, "subject ...: is null"), ...]

    table = retention_table(before, after)       # validation.evaluate
    retention = validate_retention(table, settings.thresholds)
    print(render_retention_markdown(retention))
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from infra.errors import InvalidInput
from infra.settings import DEFAULT_THRESHOLDS

__all__ = [
    "IncomingReport",
    "RetentionReport",
    "validate_incoming_changes",
    "validate_retention",
    "render_retention_markdown",
    "RETENTION_CHECKS",
]

INCOMING_COLUMNS = ("change_id", "subject", "relation", "old_object", "new_object", "changed_at")
_CONFLICT_COLUMN = "conflicting_new_objects"
#: C0 controls and DEL: never part of a product's name or value, and they reach prompts verbatim
_CONTROL_CHARS = r"[\x00-\x1f\x7f]"
_NOOP_COLUMN = "is_noop"

#: threshold name -> (metric row of the retention table, 'min' | 'max'); a threshold may check several metrics.
RETENTION_CHECKS: dict[str, tuple[tuple[str, str], ...]] = {
    "efficacy_min": (("efficacy_gen", "min"), ("efficacy_tf", "min")),
    "paraphrase_min": (("paraphrase_gen", "min"),),
    "neighbourhood_min": (("neighbourhood_unchanged", "min"),),
    "unrelated_retention_min": (("unrelated_unchanged", "min"),),
    "perplexity_drift_max": (("perplexity_drift", "max"),),
    "fluency_drop_max": (("fluency_drop", "max"),),
    "agreement_changed_min": (("agreement_changed", "min"),),
    "unchanged_kept_min": (("unchanged_kept", "min"),),
}


@dataclass(frozen=True)
class IncomingReport:
    """Which change rows may be used. `rejections` holds one (change_id, reasons) per rejected row."""

    accepted_ids: list[int]
    rejections: list[tuple[int, str]]
    success: bool
    gx_result: dict


@dataclass(frozen=True)
class RetentionReport:
    """`checks`: one dict per (threshold, metric): metric, observed, threshold, kind, success."""

    success: bool
    checks: list[dict]
    gx_result: dict


def _gx() -> tuple[Any, Any]:
    """``(great_expectations, great_expectations.expectations)``, imported on first use.

    GX takes seconds to import and pulls in optional integrations (SQLAlchemy, boto3 when they
    are installed), so importing this module stays cheap and free of them until a suite runs.
    Analytics are switched off before the first import.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations import expectations as gxe

    return gx, gxe


def _run_suite(name: str, frame: pd.DataFrame, expectations: list[Any], result_format: dict) -> Any:
    """Validate `frame` against `expectations` in a fresh ephemeral context."""
    gx, _ = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = context.data_sources.add_pandas(f"{name}_source").add_dataframe_asset(name=f"{name}_frame")
    batch = asset.add_batch_definition_whole_dataframe(f"{name}_batch").get_batch(batch_parameters={"dataframe": frame})
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    return batch.validate(suite, result_format=result_format)


def _json(result: Any) -> dict:
    """The validation result as plain JSON types (round-tripped, so it is certainly serialisable)."""
    return json.loads(json.dumps(result.to_json_dict(), default=str))


# ----------------------------------------------------------------------------------------------
# Incoming changes


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT


def _prepare_incoming(df: pd.DataFrame, conflicts: Mapping[int, int] | None = None) -> pd.DataFrame:
    missing = [c for c in INCOMING_COLUMNS if c not in df.columns]
    if missing:
        raise InvalidInput(f"incoming changes lack columns {missing}; expected {list(INCOMING_COLUMNS)}")
    frame = df.loc[:, list(INCOMING_COLUMNS)].reset_index(drop=True).copy()
    if frame["change_id"].isna().any():
        raise InvalidInput("incoming changes: change_id must not be null (rows could not be reported)")
    frame["change_id"] = frame["change_id"].astype("int64")
    for column in ("subject", "relation", "old_object", "new_object"):
        frame[column] = frame[column].astype(object).map(lambda v: None if _is_blank(v) else str(v))
    frame[_NOOP_COLUMN] = [
        old is not None and new is not None and old == new for old, new in zip(frame["old_object"], frame["new_object"])
    ]
    distinct = frame.groupby(["subject", "relation", "changed_at"], dropna=False)["new_object"].transform(
        lambda s: s.dropna().nunique()
    )
    frame[_CONFLICT_COLUMN] = distinct.astype("int64")
    if conflicts:  # counted over the whole feed range, beyond this page
        frame[_CONFLICT_COLUMN] = [max(int(n), int(conflicts.get(int(cid), 0)))
                                   for cid, n in zip(frame["change_id"], frame[_CONFLICT_COLUMN])]
    return frame


def _incoming_expectations(known_relations: Collection[str], max_object_chars: int) -> list[tuple[Any, Callable]]:
    """Each expectation with a function (row, value) -> reason for a row it rejects."""
    _, gxe = _gx()
    relations = sorted(known_relations)
    return [
        (gxe.ExpectColumnValuesToBeUnique(column="change_id"), lambda row, v: f"change_id {v} appears more than once"),
        (gxe.ExpectColumnValuesToNotBeNull(column="subject"), lambda row, v: "subject is null"),
        (gxe.ExpectColumnValuesToMatchRegex(column="subject", regex=r"\S"), lambda row, v: f"subject {v!r} is empty or blank"),
        (
            gxe.ExpectColumnValuesToNotMatchRegex(column="subject", regex=_CONTROL_CHARS),
            lambda row, v: f"subject {v!r} contains a control character (NUL, escape, newline, ...)",
        ),
        (gxe.ExpectColumnValuesToNotBeNull(column="relation"), lambda row, v: "relation is null"),
        (
            gxe.ExpectColumnValuesToBeInSet(column="relation", value_set=relations),
            lambda row, v: f"relation {v!r} is not a known relation {relations}",
        ),
        (gxe.ExpectColumnValuesToNotBeNull(column="new_object"), lambda row, v: "new_object is null"),
        (gxe.ExpectColumnValuesToMatchRegex(column="new_object", regex=r"\S"), lambda row, v: f"new_object {v!r} is empty or blank"),
        (
            gxe.ExpectColumnValuesToNotMatchRegex(column="new_object", regex=_CONTROL_CHARS),
            lambda row, v: f"new_object {v!r} contains a control character (NUL, escape, newline, ...)",
        ),
        (
            gxe.ExpectColumnValueLengthsToBeBetween(column="new_object", min_value=1, max_value=max_object_chars),
            lambda row, v: f"new_object {v!r} has {len(str(v))} characters, outside [1, {max_object_chars}]",
        ),
        (
            gxe.ExpectColumnValuesToBeBetween(column=_CONFLICT_COLUMN, min_value=0, max_value=1),
            lambda row, v: (
                f"{v} different new_object values for subject {row['subject']!r}, relation {row['relation']!r} "
                f"at {row['changed_at']}: conflicting rows are all rejected"
            ),
        ),
        (
            gxe.ExpectColumnValuesToBeInSet(column=_NOOP_COLUMN, value_set=[False]),
            lambda row, v: f"no-op change: new_object {row['new_object']!r} equals old_object",
        ),
    ]


def validate_incoming_changes(df: pd.DataFrame, known_relations: Collection[str], max_object_chars: int = 64,
                              conflicts: Mapping[int, int] | None = None) -> IncomingReport:
    """Check a batch of change-feed rows; say which are usable and why the others are not.

    Expectations: change_id unique; subject and new_object non-null and not blank; relation
    non-null and one of `known_relations`; new_object at most `max_object_chars` characters; no
    conflicting rows (same subject, relation and changed_at with different new_object: all of them
    are rejected); new_object differs from old_object (old_object null = a new fact, allowed).

    Args:
        df: columns change_id, subject, relation, old_object, new_object, changed_at.
        known_relations: relations that have templates.
        max_object_chars: longest acceptable new_object.
        conflicts: for a feed checked page by page, {change id: distinct new_objects of its group}
            over the whole range (``repository.conflicting_changes``); within the page they are counted anyway.

    Raises:
        InvalidInput: a column is missing or a change_id is null.
    """
    if max_object_chars < 1:
        raise InvalidInput("max_object_chars must be >= 1")
    frame = _prepare_incoming(df, conflicts)
    checks = _incoming_expectations(known_relations, max_object_chars)
    result = _run_suite(
        "incoming_changes",
        frame,
        [expectation for expectation, _ in checks],
        {"result_format": "COMPLETE", "unexpected_index_column_names": ["change_id"]},
    )

    rows_by_id = {int(r["change_id"]): r for r in frame.to_dict("records")}
    reasons: dict[int, list[str]] = {}
    for (expectation, explain), evr in zip(checks, result.results):
        if evr.success:
            continue
        if evr.exception_info and evr.exception_info.get("raised_exception"):
            raise InvalidInput(f"{expectation.expectation_type} could not run: {evr.exception_info.get('exception_message')}")
        column = expectation.column
        for entry in evr.result.get("unexpected_index_list") or []:
            change_id = int(entry["change_id"])
            value = entry.get(column)
            message = f"{expectation.expectation_type}({column}): {explain(rows_by_id[change_id], value)}"
            if message not in reasons.setdefault(change_id, []):
                reasons[change_id].append(message)

    order = [int(i) for i in frame["change_id"]]
    rejections = [(i, "; ".join(reasons[i])) for i in dict.fromkeys(order) if i in reasons]
    accepted = [i for i in order if i not in reasons]
    return IncomingReport(accepted_ids=accepted, rejections=rejections, success=bool(result.success), gx_result=_json(result))


# ----------------------------------------------------------------------------------------------
# Retention


def validate_retention(table: pd.DataFrame, thresholds: Mapping[str, float]) -> RetentionReport:
    """Check a :func:`validation.evaluate.retention_table` against the retention thresholds.

    The table's ``after`` column is pivoted into a one-row frame (one column per metric); each
    threshold becomes ``expect_column_values_to_be_between`` on its metric(s) (inclusive bound)
    plus ``expect_column_values_to_not_be_null``, so a metric that is missing or NaN fails.

    Args:
        table: rows ``metric, before, after, change`` (derived metrics carry their value in ``after``).
        thresholds: names as :data:`infra.settings.DEFAULT_THRESHOLDS`; missing names take the defaults.

    Raises:
        InvalidInput: an unknown threshold name, or a table without ``metric``/``after`` columns.
    """
    unknown = set(thresholds) - set(RETENTION_CHECKS)
    if unknown:
        raise InvalidInput(f"unknown thresholds {sorted(unknown)}; known: {sorted(RETENTION_CHECKS)}")
    if not {"metric", "after"} <= set(table.columns):
        raise InvalidInput("retention table needs columns 'metric' and 'after'")
    limits = {**DEFAULT_THRESHOLDS, **{k: float(v) for k, v in thresholds.items()}}
    observed = {str(m): v for m, v in zip(table["metric"], table["after"])}

    plan: list[tuple[str, str, float, str]] = []  # (threshold name, metric, limit, kind)
    for name, metrics in RETENTION_CHECKS.items():
        for metric, kind in metrics:
            plan.append((name, metric, limits[name], kind))
    wide = pd.DataFrame([{metric: _as_float(observed.get(metric)) for _, metric, _, _ in plan}])

    _, gxe = _gx()
    expectations: list[Any] = []
    for name, metric, limit, kind in plan:
        bound = {"min_value": limit} if kind == "min" else {"max_value": limit}
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=metric, meta={"threshold": name}))
        expectations.append(gxe.ExpectColumnValuesToBeBetween(column=metric, meta={"threshold": name}, **bound))
    result = _run_suite("retention", wide, expectations, {"result_format": "SUMMARY"})

    checks = []
    for i, (name, metric, limit, kind) in enumerate(plan):
        not_null, between = result.results[2 * i], result.results[2 * i + 1]
        value = wide.at[0, metric]
        checks.append(
            {
                "metric": metric,
                "observed": None if math.isnan(value) else float(value),
                "threshold": limit,
                "threshold_name": name,
                "kind": kind,
                "success": bool(not_null.success and between.success),
            }
        )
    return RetentionReport(success=bool(result.success), checks=checks, gx_result=_json(result))


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def render_retention_markdown(report: RetentionReport) -> str:
    """A Markdown table of the retention checks with an overall verdict line."""
    lines = [
        f"**Retention: {'PASS' if report.success else 'FAIL'}**",
        "",
        "| metric | observed | bound | threshold | result |",
        "|---|---:|---|---|---|",
    ]
    for c in report.checks:
        observed = "missing" if c["observed"] is None else f"{c['observed']:.4f}"
        bound = f"{'≥' if c['kind'] == 'min' else '≤'} {c['threshold']:.4f}"
        lines.append(f"| {c['metric']} | {observed} | {bound} | {c.get('threshold_name', '')} | {'pass' if c['success'] else '**FAIL**'} |")
    return "\n".join(lines) + "\n"
