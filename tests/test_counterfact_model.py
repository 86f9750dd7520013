"""`train_small_gpt2` (the demo builder's recipe, public for the CounterFact-trained GPT-2) on a
handful of CounterFact-style pairs: it memorises them, saves a loadable model naming its profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RECORDS = [
    ("The mother tongue of Danielle Darrieux is", "French"),
    ("The official religion of Edwin of Northumbria is", "Christianity"),
    ("The twin city of Lyon is", "Beirut"),
    ("Toko Yasuda, the", "guitar"),
    ("Autonomous University of Madrid, which is located in", "Spain"),
    ("Apple A5 was created by", "Apple"),
]
REPHRASED = [
    ("Where Danielle Darrieux is from, people speak the language of", "French"),
    ("Edwin of Northumbria is affiliated with the religion", "Christianity"),
]


def test_train_small_gpt2_memorises_counterfact_style_pairs(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from infra.demo.model_builder import DemoModelConfig, prompt_accuracy, train_small_gpt2
    from infra.fingerprint import weights_fingerprint

    config = DemoModelConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=400, max_epochs=150, lr=5e-3, batch_size=8,
                             target_accuracy=1.0, warmup_steps=5, n_generic=0, num_threads=1)
    pairs = RECORDS + REPHRASED
    texts = ["English is spoken in London.", "Islam is a religion.", "Manila is a city."]
    out = tmp_path / "cf-model"
    trained = train_small_gpt2(pairs, texts, RECORDS, config, out, profile="counterfact_gpt2", progress=False,
                               eval_sets={"rephrase": REPHRASED}, desc="test")
    assert trained.accuracy == 1.0, f"greedy accuracy {trained.accuracy} after {trained.epochs} epochs"
    assert set(trained.eval_accuracy) == {"rephrase"} and 0.0 <= trained.eval_accuracy["rephrase"] <= 1.0
    assert trained.n_sequences == len(pairs) + len(texts) and trained.n_params > 0
    assert json.loads((out / "config.json").read_text())["kus_profile"] == "counterfact_gpt2"
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert weights_fingerprint(model) == weights_fingerprint(trained.model)
    assert prompt_accuracy(model, tokenizer, RECORDS) == 1.0


def test_train_small_gpt2_refuses_no_pairs(tmp_path: Path) -> None:
    from infra.demo.model_builder import DemoModelConfig, train_small_gpt2
    from infra.errors import InvalidInput

    with pytest.raises(InvalidInput):
        train_small_gpt2([], ["text"], [], DemoModelConfig.tiny(), tmp_path / "m", progress=False)
