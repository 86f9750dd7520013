"""The demo world: catalogue, templates, change batches, and the memorising demo model (tiny config)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from infra.demo.catalogue import (
    MANUFACTURERS,
    RELATIONS,
    demo_templates_path,
    generate_catalogue,
    generic_texts,
    heldout_texts,
    load_demo_templates,
)
from infra.demo.changes import apply_changes, next_change_batch
from infra.domain import Fact
from infra.errors import InvalidInput

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_PRODUCTS = 30


# --- catalogue -----------------------------------------------------------------------------------


def test_catalogue_size_relations_and_determinism() -> None:
    facts = generate_catalogue(200, seed=0)
    subjects = {f.subject for f in facts}
    assert len(subjects) == 200
    assert len(facts) == 200 * len(RELATIONS) and len(RELATIONS) >= 5
    per_subject = Counter(f.subject for f in facts)
    assert set(per_subject.values()) == {len(RELATIONS)}
    assert {f.relation for f in facts} == set(RELATIONS)
    assert generate_catalogue(200, seed=0) == facts
    assert generate_catalogue(200, seed=1) != facts
    # Short objects, prices like "$149", warranties like "2 years".
    assert all(1 <= len(f.object.split()) <= 3 for f in facts)
    assert all(f.object.startswith("$") and f.object[1:].isdigit() for f in facts if f.relation == "price")
    assert all(f.object.split()[1] in {"months", "year", "years"} for f in facts if f.relation == "warranty")
    # Every relation has more than one value, so memorising is needed.
    for relation in RELATIONS:
        assert len({f.object for f in facts if f.relation == relation}) >= 5


def test_product_names_never_contain_a_manufacturer_name() -> None:
    facts = generate_catalogue(500, seed=3)
    maker_words = {w for m in MANUFACTURERS for w in m.split() if w != "&"}
    for subject in {f.subject for f in facts}:
        assert not maker_words & set(subject.split()), subject


def test_catalogue_rejects_silly_sizes() -> None:
    with pytest.raises(InvalidInput):
        generate_catalogue(0)


def test_heldout_texts_are_generic_and_never_in_training() -> None:
    facts = generate_catalogue(200)
    heldout = heldout_texts(facts, n=64)
    train = generic_texts(facts, n=400)
    assert len(heldout) == 64 and len(set(heldout)) == 64
    assert len(train) == 400
    assert not set(heldout) & set(train)
    assert not set(heldout) & set(generic_texts(facts, n=400, seed=7))
    assert heldout == heldout_texts(facts, n=64)
    subjects = {f.subject for f in facts}
    assert not any(s in text for s in subjects for text in heldout)


# --- templates -----------------------------------------------------------------------------------


def test_templates_file_has_paraphrases_with_subject() -> None:
    path = demo_templates_path()
    assert path.is_file() and path.suffix == ".yaml"
    templates = load_demo_templates()
    assert set(templates.relations()) == set(RELATIONS)
    for relation in templates.relations():
        template = templates[relation]
        assert len(template.paraphrases) >= 3
        for text in (template.prompt, *template.paraphrases):
            assert "{subject}" in text and text == text.rstrip()


def test_demo_templates_load_through_the_project_loader() -> None:
    from infra.fact_import import load_templates

    assert load_templates(demo_templates_path()) == load_demo_templates()


# --- change batches ------------------------------------------------------------------------------


def _index(facts: list[Fact]) -> dict[tuple[str, str], str]:
    return {(f.subject, f.relation): f.object for f in facts}


def test_change_batch_changes_prices_warranties_and_renames_one_manufacturer() -> None:
    facts = generate_catalogue(200)
    current = _index(facts)
    batch = next_change_batch(facts, batch_no=1)
    assert all(f.source == "demo-erp" for f in batch)
    assert all((f.subject, f.relation) in current for f in batch)
    assert all(current[(f.subject, f.relation)] != f.object for f in batch), "every change is a real change"
    assert len({(f.subject, f.relation) for f in batch}) == len(batch)
    by_rel = Counter(f.relation for f in batch)
    assert 10 <= by_rel["price"] <= 20
    assert 1 <= by_rel["warranty"] <= 6
    renames = [f for f in batch if f.relation == "manufacturer"]
    new_names = {f.object for f in renames}
    assert len(new_names) == 1
    old_names = {current[(f.subject, "manufacturer")] for f in renames}
    assert len(old_names) == 1
    (old_name,) = old_names
    all_of_old = {s for (s, r), o in current.items() if r == "manufacturer" and o == old_name}
    assert {f.subject for f in renames} == all_of_old
    assert new_names.isdisjoint(current[k] for k in current if k[1] == "manufacturer")
    assert all(f.object.startswith("$") for f in batch if f.relation == "price")
    assert next_change_batch(facts, batch_no=1) == batch


def test_chained_batches_keep_producing_real_changes() -> None:
    facts = generate_catalogue(200)
    previous: list[Fact] = []
    for batch_no in range(1, 6):
        batch = next_change_batch(facts, batch_no=batch_no)
        assert batch != previous
        current = _index(facts)
        assert batch and all(current[(f.subject, f.relation)] != f.object for f in batch)
        facts = apply_changes(facts, batch)
        assert len(facts) == 200 * len(RELATIONS)
        previous = batch
    makers = {f.object for f in facts if f.relation == "manufacturer"}
    assert len(makers) == len(MANUFACTURERS)  # renames, never merges


# --- demo model (tiny) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_build(tiny_world):  # noqa: ANN001, ANN201
    """The session's shared tiny build (tests/conftest.py), so the suite trains it only once."""
    _facts, _templates, report = tiny_world
    return report.path, report


