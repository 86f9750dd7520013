"""The demo world the locate-and-edit benchmarks share: counterfactual edits, the model, scoring.

`world` draws CounterFact-style edits from the demo catalogue (a fact's object replaced by another
valid object of its relation) and keeps 30 products out of every edit (the unrelated set);
`demo_model` loads (or builds) the demo model; `statistics_corpus` is the text the key statistics
are computed from; `edit_applied` edits, applies, and restores the model on leaving.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from editing.delta import Delta
from editing.model_io import load_model, weights_fingerprint
from editing.protocol import EditContext, EditResult
from editing.registry import get_editor
from infra.demo import generate_catalogue, generic_texts, load_demo_templates
from infra.demo.model_builder import DemoModelConfig, ensure_demo_model
from infra.domain import EditRequest, Fact
from validation.scoring import answer_nll, greedy_answers

LABELS = {"ft": "FT-L", "memit": "MEMIT", "alphaedit": "AlphaEdit", "prune": "PRUNE(MEMIT)", "rome": "ROME"}


def world(n_edits: int, seed: int = 0):
    """(facts, templates, edit requests, unrelated (prompt, answer) pairs) of the 200-product catalogue."""
    facts = generate_catalogue(n_products=200)
    templates = load_demo_templates()
    rng = random.Random(seed)
    subjects = sorted({f.subject for f in facts})
    reserved = set(rng.sample(subjects, 30))  # products never edited: the unrelated set
    editable = [f for f in facts if f.subject not in reserved]
    objects: dict[str, list[str]] = {}
    for f in facts:
        objects.setdefault(f.relation, [])
        if f.object not in objects[f.relation]:
            objects[f.relation].append(f.object)
    chosen = rng.sample(editable, min(n_edits, len(editable)))
    requests = []
    for f in chosen:
        t = templates[f.relation]
        new = rng.choice(sorted(set(objects[f.relation]) - {f.object}))
        requests.append(EditRequest(f.subject, f.relation, t.render(f.subject), new, f.object, t.render_paraphrases(f.subject)))
    unrelated = [(templates[f.relation].render(f.subject), f.object) for f in facts if f.subject in reserved]
    return facts, templates, requests, unrelated


def demo_model(model_dir: Path, facts: Sequence[Fact], templates: Any):
    """(model, tokenizer, weights fingerprint) of the demo model, built on first use."""
    report = ensure_demo_model(model_dir, facts, templates, DemoModelConfig.demo(), progress=False)
    model, tok = load_model(Path(report.path))
    return model, tok, weights_fingerprint(model)


def statistics_corpus(facts: Sequence[Fact], templates: Any) -> tuple[str, ...]:
    """Generic catalogue sentences, then every catalogue fact as a sentence."""
    return tuple(generic_texts(facts, n=400)) + tuple(f"{templates[f.relation].render(f.subject)} {f.object}" for f in facts)


def es(model, tok, prompts, new, old) -> float:
    """CounterFact efficacy score: share of prompts where P(new) > P(old) (teacher-forced)."""
    if not prompts:
        return math.nan
    a = answer_nll(model, tok, prompts, new)
    b = answer_nll(model, tok, prompts, old)
    return float((a < b).float().mean())


def exact(model, tok, prompts, answers) -> float:
    """Share of prompts whose greedy answer is the given one."""
    if not prompts:
        return math.nan
    got = greedy_answers(model, tok, prompts)
    return sum(g == a for g, a in zip(got, answers)) / len(prompts)


@contextmanager
def edit_applied(editor: str, hp: Any, model, tok, requests: Sequence[EditRequest], context: EditContext) -> Iterator[EditResult]:
    """Compute the edit, apply it for the `with` block, and revert it after (bit for bit)."""
    result = get_editor(editor).compute(model, tok, requests, hp, context)
    delta = Delta.create(dict(result.tensors), editor=editor, hparams={}, base_fingerprint=context.model_fingerprint or "",
                         parent=None, facts=[], model=model)
    applied = delta.apply(model)
    try:
        yield result
    finally:
        applied.revert()
