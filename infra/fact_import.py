"""Read facts and relation templates from files a user owns.

Usage::

    templates = load_templates(Path("catalogue/templates.yaml"))
    result = read_facts(Path("prices.csv"), known_relations=templates.relations())
    for error in result.errors:
        print(f"line {error.line}: {error.reason}")
    upsert_facts(session, result.facts, changed_by="import")

Facts: CSV with the header ``subject,relation,object[,valid_from]``, or JSON lines (``.jsonl``,
``.json``) with the same keys. Bad rows come back as :class:`RowError` with a reason; good rows
still come back. ``valid_from`` is ISO 8601 (a date, or a date and time); without an offset it
is taken as UTC.

Templates (YAML or JSON)::

    relations:
      price:
        prompt: "The price of {subject} is"
        paraphrases: ["{subject} costs", "{subject} sells for"]
        answer_format: "{object}"        # optional
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import unicodedata
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from string import Formatter
from typing import Any

import yaml

from infra.domain import Fact, RelationTemplate, RelationTemplates
from infra.errors import InvalidInput, NotFound

REQUIRED_FIELDS = ("subject", "relation", "object")
OPTIONAL_FIELDS = ("valid_from",)
CSV_SUFFIXES = (".csv",)
#: Longest field accepted at import (subjects, relations, objects are names and values, not prose).
MAX_FIELD_CHARS = 256
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEMPLATE_KEYS = ("prompt", "paraphrases", "answer_format")


@dataclass(frozen=True)
class RowError:
    """One refused row: its line in the file (1-based, the header is line 1), why, and its text."""

    line: int
    reason: str
    raw: str


@dataclass(frozen=True)
class ImportResult:
    facts: list[Fact]
    errors: list[RowError]

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class _Parsed:
    line: int
    raw: str
    fact: Fact


@dataclass(frozen=True)
class ImportChunk:
    """A slice of a facts file, in file order: the good facts and the refused rows of that slice."""

    facts: list[Fact]
    errors: list[RowError]


def read_facts(
    path: Path, known_relations: Collection[str] | None = None, source: str | None = None
) -> ImportResult:
    """Read a whole facts file (CSV or JSON lines), keeping good rows and explaining bad ones.

    The same as collecting :func:`iter_fact_chunks`; prefer that for large files.

    Raises:
        NotFound: the file does not exist.
        InvalidInput: the file type is unknown, it is not UTF-8 text, or a CSV header lacks a
            required column or has an unknown one.
    """
    facts: list[Fact] = []
    errors: list[RowError] = []
    for chunk in iter_fact_chunks(path, known_relations, source):
        facts += chunk.facts
        errors += chunk.errors
    errors.sort(key=lambda e: e.line)
    return ImportResult(facts=facts, errors=errors)


def iter_fact_chunks(
    path: Path, known_relations: Collection[str] | None = None, source: str | None = None, chunk_rows: int = 5000
) -> Iterator[ImportChunk]:
    """Stream a facts file in chunks of about `chunk_rows` rows, in bounded memory.

    Two passes over the file: the first checks the encoding and the header (a bad file raises
    before any chunk is yielded, so nothing of it is imported) and remembers each (subject, relation)
    as a 64-bit digest with its object's digest and first line; the second yields the rows. Rows of
    a (subject, relation) the file gives different objects are all refused (in the last chunk, as
    conflicts); an identical repeat is kept once, at its first line. Memory grows with the distinct
    keys (about 100 bytes each), not with the rows' text.

    Raises: as :func:`read_facts`.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"facts file {path} does not exist")
    if chunk_rows < 1:
        raise InvalidInput(f"chunk_rows must be >= 1, got {chunk_rows}")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        read_rows = _csv_rows
    elif suffix in JSONL_SUFFIXES:
        read_rows = _jsonl_rows
    else:
        raise InvalidInput(
            f"{path}: unknown facts file type {suffix!r}; use {', '.join(CSV_SUFFIXES + JSONL_SUFFIXES)}"
        )
    source_name = source or path.name
    known = set(known_relations) if known_relations is not None else None

    first_seen: dict[int, int] = {}  # key digest -> object digest << 40 | first line
    suspect: set[int] = set()  # key digests given two different objects (or a digest collision)
    for line, _raw, values, problem in read_rows(path):
        fact = _to_fact(values, known, source_name)[0] if problem is None else None
        if fact is not None:
            key, obj = _digest(fact.subject, fact.relation), _digest(fact.object)
            seen = first_seen.setdefault(key, obj << 40 | line)
            if seen >> 40 != obj:
                suspect.add(key)
    return _second_pass(path, read_rows, known, source_name, chunk_rows, first_seen, suspect)