def test_tiny_build_memorises_the_catalogue(tiny_build, tiny_world) -> None:  # noqa: ANN001
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

    from infra.demo.model_builder import fact_accuracy, paraphrase_accuracy

    cache, report = tiny_build
    facts, templates, _report = tiny_world
    assert report.path == cache and not report.reused
    assert report.epochs >= 1 and report.n_params > 0 and report.seconds > 0
    model = AutoModelForCausalLM.from_pretrained(cache, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(cache, local_files_only=True)
    assert isinstance(model, GPT2LMHeadModel)
    assert (cache / "model.safetensors").is_file()
    assert tokenizer.eos_token is not None and tokenizer.pad_token is not None
    model.eval()
    accuracy = fact_accuracy(model, tokenizer, facts, templates)
    assert accuracy >= 0.95
    assert accuracy == pytest.approx(report.accuracy)
    assert paraphrase_accuracy(model, tokenizer, facts, templates) >= 0.8


def test_tiny_build_report_and_fingerprint(tiny_build) -> None:  # noqa: ANN001
    from transformers import AutoModelForCausalLM

    from infra.fingerprint import weights_fingerprint

    cache, report = tiny_build
    data = json.loads((cache / "build_report.json").read_text())
    assert data["build_key"] == report.build_key and data["accuracy"] == report.accuracy
    model = AutoModelForCausalLM.from_pretrained(cache, local_files_only=True)
    assert weights_fingerprint(model) == report.fingerprint
    try:
        from editing.model_io import weights_fingerprint as editing_fingerprint
    except ImportError:
        return
    assert editing_fingerprint(model) == report.fingerprint


def test_ensure_demo_model_reuses_the_cache(tiny_build, tiny_world) -> None:  # noqa: ANN001
    from infra.demo.model_builder import DemoModelConfig, build_key, ensure_demo_model

    cache, first = tiny_build
    facts, templates, _report = tiny_world
    weights = cache / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    second = ensure_demo_model(cache, facts, templates, DemoModelConfig.tiny(), progress=False)
    assert second.reused
    assert weights.stat().st_mtime_ns == stamp
    assert (second.built_at, second.seconds, second.fingerprint) == (first.built_at, first.seconds, first.fingerprint)
    # A different catalogue is a different build key (so it would rebuild).
    changed = apply_changes(facts, next_change_batch(facts, batch_no=1))
    assert build_key(changed, templates, DemoModelConfig.tiny()) != first.build_key
    assert sorted(p.name for p in cache.parent.iterdir()) == ["demo"], "no temporary build directory left"


def test_demo_config_validates() -> None:
    from infra.demo.model_builder import DemoModelConfig

    with pytest.raises(InvalidInput):
        DemoModelConfig(n_layer=2, n_head=3, n_embd=64, vocab_size=512, max_epochs=1, lr=1e-3, batch_size=8)
    with pytest.raises(InvalidInput):
        DemoModelConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=512, max_epochs=1, lr=-1.0, batch_size=8)
    assert DemoModelConfig.demo().n_embd >= DemoModelConfig.tiny().n_embd


def test_missing_template_is_refused(tmp_path: Path, tiny_world) -> None:  # noqa: ANN001
    from infra.demo.model_builder import DemoModelConfig, build_demo_model

    facts, templates, _report = tiny_world
    odd = [*facts, Fact(facts[0].subject, "voltage", "230 V")]
    with pytest.raises(InvalidInput):
        build_demo_model(odd, templates, tmp_path / "m", DemoModelConfig.tiny(), progress=False)


def test_a_base_model_that_deltas_depend_on_is_never_replaced(tiny_world, tmp_path: Path) -> None:
    """`kus demo --size X` over a home whose model has deltas must not swap the base under them."""
    import dataclasses
    import shutil

    from infra.demo.model_builder import DemoModelConfig, ensure_demo_model
    from infra.errors import InvalidState

    facts, templates, report = tiny_world
    model_dir = tmp_path / "models" / "demo"
    shutil.copytree(report.path, model_dir)
    before = (model_dir / "model.safetensors").read_bytes()
    other = dataclasses.replace(DemoModelConfig.tiny(), seed=7)  # another build key
    with pytest.raises(InvalidState, match="refusing to replace"):
        ensure_demo_model(model_dir, facts, templates, other, progress=False, keep_existing=True)
    assert (model_dir / "model.safetensors").read_bytes() == before
    # the same build key is simply reused
    assert ensure_demo_model(model_dir, facts, templates, DemoModelConfig.tiny(), progress=False,
                             keep_existing=True).reused
