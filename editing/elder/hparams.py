"""Hyperparameters of ELDER, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from infra.errors import InvalidInput


@dataclass(frozen=True)
class ELDERHParams:
    """ELDER (methods.md 4.4): a fixed pool of LoRA experts per adapted module, mixed by a router.

    Routing is per token: the query is the (parameter-free layer-normed) residual stream entering
    block `query_layer`; each adapted module `layers` x `modules` has a router Linear(d → E), takes
    the top-`top_k` softmax probabilities (not renormalised) as expert weights, and adds
    Σ_e g_e (alpha/r) x A_e B_e to its output. A token's binary code is the k-hot top-k choice of
    every router, concatenated; the adapters act on a token only when its code is within Hamming
    distance < `threshold` of a stored edit code (deferral), else the frozen model answers alone.

    Training (per refresh; early stopping waits until the answers are learned, the key tokens route to
    their targets, `null_routed` of the deferred tokens to the reserved experts and 99% of the stored keys
    to their allocations): LM loss on the answers + `guide_weight` x guided loss
    −Σ_{e∈target} log g_e at the edit positions (last prompt token and answer tokens), where the
    target is the router's own top-k over the non-reserved experts (with `spread_experts`, least-used by
    stored keys first, so successive edits spread over the experts). `augmentations`
    self-made variants of each prompt (a fixed generic prefix, lower-cased first letter) are
    trained the same way. With `hard_routing` (ELDER's "hard" target mode) each edit row is gated by
    its preset experts during training, so only they learn it. With `null_weight` > 0, positions that must be deferred (the edit
    prompt's other tokens and max(`null_facts` x N, 16) sentences drawn from the context's fact pool and generic
    corpus) are routed to the
    `top_k` reserved experts (our addition to ELDER, so non-edit tokens get codes far from every
    edit code). The key queries of the edit positions after training are stored with the code they
    were trained with (ELDER's memory: d floats + L*E bits per key). In later edits, `anchor_weight`
    x guided loss keeps every stored key routed to its own allocation while the shared routers train,
    and after each edit the deferral codes are recomputed from all stored keys with the routers as
    they now are (so later training cannot silently switch an earlier edit off).

    `key_similarity` (our option, off with null): a token is in scope only if, besides its code, its
    unit-norm query has cosine >= key_similarity with a stored edit key query (GRACE-like guard;
    stores d floats per edit prompt, so this memory grows with the number of edits).
    """

    layers: tuple[int, ...] = (1,)
    modules: tuple[str, ...] = ("mlp.c_fc",)
    query_layer: int = 1
    num_experts: int = 8
    top_k: int = 2
    r: int = 8
    alpha: float = 8.0
    threshold: int = 2
    steps: int = 40
    lr: float = 1e-2
    weight_decay: float = 0.0
    early_stop_loss: float = 1e-2
    batch_size: int = 64
    guide_weight: float = 1.0
    null_weight: float = 1.0
    null_facts: int = 4
    null_routed: float = 0.99
    anchor_weight: float = 1.0
    hard_routing: bool = True
    spread_experts: bool = True
    augmentations: int = 2
    init_scale: float = 1.0
    key_similarity: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        object.__setattr__(self, "modules", tuple(str(m) for m in self.modules))
        if not self.layers or not self.modules:
            raise InvalidInput("elder: layers and modules must each name at least one entry")
        if self.query_layer < 0 or self.query_layer > min(self.layers):
            raise InvalidInput(f"elder: query_layer must be in [0, min(layers)={min(self.layers)}], got {self.query_layer}")
        if self.num_experts < 2:
            raise InvalidInput(f"elder: num_experts must be >= 2, got {self.num_experts}")
        if not 1 <= self.top_k < self.num_experts:
            raise InvalidInput(f"elder: top_k must be in [1, num_experts), got {self.top_k}")
        if self.null_weight > 0 and self.num_experts - self.top_k < self.top_k:
            raise InvalidInput("elder: with null routing, num_experts must leave top_k experts besides the reserved top_k")
        if self.r < 1 or not self.alpha > 0:
            raise InvalidInput(f"elder: r must be >= 1 and alpha > 0, got r={self.r}, alpha={self.alpha}")
        if self.threshold < 1:
            raise InvalidInput(f"elder: threshold must be >= 1 (Hamming distance strictly below it applies), got {self.threshold}")
        if self.steps < 1 or not self.lr > 0 or self.batch_size < 1:
            raise InvalidInput("elder: steps and batch_size must be >= 1 and lr > 0")
        if self.guide_weight < 0 or self.null_weight < 0 or self.null_facts < 0 or self.augmentations < 0 or self.anchor_weight < 0:
            raise InvalidInput("elder: guide_weight, null_weight, null_facts, augmentations and anchor_weight must be >= 0")
        if not 0.0 <= self.null_routed <= 1.0:
            raise InvalidInput(f"elder: null_routed must be in [0, 1], got {self.null_routed}")
        if self.key_similarity is not None and not -1.0 <= self.key_similarity <= 1.0:
            raise InvalidInput(f"elder: key_similarity must be in [-1, 1] or null, got {self.key_similarity}")
        if self.augmentations > 2:
            raise InvalidInput(f"elder: at most 2 prompt augmentations are defined, got {self.augmentations}")