def _second_pass(path: Path, read_rows, known: set[str] | None, source_name: str, chunk_rows: int,  # noqa: ANN001
                 first_seen: dict[int, int], suspect: set[int]) -> Iterator[ImportChunk]:
    held: list[_Parsed] = []
    facts: list[Fact] = []
    errors: list[RowError] = []
    for line, raw, values, problem in read_rows(path):
        fact: Fact | None = None
        if problem is None:
            fact, problem = _to_fact(values, known, source_name)
        if fact is None:
            errors.append(RowError(line, problem or "unreadable row", raw))
        else:
            key = _digest(fact.subject, fact.relation)
            if key in suspect:
                held.append(_Parsed(line, raw, fact))
            elif first_seen[key] & (1 << 40) - 1 == line:
                facts.append(fact)
        if len(facts) + len(errors) >= chunk_rows:
            yield ImportChunk(facts, errors)
            facts, errors = [], []
    kept, conflicts = _drop_conflicts(held)
    yield ImportChunk(facts + kept, errors + conflicts)


def _digest(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest(), "big")


_Row = tuple[int, str, dict[str, Any], str | None]  # line, raw text, values, problem


def _text_lines(path: Path, newline: str) -> Iterator[str]:
    """The file's lines as UTF-8 text, read incrementally (a leading BOM dropped); InvalidInput naming
    the line of the first byte that is not UTF-8 (a binary file or another encoding: its rows cannot
    be trusted, so a caller that reads the file to its end before writing imports none of it)."""
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline=newline) as text:
        try:
            yield from text
        except UnicodeDecodeError:
            pass
        else:
            return
    raise _encoding_error(path)


def _encoding_error(path: Path) -> InvalidInput:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, lines = 0, 0
    with path.open("rb") as raw:
        while block := raw.read(1 << 16):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                # positions in exc are relative to the decoder's buffer: pending bytes + this block
                pending = len(exc.object) - len(block)
                bad = offset - pending + exc.start
                lines += block.count(b"\n", 0, max(0, exc.start - pending))
                return InvalidInput(f"{path}: line {lines + 1} is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                                    f"at offset {bad}); save the file as UTF-8")
            offset += len(block)
            lines += block.count(b"\n")
    return InvalidInput(f"{path}: is not UTF-8 text (it ends inside a character); save the file as UTF-8")


def read_text_strict(path: Path) -> str:
    """The whole file as UTF-8 text, or InvalidInput naming the line of the first byte that is not UTF-8."""
    return "".join(_text_lines(Path(path), newline=""))


def _csv_rows(path: Path) -> Iterator[_Row]:
    # split at \r and \n only, as CSV does: str.splitlines would also split a row at U+0085,
    # U+2028 and other Unicode line breaks inside a value, and misname the lines after it
    lines = _text_lines(path, newline="")
    consumed: list[str] = []

    def feed() -> Iterator[str]:
        for text in lines:
            consumed.append(text)
            yield text

    reader = csv.reader(feed())
    header = next(reader, None)
    if header is None:
        raise InvalidInput(
            f"{path}: empty file; expected the header {','.join(REQUIRED_FIELDS)}[,valid_from]"
        )
    header = [h.strip() for h in header]
    missing = [f for f in REQUIRED_FIELDS if f not in header]
    unknown = [h for h in header if h not in REQUIRED_FIELDS + OPTIONAL_FIELDS]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown column(s) {', '.join(unknown)}")
        raise InvalidInput(
            f"{path}: header {','.join(header)}: {'; '.join(parts)}; "
            f"expected {','.join(REQUIRED_FIELDS)}[,{','.join(OPTIONAL_FIELDS)}]"
        )
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise InvalidInput(f"{path}: header repeats column(s) {', '.join(duplicated)}")
    consumed.clear()
    for cells in reader:
        raw = "".join(consumed).rstrip("\r\n")
        consumed.clear()
        line = reader.line_num
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # a blank line
        absent = header[len(cells) :]
        if absent and all(name in OPTIONAL_FIELDS for name in absent):
            cells = cells + [""] * len(absent)  # trailing optional columns may be left off
        if len(cells) < len(header):
            required = [name for name in absent if name in REQUIRED_FIELDS]
            yield line, raw, {}, (
                f"missing column(s) {', '.join(required)} (row has {len(cells)} of {len(header)} cells)"
            )
        elif len(cells) > len(header):
            yield line, raw, {}, f"too many cells: {len(cells)} for {len(header)} columns"
        else:
            yield line, raw, dict(zip(header, cells)), None


