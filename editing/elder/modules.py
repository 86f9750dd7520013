"""ELDER's modules and how they are installed into (and removed from) a model, served unmerged.

`install(model, state)` wraps each adapted module in an `ElderLinear` (base module untouched) and
hooks the query block; `Installation.revert()` puts the original module objects back and removes
the hook, so the model is exactly what it was (state_dict keys, weights, module objects). When the
model already carries ELDER modules, the new installation wraps their base modules, switches the
older runtime off, and `revert()` brings the older modules back::

    inst = install(model, state_tensors)       # served: deferral decides per token
    ...
    inst.revert()

State tensors (carried from refresh to refresh in the delta as `state::<name>`):
`elder.config` (uint8 JSON), `elder.codes` [M, L*E] uint8 (the distinct codes that deferral
matches, always the codes of the stored edit keys under the current routers), `elder.key_queries`
[K, d] float32 (the query of every stored edit key: ELDER's memory, it grows by a few keys per edit),
`elder.key_probs` [K, L*E] float32 (each key's router probabilities when its edit was trained; later
edits keep them), and per adapted module i:
`elder.{i}.router.weight` [E, d], `elder.{i}.router.bias` [E], `elder.{i}.lora_A` [E, d_in, r],
`elder.{i}.lora_B` [E, r, d_out].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from editing.elder.core import min_hamming, moe_lora, router_probs, top_k_gates
from infra.errors import InvalidInput

CONFIG = "elder.config"
CODES = "elder.codes"
KEYS = "elder.keys"  # older deltas only: unit-norm key queries of the key guard
KEY_QUERIES = "elder.key_queries"
KEY_PROBS = "elder.key_probs"


def module_dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear or a GPT-2 Conv1D (weight stored as (in, out))."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    raise InvalidInput(f"elder: can only adapt Linear or Conv1D modules, not {type(module).__name__}")


class ElderLinear(nn.Module):
    """base(x) + Σ_e g_e (alpha/r) x A_e B_e, with gates set per token by the runtime's query hook."""

    def __init__(self, base: nn.Module, d_query: int, num_experts: int, r: int, alpha: float) -> None:
        super().__init__()
        d_in, d_out = module_dims(base)
        self.base = base
        self.scaling = alpha / r
        weight = next(base.parameters())
        self.router = nn.Linear(d_query, num_experts).to(device=weight.device, dtype=torch.float32)
        self.lora_A = nn.Parameter(torch.zeros(num_experts, d_in, r, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, r, d_out, device=weight.device))
        self.gates: torch.Tensor | None = None  # [B, T, E], set by the runtime before each forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.gates is None or self.gates.shape[:-1] != x.shape[:-1]:
            return out
        return out + moe_lora(x, self.lora_A, self.lora_B, self.gates, self.scaling).to(out.dtype)


