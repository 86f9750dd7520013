"""Reading facts (CSV / JSON lines) and relation templates (YAML / JSON) from user files."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from infra.domain import Fact
from infra.errors import InvalidInput, NotFound
from infra.fact_import import ImportResult, RowError, load_templates, read_facts

KNOWN = ("price", "colour", "weight")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _reasons(result: ImportResult) -> dict[int, str]:
    return {e.line: e.reason for e in result.errors}


def test_csv_good_and_bad_rows(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "facts.csv",
        "subject,relation,object,valid_from\n"
        "Acme X100,price,$199,2026-01-05\n"  # 2
        '"Acme, Pro",colour,red,2026-01-05T10:00:00+01:00\n'  # 3
        "Acme X200,price,,\n"  # 4
        "Acme X300,height,12 cm,\n"  # 5
        "Acme X400,weight,3 kg,05/01/2026\n"  # 6
        "Acme X500,price\n"  # 7
        "Acme X550,price,$55\n"  # 8: the optional valid_from may be left off
        "\n"
        "Acme X600,price,$5,,extra\n"  # 10
        "  Acme X700 , weight , 2 kg ,\n",  # 11
    )
    result = read_facts(path, known_relations=KNOWN)
    assert result.facts == [
        Fact("Acme X100", "price", "$199", datetime(2026, 1, 5, tzinfo=timezone.utc), "facts.csv"),
        Fact("Acme, Pro", "colour", "red", datetime(2026, 1, 5, 9, tzinfo=timezone.utc), "facts.csv"),
        Fact("Acme X550", "price", "$55", None, "facts.csv"),
        Fact("Acme X700", "weight", "2 kg", None, "facts.csv"),
    ]
    assert _reasons(result) == {
        4: "empty field object",
        5: "unknown relation 'height'; known relations: colour, price, weight",
        6: "bad ISO date in valid_from: '05/01/2026'",
        7: "missing column(s) object (row has 2 of 4 cells)",
        10: "too many cells: 5 for 4 columns",
    }
    assert result.errors[0] == RowError(4, "empty field object", "Acme X200,price,,")
    assert not result.ok


def test_csv_header_problems_are_refused_whole(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"missing column\(s\) object"):
        read_facts(_write(tmp_path, "a.csv", "subject,relation\nX,price\n"))
    with pytest.raises(InvalidInput, match=r"unknown column\(s\) colour"):
        read_facts(_write(tmp_path, "b.csv", "subject,relation,object,colour\n"))
    with pytest.raises(InvalidInput, match="empty file"):
        read_facts(_write(tmp_path, "c.csv", ""))
    with pytest.raises(InvalidInput, match="unknown facts file type"):
        read_facts(_write(tmp_path, "d.txt", "subject,relation,object\n"))
    with pytest.raises(NotFound):
        read_facts(tmp_path / "missing.csv")


def test_jsonl_good_and_bad_rows(tmp_path: Path) -> None:
    rows = [
        json.dumps({"subject": "X1", "relation": "price", "object": "$1"}),  # 1
        '{"subject": "X2", "relation": "price", "object": ',  # 2
        json.dumps(["X3", "price", "$3"]),  # 3
        json.dumps({"subject": "X4", "relation": "price"}),  # 4
        json.dumps({"subject": "X5", "relation": "price", "object": 5}),  # 5
        json.dumps({"subject": "X6", "relation": "price", "object": "$6", "note": "x"}),  # 6
        "",  # 7
        json.dumps({"subject": " ", "relation": "price", "object": "$8"}),  # 8
        json.dumps({"subject": "X9", "relation": "colour", "object": "red", "valid_from": "2026-02-30"}),  # 9
        json.dumps(
            {"subject": "X10", "relation": "colour", "object": "blue", "valid_from": "2026-02-03T04:05:06Z"}
        ),
    ]
    result = read_facts(_write(tmp_path, "facts.jsonl", "\n".join(rows) + "\n"), source="erp")
    assert result.facts == [
        Fact("X1", "price", "$1", None, "erp"),
        Fact("X10", "colour", "blue", datetime(2026, 2, 3, 4, 5, 6, tzinfo=timezone.utc), "erp"),
    ]
    reasons = _reasons(result)
    assert reasons[2].startswith("malformed JSON: Expecting value")
    assert reasons == {
        2: reasons[2],
        3: "expected a JSON object, got list",
        4: "missing field(s) object",
        5: "field object must be a string, got int 5",
        6: "unknown field(s) note; expected subject, relation, object, valid_from",
        8: "empty field subject",
        9: "bad ISO date in valid_from: '2026-02-30'",
    }
    assert result.errors[1].raw == rows[2]


def test_json_suffix_is_read_as_json_lines(tmp_path: Path) -> None:
    line = json.dumps({"subject": "X", "relation": "price", "object": "$1"})
    path = _write(tmp_path, "facts.json", line + "\n")
    assert read_facts(path).facts == [Fact("X", "price", "$1", None, "facts.json")]


def test_conflicting_rows_are_all_refused_and_repeats_kept_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "facts.csv",
        "subject,relation,object\n"
        "X1,price,$1\n"  # 2
        "X2,price,$2\n"  # 3
        "X1,price,$9\n"  # 4
        "X2,price,$2\n"  # 5: identical repeat, harmless
        "X1,colour,red\n",  # 6
    )
    result = read_facts(path, known_relations=KNOWN)
    kept = [(f.subject, f.relation, f.object) for f in result.facts]
    assert kept == [("X2", "price", "$2"), ("X1", "colour", "red")]
    assert [e.line for e in result.errors] == [2, 4]
    assert result.errors[0].reason == (
        "conflict: 'X1' price is '$1' here but line 4 says '$9'; all these rows are refused"
    )
    assert result.errors[1].reason == (
        "conflict: 'X1' price is '$9' here but line 2 says '$1'; all these rows are refused"
    )


def test_conflicting_dated_rows_name_their_dates(tmp_path: Path) -> None:
    path = _write(tmp_path, "dated.csv", "subject,relation,object,valid_from\n"
                  "X1,price,$1,2026-01-01\nX1,price,$9,2026-03-01\n")
    result = read_facts(path, known_relations=KNOWN)
    assert result.facts == []
    assert result.errors[0].reason.startswith(
        "conflict: 'X1' price is '$1' valid from 2026-01-01 here but line 3 says '$9' valid from 2026-03-01; "
        "all these rows are refused (one value per fact and file")


GOOD_YAML = """
relations:
  price:
    prompt: "The price of {subject} is"
    paraphrases: ["{subject} costs", "{subject} sells for"]
  colour:
    prompt: "The colour of {subject} is"
    paraphrases: ["{subject} comes in"]
    answer_format: " {object}"
