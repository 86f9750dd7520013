"""Hyperparameters of SAUL, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from editing.lora.hparams import validate_lora_fields
from infra.errors import InvalidInput

TUNINGS = ("full", "lora")
AUGMENT_LOSSES = ("full", "answer")
REG_LOSSES = ("ce", "kl")


@dataclass(frozen=True)
class SAULHParams:
    """SAUL (methods.md 4.1): fine-tuning on edit sentences concatenated with random true facts.

    Each step, every edit sentence `prompt + " " + target_new + eos` is followed by `concat_facts`
    facts drawn afresh from the context's fact pool, each written the same way (the end-of-text token
    is the sentence boundary, as the model learned facts; a space-joined variant would teach the model
    not to stop after the new object, which our greedy answers rely on), and `augment_ratio` x N further pool facts are added as
    standalone examples. Loss = CE(edit answer tokens) + `reg_weight` x CE(appended and augmented
    fact tokens; the whole sentence with `augment_loss="full"`, only the answer with "answer").
    Early stopping watches the edit-token loss only, and never fires before `min_steps` steps (our
    addition): with a few easy targets the edit loss falls below `early_stop_loss` within a handful of
    Adam's largest steps, before the regulariser could act (on the 50-refresh demo series, every
    refresh that stopped that early overwrote 13-26% of earlier changed facts and was rejected).

    `tuning="full"` trains the weights of `layers` x `modules` densely (ΔW dense); `tuning="lora"`
    trains LoRA adapters of rank `r` on them (ΔW = u @ v). With `concat_facts=0` and
    `augment_ratio=0` SAUL is plain fine-tuning of the same weights (the ablation the bench uses).

    `corpus_share` (our addition): that share of the augmented rows is a generic sentence from the
    context's corpus (the key-statistics text, never the held-out text), learned in full, so the
    edit also keeps ordinary text as it was (on the demo's first refresh, held-out perplexity drifts
    +255% without them and -11% with a quarter of the rows; bench/results/edit_profile_search.md).

    `near_share` (our addition): that share of the augmented rows is a pool fact of an edited
    subject (its other relations), the facts an edit most easily drags along; with `near_relation`
    also a pool fact asked the way an edit is (the same relation of another subject).

    `repair_share` (our addition): that share of the augmented rows is a fact of the context's repair
    pool (facts the live model gets wrong that the base model or an earlier promoted edit had right),
    its answer learned from the database value by CE in either `reg_loss` mode: drift that earlier
    sequential edits left is undone instead of being kept as the reference.

    `reg_loss` (our addition): "ce" trains the regularised tokens towards their labels (the pool's
    answers, the corpus' words); "kl" towards the unedited model's whole next-token distribution at
    the same positions (KL(before || after)): margins and end-of-text probabilities are kept too,
    not only the argmax.
    """

    layers: tuple[int, ...] = (1,)
    modules: tuple[str, ...] = ("mlp.c_fc", "mlp.c_proj")
    tuning: str = "full"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    steps: int = 40
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    early_stop_loss: float = 1e-2
    min_steps: int = 0
    concat_facts: int = 1
    augment_ratio: float = 1.0
    augment_loss: str = "full"
    reg_weight: float = 1.0
    corpus_share: float = 0.0
    near_share: float = 0.0
    near_relation: bool = False
    reg_loss: str = "ce"
    repair_share: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        object.__setattr__(self, "modules", tuple(str(m) for m in self.modules))
        validate_lora_fields("saul", self)
        if self.tuning not in TUNINGS:
            raise InvalidInput(f"saul: tuning must be one of {TUNINGS}, got {self.tuning!r}")
        if self.reg_loss not in REG_LOSSES:
            raise InvalidInput(f"saul: reg_loss must be one of {REG_LOSSES}, got {self.reg_loss!r}")
        if self.augment_loss not in AUGMENT_LOSSES:
            raise InvalidInput(f"saul: augment_loss must be one of {AUGMENT_LOSSES}, got {self.augment_loss!r}")
        if self.concat_facts < 0:
            raise InvalidInput(f"saul: concat_facts must be >= 0, got {self.concat_facts}")
        if self.augment_ratio < 0:
            raise InvalidInput(f"saul: augment_ratio must be >= 0, got {self.augment_ratio}")
        if not 0.0 <= self.corpus_share <= 1.0:
            raise InvalidInput(f"saul: corpus_share must be in [0, 1], got {self.corpus_share}")
        if not 0.0 <= self.near_share <= 1.0 or self.corpus_share + self.near_share > 1.0:
            raise InvalidInput(f"saul: near_share must be in [0, 1 - corpus_share], got {self.near_share}")
        if not 0.0 <= self.repair_share <= 1.0:
            raise InvalidInput(f"saul: repair_share must be in [0, 1], got {self.repair_share}")
        if self.min_steps < 0:  # above `steps` it means: never stop early
            raise InvalidInput(f"saul: min_steps must be >= 0, got {self.min_steps}")
        if self.reg_weight < 0:
            raise InvalidInput(f"saul: reg_weight must be >= 0, got {self.reg_weight}")
