"""Great Expectations suites (validation.gx_suites) on real GX 1.24 ephemeral contexts."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import pandas as pd
import pytest

from infra.errors import InvalidInput
from infra.settings import DEFAULT_THRESHOLDS
from validation.evaluate import Evaluation, retention_table
from validation.gx_suites import (
    RETENTION_CHECKS,
    render_retention_markdown,
    validate_incoming_changes,
    validate_retention,
)

T0 = datetime(2026, 3, 1, 9, 0)
RELATIONS = {"price", "colour"}
COLUMNS = ["change_id", "subject", "relation", "old_object", "new_object", "changed_at"]


def frame(rows):
    return pd.DataFrame(rows, columns=COLUMNS)


GOOD = [
    (1, "Acme X100", "price", "$199", "$149", T0),
    (2, "Zeta Q7", "colour", "blue", "teal", T0),
    (3, "Nova P9", "price", None, "$10", T0),  # a brand-new fact
    (4, "Bolt K2", "colour", "green", "grey", T0),
    (5, "Bolt K2", "colour", "green", "grey", T0),  # an exact duplicate is not a conflict
    (6, "Bolt K2", "price", "$80", "x" * 64, T0),  # exactly at the length limit
]
BAD = [
    (11, "", "price", "$1", "$2", T0),  # empty subject
    (12, "   ", "price", "$1", "$2", T0),  # blank subject
    (13, None, "price", "$1", "$2", T0),  # null subject
    (14, "Acme X100", "weight", "1kg", "2kg", T0),  # unknown relation
    (15, "Kite Z1", "price", "$5", "$6", T0 + timedelta(hours=1)),  # conflict ...
    (16, "Kite Z1", "price", "$5", "$7", T0 + timedelta(hours=1)),  # ... with this one
    (17, "Kite Z2", "colour", "red", "red", T0),  # no-op
    (18, "Kite Z3", "colour", "red", "y" * 65, T0),  # too long
    (19, "Kite Z4", "colour", "red", "", T0),  # empty new object
    (20, "Kite Z5", "colour", "red", None, T0),  # null new object
    (21, "Kite\x00 Z6", "colour", "red", "blue", T0),  # NUL in the subject
    (22, "Kite Z7", "colour", "red", "\x1b[31mblue", T0),  # an ANSI escape in the value
    (23, "Kite Z8", "colour", "red", "blue\ngreen", T0),  # a newline in the value
]


def test_incoming_suite_rejects_exactly_the_bad_rows_with_reasons():
    report = validate_incoming_changes(frame(GOOD + BAD), RELATIONS)
    assert report.accepted_ids == [1, 2, 3, 4, 5, 6]
    assert not report.success
    reasons = dict(report.rejections)
    assert sorted(reasons) == [r[0] for r in BAD]
    expect = {
        11: ("expect_column_values_to_match_regex(subject)", "''"),
        12: ("expect_column_values_to_match_regex(subject)", "'   '"),
        13: ("expect_column_values_to_not_be_null(subject)", "subject is null"),
        14: ("expect_column_values_to_be_in_set(relation)", "'weight'"),
        15: ("conflicting_new_objects", "'Kite Z1'"),
        16: ("conflicting_new_objects", "'price'"),
        17: ("expect_column_values_to_be_in_set(is_noop)", "'red'"),
        18: ("expect_column_value_lengths_to_be_between(new_object)", "65 characters"),
        19: ("expect_column_values_to_match_regex(new_object)", "''"),
        20: ("expect_column_values_to_not_be_null(new_object)", "new_object is null"),
        21: ("expect_column_values_to_not_match_regex(subject)", "control character"),
        22: ("expect_column_values_to_not_match_regex(new_object)", "control character"),
        23: ("expect_column_values_to_not_match_regex(new_object)", "control character"),
    }
    for change_id, (expectation, value) in expect.items():
        assert expectation in reasons[change_id], reasons[change_id]
        assert value in reasons[change_id], reasons[change_id]
    # a row's reasons name only what is wrong with it
    assert "relation" not in reasons[18] and "no-op" not in reasons[14]
    # the validation result is plain JSON
    assert json.loads(json.dumps(report.gx_result))["success"] is False
    assert len(report.gx_result["results"]) >= 9


def test_incoming_suite_accepts_a_clean_batch_and_respects_the_length_limit():
    report = validate_incoming_changes(frame(GOOD), RELATIONS)
    assert report.success and report.rejections == [] and report.accepted_ids == [1, 2, 3, 4, 5, 6]
    shorter = validate_incoming_changes(frame(GOOD), RELATIONS, max_object_chars=10)
    assert shorter.accepted_ids == [1, 2, 3, 4, 5]
    assert [i for i, _ in shorter.rejections] == [6]


def test_incoming_suite_rejects_duplicate_change_ids_and_refuses_malformed_frames():
    rows = GOOD[:2] + [(2, "Bolt K2", "price", "$80", "$90", T0)]
    report = validate_incoming_changes(frame(rows), RELATIONS)
    assert report.accepted_ids == [1]
    assert "appears more than once" in dict(report.rejections)[2]
    with pytest.raises(InvalidInput, match="lack columns"):
        validate_incoming_changes(frame(GOOD).drop(columns=["changed_at"]), RELATIONS)


# ------------------------------------------------------------------------------------ retention


def table(**after):
    values = {
        "efficacy_tf": 1.0,
        "efficacy_gen": 1.0,
        "paraphrase_gen": 0.8,
        "neighbourhood_unchanged": 1.0,
        "unrelated_unchanged": 1.0,
        "perplexity_drift": 0.01,
        "fluency_drop": 0.0,
        "agreement_changed": 1.0,
        "unchanged_kept": 1.0,
    }
    values.update(after)
    return pd.DataFrame({"metric": list(values), "before": math.nan, "after": list(values.values()), "change": math.nan})


def failing(report):
    return sorted(c["metric"] for c in report.checks if not c["success"])


def test_retention_suite_passes_at_and_fails_just_beyond_each_threshold():
    th = dict(DEFAULT_THRESHOLDS)
    at = table(
        efficacy_tf=th["efficacy_min"],
        efficacy_gen=th["efficacy_min"],
        paraphrase_gen=th["paraphrase_min"],
        neighbourhood_unchanged=th["neighbourhood_min"],
        unrelated_unchanged=th["unrelated_retention_min"],
        perplexity_drift=th["perplexity_drift_max"],
        fluency_drop=th["fluency_drop_max"],
        agreement_changed=th["agreement_changed_min"],
        unchanged_kept=th["unchanged_kept_min"],
    )
    report = validate_retention(at, th)
    assert report.success, report.checks
    assert len(report.checks) == 9 and all(c["success"] for c in report.checks)
    assert json.loads(json.dumps(report.gx_result))["success"] is True

    eps = 1e-6
    beyond = {
        "efficacy_tf": th["efficacy_min"] - eps,
        "efficacy_gen": th["efficacy_min"] - eps,
        "paraphrase_gen": th["paraphrase_min"] - eps,
        "neighbourhood_unchanged": th["neighbourhood_min"] - eps,
        "unrelated_unchanged": th["unrelated_retention_min"] - eps,
        "perplexity_drift": th["perplexity_drift_max"] + eps,
        "fluency_drop": th["fluency_drop_max"] + eps,
        "agreement_changed": th["agreement_changed_min"] - eps,
        "unchanged_kept": th["unchanged_kept_min"] - eps,
    }
    # each check reads only its own metric, so one table with every metric just beyond its bound
    # shows that each of them fails on its own
    report = validate_retention(table(**beyond), th)
    assert not report.success
    assert failing(report) == sorted(beyond)
    for check in report.checks:
        assert check["observed"] == pytest.approx(beyond[check["metric"]])
        assert check["kind"] == ("max" if check["metric"] in ("perplexity_drift", "fluency_drop") else "min")
    assert failing(validate_retention(table(paraphrase_gen=beyond["paraphrase_gen"]), th)) == ["paraphrase_gen"]


def test_retention_suite_uses_the_given_thresholds_and_fails_missing_metrics():
    # a stricter configured paraphrase threshold fails a table the default passes
    assert validate_retention(table(paraphrase_gen=0.7), {}).success
    strict = validate_retention(table(paraphrase_gen=0.7), {"paraphrase_min": 0.75})
    assert failing(strict) == ["paraphrase_gen"]
    assert next(c for c in strict.checks if c["metric"] == "paraphrase_gen")["threshold"] == 0.75
    # NaN (nothing scored) and an absent row both fail, loudly
    nan_report = validate_retention(table(unrelated_unchanged=math.nan), {})
    assert failing(nan_report) == ["unrelated_unchanged"]
    absent = table().query("metric != 'fluency_drop'")
    assert failing(validate_retention(absent, {})) == ["fluency_drop"]
    with pytest.raises(InvalidInput, match="unknown thresholds"):
        validate_retention(table(), {"efficacy_minimum": 0.5})
    assert set(RETENTION_CHECKS) == set(DEFAULT_THRESHOLDS)


def test_retention_suite_on_a_retention_table_and_its_markdown():
    rows = pd.DataFrame(
        {
            "kind": ["neighbourhood"] * 4 + ["unrelated"] * 2,
            "prompt": [f"p{i}" for i in range(6)],
            "expected": ["a"] * 6,
            "greedy": ["a"] * 6,
            "tf_correct": True,
            "gen_correct": True,
            "nll_expected": 0.1,
        }
    )
    summary = {
        "efficacy_tf": 0.0,
        "efficacy_gen": 0.0,
        "paraphrase_tf": 0.0,
        "paraphrase_gen": 0.0,
        "neighbourhood_tf": 1.0,
        "neighbourhood_gen": 1.0,
        "unrelated_gen": 1.0,
        "perplexity": 10.0,
        "fluency": 5.0,
    }
    before = Evaluation(summary, rows)
    after_rows = rows.copy()
    after_rows.loc[0, "greedy"] = "b"  # one of four neighbours changed
    after = Evaluation(
        {**summary, "efficacy_tf": 1.0, "efficacy_gen": 1.0, "paraphrase_gen": 1.0, "perplexity": 12.0, "fluency": 4.0},
        after_rows,
    )
    report = validate_retention(retention_table(before, after), DEFAULT_THRESHOLDS)
    # a table without catalogue agreement fails those checks too: a missing metric never passes
    assert failing(report) == ["agreement_changed", "fluency_drop", "neighbourhood_unchanged", "perplexity_drift",
                               "unchanged_kept"]
    observed = {c["metric"]: c["observed"] for c in report.checks}
    assert observed["neighbourhood_unchanged"] == pytest.approx(0.75)
    assert observed["perplexity_drift"] == pytest.approx(0.2)
    assert observed["fluency_drop"] == pytest.approx(0.2)
    md = render_retention_markdown(report)
    assert md.startswith("**Retention: FAIL**")
    assert "| neighbourhood_unchanged | 0.7500 | ≥ 0.9000 | neighbourhood_min | **FAIL** |" in md
    assert "| efficacy_gen | 1.0000 | ≥ 0.9000 | efficacy_min | pass |" in md
    assert md.count("\n| ") == 1 + 9  # header + one line per check


def test_validation_imports_without_prefect_sqlalchemy_boto3_or_gx():
    """GX (and the optional integrations it pulls in) loads only when a suite runs."""
    import subprocess
    import sys

    code = (
        "import sys, validation.gx_suites, validation.sets, validation.fluency\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'sqlalchemy', 'boto3', 'great_expectations'})\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
