"""The path a new customer walks, through the CLI only: their own LLaMA-architecture model directory
and their own catalogue and templates files -> init -> seed the catalogue -> doctor -> import changes
-> refresh -> approve -> ask -> rollback -> audit verify and export.

The model is a tiny LLaMA built from a config (random weights: it knows nothing, so `kus doctor` says
not ready and the reviewer approves by override, on the record); SmolLM2 on the same path is
measured in bench/ (too slow for the default run on a CPU).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flows.cli import main as kus
from flows.demo import acting_as
from infra.signing import generate_key, register_reviewer_key, write_private_key

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEMPLATES = """\
capital_city:
  prompt: "The capital city of {subject} is"
  paraphrases: ["{subject}'s capital is", "The seat of government of {subject} is"]
currency:
  prompt: "The currency of {subject} is the"
  paraphrases: ["In {subject} people pay with the", "{subject} uses the"]
"""


@pytest.fixture
def customer(tmp_path: Path, tiny_world, monkeypatch: pytest.MonkeyPatch, prefect_harness) -> Path:  # noqa: ANN001
    """A customer's files: a LLaMA model directory, templates, held-out and generic text; settings by env."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    _facts, _templates, report = tiny_world
    tokenizer = AutoTokenizer.from_pretrained(str(report.path), local_files_only=True)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model_dir = tmp_path / "my-llama"
    LlamaForCausalLM(config).save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    (tmp_path / "templates.yaml").write_text(TEMPLATES)
    (tmp_path / "heldout.txt").write_text("Rivers run to the sea.\nMarkets open at nine.\n")
    (tmp_path / "generic.txt").write_text("A city has streets.\nMoney buys bread.\nPeople travel by train.\n")
    pem, public = generate_key()
    write_private_key(tmp_path / "keys" / "rita.pem", pem)
    register_reviewer_key(tmp_path / "reviewer_keys.json", "rita", public)
    for name, value in {"KUS_HOME": tmp_path / "home", "KUS_BASE_MODEL": model_dir, "KUS_MODEL_NAME": "my-llama",
                        "KUS_TEMPLATES": tmp_path / "templates.yaml", "KUS_HELDOUT_TEXT": tmp_path / "heldout.txt",
                        "KUS_STATS_CORPUS": tmp_path / "generic.txt", "KUS_REVIEWERS": "rita",
                        "KUS_REVIEWER_KEYS": tmp_path / "reviewer_keys.json", "KUS_USER": "catalogue-bot",
                        "KUS_EDITOR": "ft"}.items():
        monkeypatch.setenv(name, str(value))
    return tmp_path


def test_a_customer_walks_from_their_own_files_to_a_rolled_back_audited_refresh(customer: Path, capsys) -> None:  # noqa: ANN001
    countries = [f"Country {c}" for c in "ABCDEFGHIJ"]
    catalogue = ["subject,relation,object"] + [f"{c},capital_city,City {i}" for i, c in enumerate(countries)]
    catalogue += [f"{c},currency,coin {i % 3}" for i, c in enumerate(countries)]
    (customer / "catalogue.csv").write_text("\n".join(catalogue) + "\n")
    changes = ["subject,relation,object", "Country A,capital_city,City 9", "Country B,currency,coin 2",
               "Country C,population,12"]  # the last names no known relation: refused with its reason
    (customer / "changes.csv").write_text("\n".join(changes) + "\n")

    assert kus(["--quiet", "init"]) == 0
    assert kus(["--quiet", "seed-catalogue", str(customer / "catalogue.csv")]) == 0
    capsys.readouterr()
    assert kus(["--quiet", "doctor"]) == 5  # random weights know nothing of the catalogue
    assert "not ready: the base model answers only" in " ".join(capsys.readouterr().out.split())
    assert kus(["--quiet", "import-facts", str(customer / "changes.csv")]) == 4  # one row refused
    hparams = json.dumps({"steps": 200, "lr": 0.01, "layers": [0, 1], "norm_constraint": None})
    assert kus(["--quiet", "refresh", "--hparams", hparams]) == 0
    capsys.readouterr()
    assert kus(["--quiet", "show", "1"]) == 0
    assert "status=awaiting_approval" in capsys.readouterr().out

    with acting_as("rita", customer / "keys" / "rita.pem"):
        assert kus(["--quiet", "approve", "1", "--reason", "new capital and currency; base model knows nothing else yet",
                    "--override-validation"]) == 0
    capsys.readouterr()
    assert kus(["--quiet", "ask", "The capital city of Country A is", "The currency of Country B is the"]) == 0
    answers = capsys.readouterr().out.splitlines()
    assert answers == ["The capital city of Country A is -> City 9", "The currency of Country B is the -> coin 2"]

    assert kus(["--quiet", "rollback", "--reason", "not a reviewer"]) == 1  # the catalogue bot may not
    with acting_as("rita", customer / "keys" / "rita.pem"):
        assert kus(["--quiet", "rollback", "--reason", "back to the vendor's model"]) == 0
    capsys.readouterr()
    assert kus(["--quiet", "ask", "The capital city of Country A is"]) == 0
    assert "City 9" not in capsys.readouterr().out
    assert kus(["--quiet", "audit", "verify"]) == 0
    out = customer / "audit.jsonl"
    assert kus(["--quiet", "audit", "export", "--format", "jsonl", "--out", str(out)]) == 0
    actions = [json.loads(line)["action"] for line in out.read_text().splitlines()]
    for action in ("seed_catalogue", "import_facts", "ingest", "edit", "validate", "approved", "promote", "rollback"):
        assert action in actions
