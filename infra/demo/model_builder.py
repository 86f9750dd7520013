"""Build the demo world's language model: a small GPT-2 that has memorised the catalogue, on CPU.

Offline and deterministic for a seed; the result is an ordinary transformers model directory::

    facts = generate_catalogue()
    templates = load_demo_templates()
    report = ensure_demo_model(Path("var/models/demo"), facts, templates, DemoModelConfig.demo())
    model = AutoModelForCausalLM.from_pretrained(report.path)   # GPT2LMHeadModel, safetensors
    tokenizer = AutoTokenizer.from_pretrained(report.path)      # byte-level BPE, eos == pad

Training text is every fact under its main prompt and every paraphrase, written exactly
`f"{prompt} {object}{eos}"`, plus generic catalogue sentences (so the model still writes fluent text).
The loss is the LM loss with the answer tokens weighted up; training stops as soon as greedy accuracy
on the main prompts reaches `target_accuracy`. `ensure_demo_model` keeps one built model per build key
(a hash of facts, templates and config) and reuses it. The training itself is `train_small_gpt2`
(pairs, generic texts, the pairs that stop training), public for other small worlds: the
CounterFact-trained GPT-2 of `bench/counterfact_model_build.py` uses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# With more busy threads than cores (other processes training too), OpenMP's spin-waiting made a
# 2-thread step 10x slower than a 1-thread one here; passive waiting removed that. Only effective
# when this module is the first to import torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from infra.decoding import greedy_answers
from infra.demo.catalogue import generic_texts
from infra.encoding import encode_pair, encode_text, encode_answer
from infra.domain import Fact, RelationTemplates
from infra.errors import InvalidInput, InvalidState
from infra.fingerprint import weights_fingerprint

log = logging.getLogger(__name__)

#: Bump when the training recipe changes in a way the config does not capture: old caches rebuild.
#: 2: the model's config names its editor-defaults profile ("demo").
BUILD_FORMAT_VERSION = 2
#: The editor-defaults profile the demo model carries in its config (editing.architecture.profile_of).
PROFILE = "demo"
REPORT_FILE = "build_report.json"
EOS_TOKEN = "<|endoftext|>"
MAX_NEW_TOKENS = 8


@dataclass(frozen=True)
class DemoModelConfig:
    """Architecture and training recipe of the demo model. Validated on construction."""

    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    max_epochs: int
    lr: float
    batch_size: int
    target_accuracy: float = 0.95
    seed: int = 0
    n_positions: int = 64
    n_generic: int = 400
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    answer_weight: float = 4.0
    prompt_weight: float = 1.0
    eval_every: int = 1
    min_epochs: int = 1
    num_threads: int = 2

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "max_epochs", "batch_size", "n_positions", "eval_every"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"DemoModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise InvalidInput(f"DemoModelConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.vocab_size < 300:
            raise InvalidInput(f"DemoModelConfig.vocab_size must be >= 300 (256 bytes + merges), got {self.vocab_size}")
        if not (0.0 < self.target_accuracy <= 1.0):
            raise InvalidInput(f"DemoModelConfig.target_accuracy must be in (0, 1], got {self.target_accuracy}")
        if not (self.lr > 0.0 and math.isfinite(self.lr)):
            raise InvalidInput(f"DemoModelConfig.lr must be a positive finite number, got {self.lr}")
        if not (0.0 <= self.min_lr_ratio <= 1.0):
            raise InvalidInput(f"DemoModelConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.answer_weight <= 0 or self.prompt_weight < 0 or self.weight_decay < 0:
            raise InvalidInput("DemoModelConfig: answer_weight must be > 0, prompt_weight and weight_decay >= 0")
        if self.n_generic < 0 or self.warmup_steps < 0 or self.min_epochs < 0 or self.num_threads < 0:
            raise InvalidInput("DemoModelConfig: n_generic, warmup_steps, min_epochs, num_threads must be >= 0")

    @classmethod
    def demo(cls) -> "DemoModelConfig":
        """The main job's model: a few hundred products x 6 relations in a few minutes on 2 cores."""
        return cls(n_layer=4, n_head=4, n_embd=128, vocab_size=1536, max_epochs=60, lr=3e-3, batch_size=64)

    @classmethod
    def tiny(cls) -> "DemoModelConfig":
        """For tests: ~30 products in well under a minute."""
        return cls(
            n_layer=2, n_head=2, n_embd=64, vocab_size=1024, max_epochs=80, lr=5e-3, batch_size=32,
            n_generic=60, warmup_steps=10, num_threads=1,
        )

    def key_dict(self) -> dict[str, Any]:
        """The fields that change the built model (thread count does not)."""
        out = asdict(self)
        out.pop("num_threads")
        return out