def _jsonl_rows(path: Path) -> Iterator[_Row]:
    for line, text in enumerate(_text_lines(path, newline="\n"), start=1):
        raw = text.rstrip("\r\n")
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield line, raw, {}, f"malformed JSON: {exc.msg} at column {exc.colno}"
            continue
        if not isinstance(value, dict):
            yield line, raw, {}, f"expected a JSON object, got {type(value).__name__}"
            continue
        missing = [f for f in REQUIRED_FIELDS if f not in value]
        unknown = sorted(k for k in value if k not in REQUIRED_FIELDS + OPTIONAL_FIELDS)
        if missing:
            yield line, raw, {}, f"missing field(s) {', '.join(missing)}"
        elif unknown:
            yield line, raw, {}, (
                f"unknown field(s) {', '.join(unknown)}; "
                f"expected {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}"
            )
        else:
            yield line, raw, value, None


def _to_fact(values: dict[str, Any], known: set[str] | None, source: str) -> tuple[Fact | None, str | None]:
    clean: dict[str, str] = {}
    for name in REQUIRED_FIELDS + OPTIONAL_FIELDS:
        value = values.get(name)
        if value is None:
            if name in REQUIRED_FIELDS:
                return None, f"empty field {name}"
            continue
        if not isinstance(value, str):
            return None, f"field {name} must be a string, got {type(value).__name__} {json.dumps(value)}"
        value = value.strip()
        if not value and name in REQUIRED_FIELDS:
            return None, f"empty field {name}"
        bad = next((i for i, ch in enumerate(value) if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")), None)
        if bad is not None:
            return None, f"field {name} contains control character U+{ord(value[bad]):04X} at position {bad + 1}"
        if len(value) > MAX_FIELD_CHARS:
            return None, f"field {name} has {len(value)} characters, more than {MAX_FIELD_CHARS}"
        clean[name] = value
    if known is not None and clean["relation"] not in known:
        listed = ", ".join(sorted(known)) or "none"
        return None, f"unknown relation {clean['relation']!r}; known relations: {listed}"
    valid_from: datetime | None = None
    if clean.get("valid_from"):
        try:
            valid_from = datetime.fromisoformat(clean["valid_from"])
        except ValueError:
            return None, f"bad ISO date in valid_from: {clean['valid_from']!r}"
        if valid_from.tzinfo is None:
            valid_from = valid_from.replace(tzinfo=timezone.utc)
        valid_from = valid_from.astimezone(timezone.utc)
    fact = Fact(clean["subject"], clean["relation"], clean["object"], valid_from=valid_from, source=source)
    return fact, None


def _valid_from(fact: Fact) -> str:
    return f" valid from {fact.valid_from.date().isoformat()}" if fact.valid_from is not None else ""


def _drop_conflicts(parsed: list[_Parsed]) -> tuple[list[Fact], list[RowError]]:
    """Refuse every row of a (subject, relation) the file gives different objects; keep the first
    of identical repeats."""
    by_key: dict[tuple[str, str], list[_Parsed]] = {}
    for item in parsed:
        by_key.setdefault((item.fact.subject, item.fact.relation), []).append(item)
    facts: list[Fact] = []
    errors: list[RowError] = []
    for item in parsed:
        group = by_key[(item.fact.subject, item.fact.relation)]
        objects = {g.fact.object for g in group}
        if len(objects) > 1:
            others = ", ".join(f"line {g.line} says {g.fact.object!r}{_valid_from(g.fact)}" for g in group if g is not item)
            dated = " (one value per fact and file: import dated values as separate files, oldest first)" \
                if any(g.fact.valid_from is not None for g in group) else ""
            errors.append(
                RowError(
                    item.line,
                    f"conflict: {item.fact.subject!r} {item.fact.relation} is {item.fact.object!r}"
                    f"{_valid_from(item.fact)} here but {others}; all these rows are refused{dated}",
                    item.raw,
                )
            )
        elif group[0] is item:
            facts.append(item.fact)
    return facts, errors


# --------------------------------------------------------------------------- templates


def load_templates(path: Path) -> RelationTemplates:
    """Load relation templates from a YAML (``.yaml``/``.yml``) or JSON file, strictly.

    The file maps each relation to its ``prompt``, ``paraphrases`` and optional ``answer_format``,
    either at the top level or under a top-level ``relations:`` key (the demo's file).

    Raises:
        NotFound: the file does not exist.
        InvalidInput: naming the file and the relation, when a template lacks ``{subject}``, uses
            another placeholder, has no paraphrases, has unknown keys, or the file is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"templates file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise InvalidInput(
                f"{path}: unknown templates file type {path.suffix!r}; use .yaml, .yml or .json"
            )
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: expected a mapping of relation name -> prompt, paraphrases "
                           "(optionally under a top-level 'relations' key)")
    if "relations" not in data:  # the plain form: relations at the top
        data = {"relations": data}
    if not isinstance(data["relations"], dict):
        raise InvalidInput(f"{path}: 'relations' must be a mapping of relation name -> prompt, paraphrases")
    extra = sorted(set(data) - {"relations"})
    if extra:
        raise InvalidInput(
            f"{path}: unknown top-level key(s) {', '.join(map(str, extra))}; expected relations"
        )
    if not data["relations"]:
        raise InvalidInput(f"{path}: no relations defined")
    templates: dict[str, RelationTemplate] = {}
    for name, spec in data["relations"].items():
        templates[str(name)] = _template(path, str(name), spec)
    return RelationTemplates(templates)


def _template(path: Path, name: str, spec: Any) -> RelationTemplate:
    where = f"{path}: relation {name!r}"
    if not isinstance(spec, dict):
        raise InvalidInput(f"{where}: expected a mapping with keys {', '.join(TEMPLATE_KEYS)}")
    unknown = sorted(set(map(str, spec)) - set(TEMPLATE_KEYS))
    if unknown:
        raise InvalidInput(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(TEMPLATE_KEYS)}"
        )
    prompt = spec.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput(f"{where}: prompt must be a non-empty string")
    _check_placeholders(where, "prompt", prompt, "subject")
    paraphrases = spec.get("paraphrases")
    if isinstance(paraphrases, str) or not isinstance(paraphrases, list) or not paraphrases:
        raise InvalidInput(
            f"{where}: has no paraphrases; give a non-empty list of templates with {{subject}}"
        )
    for i, paraphrase in enumerate(paraphrases):
        if not isinstance(paraphrase, str) or not paraphrase.strip():
            raise InvalidInput(f"{where}: paraphrase {i + 1} must be a non-empty string")
        _check_placeholders(where, f"paraphrase {i + 1}", paraphrase, "subject")
    answer_format = spec.get("answer_format", "{object}")
    if not isinstance(answer_format, str):
        raise InvalidInput(f"{where}: answer_format must be a string containing {{object}}")
    _check_placeholders(where, "answer_format", answer_format, "object")
    return RelationTemplate(name, prompt, tuple(paraphrases), answer_format)


def _check_placeholders(where: str, what: str, template: str, required: str) -> None:
    try:
        parts = [(field, spec, conversion) for _, field, spec, conversion in Formatter().parse(template)
                 if field is not None]
    except ValueError as exc:
        raise InvalidInput(f"{where}: {what} {template!r} is not a valid template: {exc}") from exc
    if any(spec or conversion for _, spec, conversion in parts):
        raise InvalidInput(f"{where}: {what} {template!r} converts or formats a placeholder (!r, :spec); "
                           f"write {{{required}}} alone, it is filled in verbatim")
    names = {field for field, _, _ in parts}
    if required not in names:
        raise InvalidInput(f"{where}: {what} {template!r} lacks {{{required}}}")
    other = sorted(names - {required})
    if other:
        placeholders = ", ".join("{" + name + "}" for name in other)
        raise InvalidInput(
            f"{where}: {what} {template!r} uses unknown placeholder(s) {placeholders}; "
            f"only {{{required}}} is filled in"
        )
