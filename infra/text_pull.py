"""Generic English text that a registry package ships, written once as a statistics corpus.

The locate editors' key statistics (C0 = E[k kᵀ]) must come from text like what the model reads in
general, not from the catalogue (its own keys would be in C0) and not from the held-out text (that
measures drift). No data set may be downloaded at run time, so the text comes from a package on the
package registry, as the real model does::

    pulled = pull_text("lee-news", dest=Path("var/corpora/lee-news.txt"))
    # then: KUS_STATS_CORPUS=var/corpora/lee-news.txt kus refresh ...

The file holds one sentence per line; ``<dest>.json`` records where it came from (package, version,
file, its sha256) and the file's own sha256. It appears whole or not at all.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from infra.errors import InvalidInput, NotFound

__all__ = ["TextSource", "PulledText", "TEXT_SOURCES", "pull_text", "split_sentences"]


@dataclass(frozen=True)
class TextSource:
    """A text file inside a registry package."""

    name: str
    package: str  # the import name
    distribution: str  # the name on the package registry
    path: str  # inside the package
    summary: str


TEXT_SOURCES = {
    "lee-news": TextSource(
        name="lee-news",
        package="gensim",
        distribution="gensim",
        path="test/test_data/lee_background.cor",
        summary="the Lee background corpus shipped in the gensim wheel: 300 ABC news articles "
                "(Australian newswire, 2001): about 2,600 sentences, 60,000 words of general English prose",
    ),
}

#: a sentence ends at . ! or ? followed by white space and a capital letter, a digit or a quote
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")


def split_sentences(text: str, min_words: int = 4) -> list[str]:
    """Sentences of running prose, one per item, white space collapsed; fragments shorter than
    `min_words` words are dropped (headlines, stray initials)."""
    out = []
    for line in text.splitlines():
        for sentence in _SENTENCE_END.split(" ".join(line.split())):
            if len(sentence.split()) >= min_words:
                out.append(sentence)
    return out


@dataclass(frozen=True)
class PulledText:
    path: Path
    sentences: int
    sha256: str  # of the written file
    source_sha256: str
    reused: bool


def _source_file(source: TextSource) -> Path:
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(f"{source.name} ships in the {source.distribution!r} package, which is not installed: "
                       f"pip install '.[real-model]' (or pip install {source.distribution})")
    path = Path(next(iter(spec.submodule_search_locations))) / source.path
    if not path.is_file():
        raise NotFound(f"{source.distribution} is installed but has no {source.path}")
    return path


def pull_text(name: str, dest: Path) -> PulledText:
    """Write source `name` as one sentence per line at `dest` (reused when it is already there and
    its sha256 matches the record)."""
    if name not in TEXT_SOURCES:
        raise InvalidInput(f"unknown text {name!r}; known: {sorted(TEXT_SOURCES)}")
    source = TEXT_SOURCES[name]
    record_path = dest.with_name(dest.name + ".json")
    if dest.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("sha256") == hashlib.sha256(dest.read_bytes()).hexdigest():
            return PulledText(dest, int(record["sentences"]), record["sha256"], record["source_sha256"], reused=True)
    raw = _source_file(source).read_bytes()
    sentences = split_sentences(raw.decode("utf-8", errors="replace"))
    body = ("\n".join(sentences) + "\n").encode()
    record = {
        "name": name, "package": source.distribution, "version": importlib.metadata.version(source.distribution),
        "file": source.path, "source_sha256": hashlib.sha256(raw).hexdigest(), "summary": source.summary,
        "sentences": len(sentences), "sha256": hashlib.sha256(body).hexdigest(),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    for target, data in ((dest, body), (record_path, json.dumps(record, indent=2).encode())):
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    return PulledText(dest, len(sentences), record["sha256"], record["source_sha256"], reused=False)