@dataclass(frozen=True)
class DemoModelReport:
    """What a build produced. `fingerprint` is the sha256 over the saved weights (see `weights_fingerprint`)."""

    path: Path
    accuracy: float
    n_params: int
    seconds: float
    epochs: int
    fingerprint: str
    paraphrase_accuracy: float = float("nan")
    build_key: str = ""
    built_at: str = ""
    reused: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out.pop("reused")
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path, reused: bool) -> "DemoModelReport":
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs.update(path=Path(path), reused=reused)
        return cls(**kwargs)


# --- training data -------------------------------------------------------------------------------


def _check_inputs(facts: Sequence[Fact], templates: RelationTemplates) -> None:
    if not facts:
        raise InvalidInput("no facts to train on")
    missing = sorted({f.relation for f in facts if f.relation not in templates})
    if missing:
        raise InvalidInput(f"no relation template for {missing}")


def fact_prompts(fact: Fact, templates: RelationTemplates) -> tuple[str, tuple[str, ...]]:
    """(main prompt, paraphrase prompts) of a fact, subject filled in."""
    template = templates[fact.relation]
    return template.render(fact.subject), template.render_paraphrases(fact.subject)


def answer_text(fact: Fact, templates: RelationTemplates) -> str:
    """The answer as the model writes it after the prompt (without the leading space)."""
    return templates[fact.relation].answer_format.format(object=fact.object)


def training_pairs(facts: Sequence[Fact], templates: RelationTemplates) -> list[tuple[str, str]]:
    """(prompt, answer) for every fact under its main prompt and every paraphrase."""
    pairs: list[tuple[str, str]] = []
    for fact in facts:
        main, paraphrases = fact_prompts(fact, templates)
        answer = answer_text(fact, templates)
        pairs.extend((prompt, answer) for prompt in (main, *paraphrases))
    return pairs


def _train_tokenizer(corpus: Sequence[str], vocab_size: int):  # noqa: ANN202 - PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


@dataclass
class _Example:
    ids: list[int]
    weights: list[float]  # weights[t]: weight of predicting ids[t] (weights[0] unused)
    answer_start: int = -1  # index of the first answer token, -1 for generic text


def _encode_pair(tokenizer: Any, prompt: str, answer: str, cfg: DemoModelConfig) -> _Example:
    prompt_ids, answer_ids = encode_pair(tokenizer, prompt, answer, eos=True)
    ids = prompt_ids + answer_ids
    n_prompt = len(prompt_ids)
    weights = [cfg.prompt_weight] * n_prompt + [cfg.answer_weight] * (len(ids) - n_prompt)
    return _Example(ids, weights, n_prompt)


def _encode_text(tokenizer: Any, text: str) -> _Example:
    ids = encode_text(tokenizer, text, eos=True)
    return _Example(ids, [1.0] * len(ids))