@dataclass
class ElderRuntime:
    """Routes every sequence from its key token, once per forward, and applies deferral.

    Each token gets a code (the k-hot top-k choice of every router). The first token of a sequence
    that is *in scope* (serve: its code is within Hamming distance < `threshold` of a stored code;
    train: `key_mask` marks it) fixes the gates for itself and every later token of the sequence,
    as ELDER routes a whole sequence from its key position; tokens before it, and sequences with no
    such token, get no adapters (deferral to the frozen model). The latch is carried across the
    incremental calls of KV-cached decoding and reset when a sequence starts. In training,
    `hard_targets` (when set) replace each row's top-k by its preset experts (ELDER's hard mode).
    """

    layers: list[ElderLinear]
    codes: torch.Tensor  # [M, L*E] bool
    top_k: int
    threshold: int
    keys: torch.Tensor | None = None  # [K, d] unit-norm key queries (for the key guard)
    key_queries: torch.Tensor | None = None  # [K, d] stored edit key queries (layer-normed residual)
    key_probs: torch.Tensor | None = None  # [K, L*E] router probabilities of each stored key when it was trained
    hard_targets: torch.Tensor | None = None  # [B, L, E] bool, train mode: the preset experts of each row
    key_similarity: float | None = None
    mode: str = "serve"
    enabled: bool = True
    key_mask: torch.Tensor | None = None  # [B, T] bool, train mode: the key token of each edit row
    input_mask: torch.Tensor | None = None  # [B, T_total] attention mask of the current model call
    latched: list[torch.Tensor] | None = None  # per layer [B, E]: gates carried from earlier calls
    last_probs: list[torch.Tensor] = field(default_factory=list)  # per layer [B, T, E], for the guided loss
    last_codes: torch.Tensor | None = None  # [B, T, L*E]
    last_applied: torch.Tensor | None = None  # [B, T] bool: adapters active on the token
    last_query: torch.Tensor | None = None  # [B, T, d]

    def on_model_call(self, attention_mask: torch.Tensor | None, new_sequence: bool) -> None:
        self.input_mask = attention_mask
        if new_sequence:
            self.latched = None

    def on_query(self, hidden: torch.Tensor) -> None:
        if not self.enabled:
            return
        B, T, _ = hidden.shape
        query = F.layer_norm(hidden.float(), hidden.shape[-1:])  # [B, T, d]
        probs, gates, khots = [], [], []
        hard = self.mode == "train" and self.hard_targets is not None
        if hard and self.hard_targets.shape[:2] != (B, len(self.layers)):  # type: ignore[union-attr]
            raise InvalidInput("elder: training forward with hard targets of the wrong shape")
        for i, layer in enumerate(self.layers):
            p = router_probs(query, layer.router.weight, layer.router.bias)  # [B, T, E]
            g, khot = top_k_gates(p, self.top_k)
            if hard:
                # ELDER's "hard" target mode: the row's preset experts carry its gates (only they learn it)
                g = p * self.hard_targets[:, i, None, :].to(p.dtype)  # type: ignore[index]
            probs.append(p)
            gates.append(g)
            khots.append(khot)
        codes = torch.cat(khots, dim=-1)  # [B, T, L*E]
        valid = torch.ones(B, T, dtype=torch.bool, device=hidden.device)
        if self.input_mask is not None and self.input_mask.shape[0] == B and self.input_mask.shape[1] >= T:
            valid = self.input_mask[:, -T:].bool().to(hidden.device)
        if self.mode == "train":
            if self.key_mask is None or self.key_mask.shape != (B, T):
                raise InvalidInput("elder: training forward without a matching key mask")
            in_scope = self.key_mask.to(hidden.device) & valid
        else:
            in_scope = (min_hamming(codes, self.codes) < self.threshold) & valid  # [B, T]
            if self.key_similarity is not None:
                # our optional guard: the token's query must also be close to a stored edit key
                if self.keys is None or self.keys.numel() == 0:
                    in_scope = torch.zeros_like(in_scope)
                else:
                    unit = F.normalize(query, dim=-1)  # [B, T, d]
                    best = (unit @ self.keys.to(unit.device).t()).max(dim=-1).values  # [B, T]
                    in_scope = in_scope & (best >= self.key_similarity)
        steps = torch.arange(T, device=hidden.device)
        first = torch.where(in_scope, steps, T).min(dim=1).values  # [B]; T = none in this call
        has_key = first < T
        carried = self.latched is not None and len(self.latched) == len(gates) and self.latched[0].shape[0] == B
        previously = (self.latched[0].abs().sum(-1) > 0) if carried else torch.zeros(B, dtype=torch.bool, device=hidden.device)
        active = previously[:, None] | (has_key[:, None] & (steps[None, :] >= first[:, None]))  # [B, T]
        rows = torch.arange(B, device=hidden.device)
        new_latched = []
        for i, (layer, g) in enumerate(zip(self.layers, gates)):
            key_gates = g[rows, first.clamp(max=T - 1)]  # [B, E]
            if carried:
                key_gates = torch.where(previously[:, None], self.latched[i], key_gates)  # type: ignore[index]
            key_gates = key_gates * (previously | has_key)[:, None].to(g.dtype)
            layer.gates = key_gates[:, None, :] * active[..., None].to(g.dtype)  # [B, T, E]
            new_latched.append(key_gates.detach())
        self.latched = new_latched
        self.last_probs, self.last_codes, self.last_applied = probs, codes, active
        self.last_query = query


@dataclass
class Installation:
    """An installed ELDER: `revert()` restores the model exactly (and re-enables an older ELDER)."""

    model: nn.Module
    runtime: ElderRuntime
    replaced: dict[str, nn.Module]  # module name -> the module that was there before
    hooks: list[Any]
    previous: ElderRuntime | None
    reverted: bool = False

    def revert(self) -> None:
        if self.reverted:
            return
        for handle in self.hooks:
            handle.remove()
        for name, module in self.replaced.items():
            _set_module(self.model, name, module)
        for layer in self.runtime.layers:
            layer.gates = None
        if self.previous is not None:
            self.previous.enabled = True
        self.reverted = True


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def config_tensor(config: Mapping[str, Any]) -> torch.Tensor:
    return torch.tensor(list(json.dumps(dict(config), sort_keys=True).encode()), dtype=torch.uint8)


def read_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    if CONFIG not in state:
        raise InvalidInput("elder: the delta carries no elder.config state")
    return json.loads(bytes(state[CONFIG].tolist()).decode())


