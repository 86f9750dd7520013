"""Property-based tests (hypothesis) of the fact importers and the template renderer.

The contract: a file of well-formed facts comes back exactly; a file of any rows loses none of
them (each is a fact or an error naming its line); a template renders any subject verbatim.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.errors import InvalidInput
from infra.fact_import import MAX_FIELD_CHARS, load_templates, read_facts

PROPERTY_SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: What a catalogue value may hold: any character but controls, format characters, surrogates
#: and line or paragraph separators.
VALUE_CHARS = st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))
value_text = st.text(VALUE_CHARS, min_size=1, max_size=30).map(str.strip).filter(bool)
#: Anything at all, controls and newlines included.
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


def _write(rows: list[dict[str, str]], suffix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="kus-prop-"))
    path = folder / f"facts{suffix}"
    if suffix == ".csv":
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=["subject", "relation", "object"])
        writer.writeheader()
        writer.writerows(rows)
        path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@st.composite
def distinct_facts(draw: st.DrawFn, values: st.SearchStrategy[str]) -> list[dict[str, str]]:
    rows = draw(st.lists(st.fixed_dictionaries({"subject": values, "relation": values, "object": values}),
                         max_size=12, unique_by=lambda r: (r["subject"], r["relation"])))
    return rows


@PROPERTY_SETTINGS
@given(rows=distinct_facts(value_text), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_well_formed_facts_come_back_exactly(rows: list[dict[str, str]], suffix: str) -> None:
    result = read_facts(_write(rows, suffix))
    assert result.errors == []
    assert [(f.subject, f.relation, f.object) for f in result.facts] == [
        (r["subject"], r["relation"], r["object"]) for r in rows
    ]


@PROPERTY_SETTINGS
@given(cells=st.lists(st.tuples(any_text, any_text, any_text), max_size=12), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_no_row_is_lost_whatever_it_holds(cells: list[tuple[str, str, str]], suffix: str) -> None:
    """Every row is either imported as written or refused with a reason naming a line of the file."""
    rows = [{"subject": f"row {i} {s}", "relation": r, "object": o} for i, (s, r, o) in enumerate(cells)]
    path = _write(rows, suffix)
    lines_in_file = path.read_text(encoding="utf-8").count("\n") + 1
    result = read_facts(path)
    assert len(result.facts) + len(result.errors) == len(rows)
    first_row_line = 2 if suffix == ".csv" else 1  # a CSV's line 1 is its header
    for error in result.errors:
        assert error.reason and first_row_line <= error.line <= lines_in_file
    imported = {f.subject: f for f in result.facts}
    for row in rows:
        fact = imported.get(row["subject"].strip())
        if fact is not None:
            assert (fact.relation, fact.object) == (row["relation"].strip(), row["object"].strip())
            for value in (fact.subject, fact.relation, fact.object):
                assert value and len(value) <= MAX_FIELD_CHARS
                assert not any(ch in value for ch in "\x00\x1b\r\n\u2028\u2029")


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_arbitrary_bytes_give_a_result_or_a_clear_error(data: bytes, suffix: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="kus-prop-"))
    path = folder / f"facts{suffix}"
    path.write_bytes(data)
    try:
        result = read_facts(path)
    except InvalidInput as exc:
        assert str(path) in str(exc)
    else:
        assert all(e.line >= 1 and e.reason for e in result.errors)


template_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=25)


@PROPERTY_SETTINGS
@given(before=template_text, placeholder=st.sampled_from(["{subject}", "{subject!r}", "{subject:.3}", "{subject!s:>40}"]),
       after=template_text, subject=value_text)
def test_an_accepted_template_renders_any_subject_verbatim(before: str, placeholder: str, after: str, subject: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="kus-prop-"))
    path = folder / "templates.json"
    prompt = before + placeholder + after
    path.write_text(json.dumps({"relations": {"price": {"prompt": prompt, "paraphrases": [prompt]}}}), encoding="utf-8")
    try:
        template = load_templates(path)["price"]
    except InvalidInput as exc:
        assert "price" in str(exc)
        return
    rendered = template.render(subject)
    literal_before = before.replace("{{", "{").replace("}}", "}")
    literal_after = after.replace("{{", "{").replace("}}", "}")
    assert rendered == literal_before + subject + literal_after
    assert template.render_paraphrases(subject) == (rendered,)


@pytest.mark.parametrize("placeholder", ["{subject!r}", "{subject:.3}"])
def test_templates_may_not_convert_or_format_the_subject(tmp_path: Path, placeholder: str) -> None:
    path = tmp_path / "templates.json"
    path.write_text(json.dumps({"relations": {"price": {"prompt": f"The price of {placeholder} is",
                                                        "paraphrases": ["{subject} costs"]}}}))
    with pytest.raises(InvalidInput, match="price"):
        load_templates(path)