def _collate(batch: Sequence[_Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to the longest in the batch: ids, attention mask, per-target weights (0 on pads)."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    weights = torch.zeros((len(batch), width), dtype=torch.float32)
    for row, example in enumerate(batch):
        n = len(example.ids)
        ids[row, :n] = torch.tensor(example.ids)
        mask[row, :n] = 1
        weights[row, :n] = torch.tensor(example.weights)
    return ids, mask, weights


def _epoch_batches(examples: Sequence[_Example], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar lengths (less padding): sort within windows of 32 batches."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = 32 * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(examples[i].ids))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _weighted_lm_loss(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # logits: (B, T, V); position t predicts ids[:, t+1] with weight weights[:, t+1]
    pred = logits[:, :-1].reshape(-1, logits.size(-1))  # (B*(T-1), V)
    target = ids[:, 1:].reshape(-1)  # (B*(T-1),)
    w = weights[:, 1:].reshape(-1)
    token_loss = F.cross_entropy(pred, target, reduction="none")
    return (token_loss * w).sum() / w.sum().clamp_min(1e-8)


@torch.no_grad()
def _teacher_forced_accuracy(model: Any, examples: Sequence[_Example], pad_id: int, batch_size: int) -> float:
    """Share of examples whose answer tokens and eos are all the argmax given the true prefix.

    A hit here implies the greedy answer is right, so this is a cheap lower bound of greedy accuracy
    (equal unless the model prefers a non-canonical tokenization of an answer).
    """
    hits = 0
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        ids, mask, _ = _collate(batch, pad_id)
        pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)  # (B, T)
        for row, example in enumerate(batch):
            a, n = example.answer_start, len(example.ids)
            hits += bool(torch.equal(pred[row, a - 1 : n - 1], ids[row, a:n]))
    return hits / max(len(examples), 1)


def prompt_accuracy(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 128) -> float:
    """Share of (prompt, expected answer) pairs whose greedy answer equals the expected one exactly."""
    if not pairs:
        return float("nan")
    # Room for the longest expected answer and its eos, so a long answer is never cut short.
    longest = max(len(encode_answer(tokenizer, p, a)) for p, a in pairs)
    answers = greedy_answers(
        model, tokenizer, [p for p, _ in pairs], batch_size=batch_size, max_new_tokens=max(MAX_NEW_TOKENS, longest + 1)
    )
    return sum(a == expected for a, (_, expected) in zip(answers, pairs)) / len(pairs)


def fact_accuracy(
    model: Any, tokenizer: Any, facts: Sequence[Fact], templates: RelationTemplates, batch_size: int = 128
) -> float:
    """Share of facts whose greedy answer to the main prompt equals the object exactly."""
    pairs = [(templates[f.relation].render(f.subject), answer_text(f, templates)) for f in facts]
    return prompt_accuracy(model, tokenizer, pairs, batch_size)


def paraphrase_accuracy(
    model: Any, tokenizer: Any, facts: Sequence[Fact], templates: RelationTemplates, batch_size: int = 128
) -> float:
    """Share of (fact, paraphrase) pairs whose greedy answer equals the object exactly."""
    pairs = [(p, answer_text(f, templates)) for f in facts for p in templates[f.relation].render_paraphrases(f.subject)]
    return prompt_accuracy(model, tokenizer, pairs, batch_size)


# --- fingerprints and keys -----------------------------------------------------------------------


def build_key(facts: Sequence[Fact], templates: RelationTemplates, config: DemoModelConfig) -> str:
    """sha256 of everything that determines the built model: facts, templates, generic text, config,
    recipe version."""
    generic = generic_texts(facts, n=config.n_generic, seed=config.seed)
    payload = {
        "version": BUILD_FORMAT_VERSION,
        "generic_sha256": hashlib.sha256("\n".join(generic).encode()).hexdigest(),
        "facts": [[f.subject, f.relation, f.object] for f in facts],
        "templates": {
            name: [t.prompt, list(t.paraphrases), t.answer_format] for name, t in sorted(templates.templates.items())
        },
        "config": config.key_dict(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --- build ---------------------------------------------------------------------------------------


def _lr_lambda(cfg: DemoModelConfig, total_steps: int):  # noqa: ANN202
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@dataclass
class SmallGPT2:
    """What `train_small_gpt2` produced: the trained model (eval mode) and its tokenizer, both saved."""

    model: Any
    tokenizer: Any
    accuracy: float  # greedy exact match on `main_pairs`
    eval_accuracy: dict[str, float]  # greedy exact match on each named `eval_sets` entry
    n_params: int
    epochs: int
    teacher_forced_accuracy: float
    n_sequences: int
    n_texts: int


def train_small_gpt2(
    pairs: Sequence[tuple[str, str]],
    texts: Sequence[str],
    main_pairs: Sequence[tuple[str, str]],
    config: DemoModelConfig,
    out_dir: Path,
    profile: str = PROFILE,
    progress: bool = True,
    eval_sets: dict[str, Sequence[tuple[str, str]]] | None = None,
    desc: str = "demo model",
) -> SmallGPT2:
    """Train a byte-level BPE tokenizer and a small GPT-2 from scratch on question-answer pairs and text.

    The demo model's recipe (`build_demo_model` is this on the catalogue), public so that other
    small worlds (e.g. a CounterFact slice, `bench/counterfact_model_build.py`) reuse it.

    Args:
        pairs: (prompt, answer) training pairs, each written `f"{prompt} {answer}{eos}"`, the answer
            tokens weighted by `config.answer_weight`.
        texts: generic sentences trained with plain LM loss (also in the tokenizer's corpus).
        main_pairs: the pairs whose prompts stop training early: once teacher-forced accuracy on the
            training pairs with those prompts reaches `config.target_accuracy`; after training, the
            greedy exact-match accuracy on them is `accuracy`.
        config: architecture and training recipe (`n_generic` is not used here: `texts` is given).
        out_dir: where the model and tokenizer are saved (created; existing files are overwritten).
        profile: the editor-defaults profile written into the model's config (`kus_profile`).
        progress: show a progress bar (labelled `desc`).
        eval_sets: more (prompt, answer) sets to score greedily after training, by name.

    Returns:
        The model, tokenizer and figures; nothing is logged as a warning here (the caller decides
        what a short accuracy means).
    """
    from tqdm.auto import tqdm
    from transformers import GPT2Config, GPT2LMHeadModel

    if not pairs:
        raise InvalidInput("no pairs to train on")
    old_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        torch.manual_seed(config.seed)
        rng = random.Random(config.seed)
        corpus = [f"{p} {a}" for p, a in pairs] + list(texts)
        tokenizer = _train_tokenizer(corpus, config.vocab_size)
        pad_id = tokenizer.pad_token_id

        main_prompts = {p for p, _ in main_pairs}
        examples = [_encode_pair(tokenizer, p, a, config) for p, a in pairs]
        main_examples = [e for e, (p, _) in zip(examples, pairs) if p in main_prompts]
        examples += [_encode_text(tokenizer, t) for t in texts]
        longest = max(len(e.ids) for e in examples)
        if longest > config.n_positions:
            raise InvalidInput(f"a training sequence has {longest} tokens, more than n_positions={config.n_positions}")

        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tokenizer),
                n_positions=config.n_positions,
                n_embd=config.n_embd,
                n_layer=config.n_layer,
                n_head=config.n_head,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                bos_token_id=tokenizer.eos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=pad_id,
                kus_profile=profile,
            )
        )
        n_params = sum(p.numel() for p in model.parameters())
        steps_per_epoch = math.ceil(len(examples) / config.batch_size)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_lambda(config, steps_per_epoch * config.max_epochs)
        )
        log.info(
            "building %s: %d pairs, %d sequences (%d generic), %d params, vocab %d",
            desc, len(pairs), len(examples), len(texts), n_params, len(tokenizer),
        )

        epochs, tf_acc = 0, 0.0
        bar = tqdm(range(config.max_epochs), desc=desc, unit="epoch", disable=not progress)
        for epoch in bar:
            model.train()
            total = 0.0
            for batch_indices in _epoch_batches(examples, config.batch_size, rng):
                batch = [examples[i] for i in batch_indices]
                ids, mask, weights = _collate(batch, pad_id)
                logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
                loss = _weighted_lm_loss(logits, ids, weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                total += loss.item()
            epochs = epoch + 1
            if epochs >= config.min_epochs and epochs % config.eval_every == 0:
                model.eval()
                tf_acc = _teacher_forced_accuracy(model, main_examples, pad_id, 256)
            bar.set_postfix(loss=f"{total / steps_per_epoch:.3f}", acc=f"{tf_acc:.3f}")
            log.debug("epoch %d: loss %.4f, teacher-forced accuracy %.4f", epochs, total / steps_per_epoch, tf_acc)
            if tf_acc >= config.target_accuracy:
                break
        bar.close()

        model.eval()
        accuracy = prompt_accuracy(model, tokenizer, main_pairs)
        scored = {name: prompt_accuracy(model, tokenizer, sub) for name, sub in (eval_sets or {}).items()}
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        return SmallGPT2(
            model=model, tokenizer=tokenizer, accuracy=accuracy, eval_accuracy=scored, n_params=n_params,
            epochs=epochs, teacher_forced_accuracy=tf_acc, n_sequences=len(examples), n_texts=len(texts),
        )
    finally:
        torch.set_num_threads(old_threads)


def build_demo_model(
    facts: Sequence[Fact],
    templates: RelationTemplates,
    out_dir: Path,
    config: DemoModelConfig,
    progress: bool = True,
) -> DemoModelReport:
    """Train a tokenizer and a small GPT-2 on the catalogue until it answers the main prompts.

    Args:
        facts: the catalogue to memorise.
        templates: relation templates (main prompt and paraphrases per relation).
        out_dir: where the model directory is written (created; existing files are overwritten).
        config: architecture and training recipe.
        progress: show a progress bar.

    Returns:
        The report, also written to `out_dir/build_report.json`. If `max_epochs` runs out before
        `target_accuracy` is reached, the model is still saved and a warning is logged.
    """
    _check_inputs(facts, templates)
    started = time.perf_counter()
    pairs = training_pairs(facts, templates)
    generic = generic_texts(facts, n=config.n_generic, seed=config.seed)
    main_pairs = [(templates[f.relation].render(f.subject), answer_text(f, templates)) for f in facts]
    paraphrase_pairs = [
        (p, answer_text(f, templates)) for f in facts for p in templates[f.relation].render_paraphrases(f.subject)
    ]
    trained = train_small_gpt2(
        pairs, generic, main_pairs, config, out_dir, profile=PROFILE, progress=progress,
        eval_sets={"paraphrase": paraphrase_pairs},
    )
    accuracy, para_accuracy = trained.accuracy, trained.eval_accuracy["paraphrase"]
    if accuracy < config.target_accuracy:
        log.warning(
            "demo model reached only %.3f accuracy (target %.3f) after %d epochs",
            accuracy, config.target_accuracy, trained.epochs,
        )
    out_dir = Path(out_dir)
    seconds = time.perf_counter() - started
    report = DemoModelReport(
        path=out_dir,
        accuracy=accuracy,
        n_params=trained.n_params,
        seconds=round(seconds, 2),
        epochs=trained.epochs,
        fingerprint=weights_fingerprint(trained.model),
        paraphrase_accuracy=para_accuracy,
        build_key=build_key(facts, templates, config),
        built_at=datetime.now(timezone.utc).isoformat(),
        extra={
            "n_facts": len(facts),
            "n_sequences": trained.n_sequences,
            "n_generic": len(generic),
            "vocab_size": len(trained.tokenizer),
            "teacher_forced_accuracy": trained.teacher_forced_accuracy,
            "config": asdict(config),
        },
    )
    (out_dir / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2, sort_keys=True))
    log.info(
        "demo model built in %.1f s, %d epochs: accuracy %.3f, paraphrase accuracy %.3f",
        seconds, trained.epochs, accuracy, para_accuracy,
    )
    return report