"""


def test_load_templates_yaml_and_json(tmp_path: Path) -> None:
    templates = load_templates(_write(tmp_path, "t.yaml", GOOD_YAML))
    assert templates.relations() == ["colour", "price"]
    assert templates["price"].render("X1") == "The price of X1 is"
    assert templates["price"].render_paraphrases("X1") == ("X1 costs", "X1 sells for")
    assert templates["price"].answer_format == "{object}"
    assert templates["colour"].answer_format == " {object}"
    price = {"prompt": "The price of {subject} is", "paraphrases": ["{subject} costs"]}
    as_json = {"relations": {"price": price}}
    assert load_templates(_write(tmp_path, "t.json", json.dumps(as_json))).relations() == ["price"]
    # the plain form, relations at the top (as README documents it), loads the same templates
    plain = "\n".join(line[2:] for line in GOOD_YAML.strip().splitlines()[1:]) + "\n"
    assert load_templates(_write(tmp_path, "plain.yaml", plain)) == templates
    assert load_templates(_write(tmp_path, "plain.json", json.dumps({"price": price}))).relations() == ["price"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"prompt": "The price is", "paraphrases": ["{subject}"]}, r"prompt 'The price is' lacks \{subj"),
        ({"prompt": "{subject} is", "paraphrases": ["it costs"]}, r"paraphrase 1 'it costs' lacks \{subject"),
        ({"prompt": "{subject} is", "paraphrases": []}, "has no paraphrases"),
        ({"prompt": "{subject} is"}, "has no paraphrases"),
        ({"prompt": "{subject}", "paraphrases": ["{subject}"], "examples": 1}, r"unknown key\(s\) examples"),
        ({"prompt": "{subject} {product}", "paraphrases": ["{subject}"]}, r"unknown placeholder\(s\) \{prod"),
        ({"prompt": "{subject", "paraphrases": ["{subject}"]}, "not a valid template"),
        ({"prompt": "{subject}", "paraphrases": ["{subject}"], "answer_format": "x"}, r"lacks \{object\}"),
    ],
)
def test_bad_templates_name_file_and_relation(tmp_path: Path, spec: dict, message: str) -> None:
    path = _write(tmp_path, "templates.json", json.dumps({"relations": {"price": spec}}))
    with pytest.raises(InvalidInput, match=message) as info:
        load_templates(path)
    assert str(path) in str(info.value) and "relation 'price'" in str(info.value)


def test_bad_template_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not valid YAML"):
        load_templates(_write(tmp_path, "a.yaml", "relations: [unclosed\n"))
    with pytest.raises(InvalidInput, match="relation 'price'"):
        load_templates(_write(tmp_path, "b.yaml", "price: {}\n"))
    with pytest.raises(InvalidInput, match="mapping of relation name"):
        load_templates(_write(tmp_path, "e.yaml", "- price\n"))
    with pytest.raises(InvalidInput, match="'relations' must be a mapping"):
        load_templates(_write(tmp_path, "f.yaml", "relations: [price]\n"))
    with pytest.raises(InvalidInput, match=r"unknown top-level key\(s\) version"):
        load_templates(_write(tmp_path, "c.yaml", GOOD_YAML + "version: 2\n"))
    with pytest.raises(InvalidInput, match="no relations"):
        load_templates(_write(tmp_path, "d.json", '{"relations": {}}'))
    with pytest.raises(InvalidInput, match="unknown templates file type"):
        load_templates(_write(tmp_path, "e.toml", ""))
    with pytest.raises(NotFound):
        load_templates(tmp_path / "missing.yaml")


def test_control_characters_long_values_and_foreign_encodings_are_refused_with_their_line(tmp_path: Path) -> None:
    import json as _json

    from infra.fact_import import MAX_FIELD_CHARS, read_facts

    rows = [
        {"subject": "Axta Kettle K1", "relation": "price", "object": "$49"},
        {"subject": "Axta Kettle K2", "relation": "price", "object": "$5\u00009"},            # NUL
        {"subject": "Axta \u001b[31mKettle K3", "relation": "price", "object": "$59"},       # ANSI escape
        {"subject": "Axta Kettle K4", "relation": "price", "object": "$6\n9"},               # newline
        {"subject": "Axta Kettle K5", "relation": "price", "object": "x" * (MAX_FIELD_CHARS + 1)},
        {"subject": "Axta Kettle K6", "relation": "price", "object": "$79"},
    ]
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(_json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    result = read_facts(path)
    assert [f.subject for f in result.facts] == ["Axta Kettle K1", "Axta Kettle K6"]  # the good rows are kept
    reasons = {e.line: e.reason for e in result.errors}
    assert sorted(reasons) == [2, 3, 4, 5]
    assert "U+0000" in reasons[2] and "U+001B" in reasons[3] and "U+000A" in reasons[4]
    assert "more than" in reasons[5]

    latin1 = tmp_path / "facts.csv"
    latin1.write_bytes("subject,relation,object\nAxta Kettle K1,price,$49\nCaf\xe9 Maker C2,price,$99\n".encode("latin-1"))
    with pytest.raises(InvalidInput, match="line 3 is not UTF-8"):
        read_facts(latin1)
    binary = tmp_path / "dump.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(InvalidInput, match="not UTF-8"):
        read_facts(binary)


def test_large_files_stream_in_chunks_with_the_same_result(tmp_path: Path) -> None:
    """Chunks hold at most chunk_rows rows; conflicts across chunks are still all refused (in the last
    chunk), identical repeats kept once; collected, the chunks are exactly read_facts' result."""
    from infra.fact_import import iter_fact_chunks

    lines = ["subject,relation,object"]
    for i in range(40):
        lines.append(f"Item {i},price,${i}")
    lines += ["Item 3,price,$3", "Item 5,price,$999", "Bad,price,", "Item 7,colour,red"]
    path = _write(tmp_path, "big.csv", "\n".join(lines) + "\n")
    chunks = list(iter_fact_chunks(path, known_relations=KNOWN, chunk_rows=8))
    assert len(chunks) > 4 and all(len(c.facts) + len(c.errors) <= 8 for c in chunks[:-1])
    facts = [f for c in chunks for f in c.facts]
    errors = sorted((e for c in chunks for e in c.errors), key=lambda e: e.line)
    whole = read_facts(path, known_relations=KNOWN)
    assert sorted(facts, key=lambda f: f.subject) == sorted(whole.facts, key=lambda f: f.subject)
    assert errors == whole.errors
    assert [e.line for e in errors] == [7, 43, 44]  # both rows of Item 5 ($5, $999), the empty object
    assert "conflict" in errors[0].reason and "line 43 says '$999'" in errors[0].reason
    assert len(facts) == 40  # Item 0-39 less Item 5, plus Item 7's colour; the repeat of Item 3 once
    assert sum(f.subject == "Item 3" for f in facts) == 1


def test_an_encoding_error_deep_in_a_file_is_named_before_anything_streams(tmp_path: Path) -> None:
    from infra.fact_import import iter_fact_chunks

    rows = "".join(f"Item {i},price,${i}\n" for i in range(20_000))  # ~330 KB: past the first read blocks
    path = tmp_path / "late.csv"
    path.write_bytes(b"subject,relation,object\n" + rows.encode() + b"Caf\xe9,price,$1\n")
    with pytest.raises(InvalidInput, match="line 20002 is not UTF-8"):
        iter_fact_chunks(path)  # raises on the call: the first pass reads the file to its end