def install(model: nn.Module, state: Mapping[str, torch.Tensor] | None, config: Mapping[str, Any] | None = None,
            *, seed: int = 0, init_scale: float = 1.0) -> Installation:
    """Install ELDER modules from `state` (or freshly initialised ones for `config` when state is empty).

    config: {"targets": [module names], "query_block": name, "num_experts", "top_k", "r", "alpha", "threshold"}.
    Fresh experts have A ~ U(±init_scale/sqrt(d_in)) (seeded) and B = 0, so a fresh install changes nothing.
    """
    state = dict(state or {})
    if config is None:
        config = read_config(state)
    targets: list[str] = list(config["targets"])
    modules = dict(model.named_modules())
    missing = [t for t in targets + [config["query_block"]] if t not in modules]
    if missing:
        raise InvalidInput(f"elder: the model has no modules {missing}")
    previous: ElderRuntime | None = None
    replaced: dict[str, nn.Module] = {}
    layers: list[ElderLinear] = []
    query_block = modules[config["query_block"]]
    d_query = _hidden_size(model)
    generator = torch.Generator().manual_seed(seed)
    for i, name in enumerate(targets):
        current = modules[name]
        base = current
        if isinstance(current, ElderLinear):
            base = current.base
            previous = getattr(current, "_runtime", None) or previous
        layer = ElderLinear(base, d_query, int(config["num_experts"]), int(config["r"]), float(config["alpha"]))
        prefix = f"elder.{i}."
        with torch.no_grad():
            if f"{prefix}lora_A" in state:
                for part, param in (("router.weight", layer.router.weight), ("router.bias", layer.router.bias),
                                    ("lora_A", layer.lora_A), ("lora_B", layer.lora_B)):
                    value = state[prefix + part]
                    if value.shape != param.shape:
                        raise InvalidInput(f"elder: state {prefix + part} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
                    param.copy_(value.to(param.device, param.dtype))
            else:
                d_in = layer.lora_A.shape[1]
                bound = init_scale / math.sqrt(d_in)
                layer.lora_A.copy_((torch.rand(layer.lora_A.shape, generator=generator) * 2 - 1) * bound)
                layer.router.weight.copy_(torch.randn(layer.router.weight.shape, generator=generator) / math.sqrt(d_query))
                layer.router.bias.zero_()
        replaced[name] = current
        layers.append(layer)
    codes = state.get(CODES, torch.zeros(0, len(targets) * int(config["num_experts"]), dtype=torch.uint8)).bool()
    similarity = config.get("key_similarity")
    n_bits = len(targets) * int(config["num_experts"])
    key_queries = state.get(KEY_QUERIES, torch.zeros(0, d_query)).float()
    key_probs = state.get(KEY_PROBS, torch.zeros(0, n_bits)).float()
    if key_queries.shape[0] != key_probs.shape[0]:
        raise InvalidInput(f"elder: {key_queries.shape[0]} stored key queries but {key_probs.shape[0]} key probabilities")
    keys = F.normalize(key_queries, dim=-1) if KEY_QUERIES in state else state.get(KEYS, torch.zeros(0, d_query)).float()
    runtime = ElderRuntime(layers=layers, codes=codes, top_k=int(config["top_k"]), threshold=int(config["threshold"]),
                           keys=keys, key_queries=key_queries, key_probs=key_probs,
                           key_similarity=None if similarity is None else float(similarity))
    for layer in layers:
        object.__setattr__(layer, "_runtime", runtime)  # not a submodule: keeps state_dict unchanged
    if previous is not None:
        previous.enabled = False
    for name, layer in zip(targets, layers):
        _set_module(model, name, layer)

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        runtime.on_query(hidden)

    def model_hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        past = kwargs.get("cache", kwargs.get("past_key_values"))  # the KV cache's name changed in transformers 5.2x
        new_sequence = past is None or (hasattr(past, "get_seq_length") and int(past.get_seq_length()) == 0)
        runtime.on_model_call(kwargs.get("attention_mask"), new_sequence)

    handles = [model.register_forward_pre_hook(model_hook, with_kwargs=True),
               query_block.register_forward_pre_hook(hook, with_kwargs=True)]
    return Installation(model=model, runtime=runtime, replaced=replaced, hooks=handles, previous=previous)


def export_state(inst: Installation, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors to carry in the delta (detached float32 copies on the CPU)."""
    state: dict[str, torch.Tensor] = {CONFIG: config_tensor(config), CODES: inst.runtime.codes.to(torch.uint8).cpu()}
    if inst.runtime.key_queries is not None:
        state[KEY_QUERIES] = inst.runtime.key_queries.float().cpu().contiguous()
        state[KEY_PROBS] = inst.runtime.key_probs.float().cpu().contiguous()  # type: ignore[union-attr]
    for i, layer in enumerate(inst.runtime.layers):
        state[f"elder.{i}.router.weight"] = layer.router.weight.detach().float().cpu().clone()
        state[f"elder.{i}.router.bias"] = layer.router.bias.detach().float().cpu().clone()
        state[f"elder.{i}.lora_A"] = layer.lora_A.detach().float().cpu().clone()
        state[f"elder.{i}.lora_B"] = layer.lora_B.detach().float().cpu().clone()
    return state


def _hidden_size(model: nn.Module) -> int:
    config = model.config  # type: ignore[attr-defined]
    for attr in ("n_embd", "hidden_size", "d_model"):
        if hasattr(config, attr):
            return int(getattr(config, attr))
    raise InvalidInput("elder: cannot tell the hidden size from the model config")


def apply_elder(delta: Any, model: nn.Module) -> Installation:
    """The `Delta` applier for apply_kind "elder": install the delta's router and experts, unmerged."""
    return install(model, delta.state())