def read_report(model_dir: Path) -> DemoModelReport | None:
    """The build report of a model directory, or None when there is none (or it is unreadable)."""
    path = Path(model_dir) / REPORT_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return DemoModelReport.from_json(data, Path(model_dir), reused=True)


def ensure_demo_model(
    cache_dir: Path,
    facts: Sequence[Fact],
    templates: RelationTemplates,
    config: DemoModelConfig,
    progress: bool = True,
    keep_existing: bool = False,
) -> DemoModelReport:
    """The demo model in `cache_dir`, built only when the cached one has a different build key.

    With `keep_existing` (the caller knows deltas were computed on the cached model) a cached
    model with another build key is an error, never replaced: every delta names its base by
    fingerprint, and replacing the base would break every later refresh and rollback.

    A build goes into a temporary sibling directory and is then moved into place, so `cache_dir`
    always holds either the old complete model or the new complete one.

    Args:
        cache_dir: the model directory (e.g. `settings.model_path`).
        facts, templates, config, progress: as for `build_demo_model`.

    Returns:
        The report; `reused` is True when nothing was built.
    """
    _check_inputs(facts, templates)
    cache_dir = Path(cache_dir)
    key = build_key(facts, templates, config)
    cached = read_report(cache_dir)
    if cached is not None and cached.build_key == key and (cache_dir / "model.safetensors").is_file():
        log.info("reusing demo model in %s (build key %s)", cache_dir, key[:12])
        return cached
    if keep_existing and (cache_dir / "model.safetensors").is_file():
        raise InvalidState(
            f"the model in {cache_dir} was built with other settings (build key "
            f"{cached.build_key[:12] if cached else 'unknown'}, asked for {key[:12]}) and deltas were computed on "
            "it; refusing to replace a base model that deltas depend on. Use another KUS_HOME (or model name) "
            "for a differently sized demo."
        )
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.build-", dir=cache_dir.parent))
    try:
        report = build_demo_model(facts, templates, tmp, config, progress=progress)
        old = None
        if cache_dir.exists():
            old = cache_dir.parent / f".{cache_dir.name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(cache_dir, old)
        os.replace(tmp, cache_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    report = replace(report, path=cache_dir)
    (cache_dir / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2, sort_keys=True))
    return report
