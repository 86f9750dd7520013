"""MEMIT's layer loop, shared by MEMIT and AlphaEdit: one batch's residual spread over layers.

1. Target block outputs z_i at the last edited layer L, for all requests at once (cached per fact
   when the model is the base itself); requests whose target never reaches its answer
   (NLL > `reach_nll`) are left out and reported.
2. For each edited layer l in ascending order: keys K (d0 x n) at l, averaged over context
   prefixes, on the model that already holds this batch's updates of the layers below; current
   block-L outputs H at the plain prompts; residual R = (Z - H) / (layers left, l included);
   (U, V) = solve(l, K, R) with ΔW_l = U @ V; add ΔW_l so the next layers see it.
3. `after(model)` runs with every update in place (AlphaEdit reads the edited keys there).
4. Every edited weight is restored bit for bit; the packed updates are returned.

The solver gets K and R in float64 (MEMIT casts to float64 too) and returns U [d1, r], V [r, d0].
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from editing.architecture import ModelLayout, layout_of, num_layers
from editing.locate.context import context_prefixes
from editing.locate.keys import average_over_prefixes, encode_prompts, read_at_fact_tokens
from editing.locate.settings import target_settings
from editing.locate.target_vectors import TargetResult, cached_targets, optimise_targets
from editing.locate.weights import WeightGuard, add_update_, packed
from editing.protocol import EditContext
from infra.domain import EditRequest
from infra.errors import InvalidInput

log = logging.getLogger(__name__)

Solver = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SpreadOutput:
    tensors: dict[str, torch.Tensor]
    stats: dict[str, Any] = field(default_factory=dict)
    #: requests left out of the update: their target vector never reached its answer (index -> why)
    unreached: dict[int, str] = field(default_factory=dict)


def batch_targets(
    model: nn.Module, tokenizer: Any, requests: Sequence[EditRequest], block_module: str, hp: Any,
    prefixes: Sequence[str], context: EditContext | None,
) -> tuple[TargetResult, int]:
    """Target vectors of the batch: cached per fact when the model is the base itself (a cumulative
    refresh), else optimised. Returns (targets, how many came from the cache)."""
    settings = target_settings(hp)
    if context is not None and context.from_base and context.cache is not None and context.model_fingerprint:
        return cached_targets(model, tokenizer, requests, block_module, settings, prefixes, context.cache,
                              context.model_fingerprint)
    return optimise_targets(model, tokenizer, requests, block_module, settings, prefixes), 0


def unreached_requests(targets: TargetResult, reach_nll: float) -> dict[int, str]:
    """Requests whose target vector still gives the answer a mean NLL above `reach_nll`: no shift
    of that one hidden state writes them, so solving for them only spends the update on other facts."""
    return {
        i: f"target vector reached answer NLL {float(nll):.2f} > reach_nll {reach_nll}"
        for i, nll in enumerate(targets.nll_last.tolist())
        if not nll <= reach_nll
    }


def check_layers(model: nn.Module, layers: Sequence[int], owner: str) -> list[int]:
    depth = num_layers(model)
    bad = [layer for layer in layers if not 0 <= layer < depth]
    if bad:
        raise InvalidInput(f"{owner}: layers {bad} out of range for a {depth}-layer model")
    return sorted(set(layers))


def keys_at(model: nn.Module, layout: ModelLayout, layers: Sequence[int], ctx_rows: Any, batch_size: int) -> dict[int, torch.Tensor]:
    """Prefix-averaged keys per layer -> {layer: [n, d0] float32}."""
    modules = [layout.mlp_out_module(layer) for layer in layers]
    raw = read_at_fact_tokens(model, ctx_rows, modules, kind="input", batch_size=batch_size)
    return {layer: average_over_prefixes(raw[m], ctx_rows) for layer, m in zip(layers, modules)}


def spread_update(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[EditRequest],
    hp: Any,
    solve: Solver,
    owner: str,
    after: Callable[[nn.Module, list[int], Any], None] | None = None,
    context: EditContext | None = None,
) -> SpreadOutput:
    layout = layout_of(model)
    layers = check_layers(model, hp.layers, owner)
    started = time.perf_counter()
    prefixes = context_prefixes(model, tokenizer, hp.context_templates, seed=hp.seed)
    last_block = layout.block_module(layers[-1])
    all_targets, from_cache = batch_targets(model, tokenizer, requests, last_block, hp, prefixes, context)
    t_targets = time.perf_counter() - started
    unreached = unreached_requests(all_targets, hp.reach_nll)
    kept = [i for i in range(len(requests)) if i not in unreached]
    base_stats = {"requests": len(requests), "unreached": len(unreached), "targets_from_cache": from_cache,
                  "target_seconds": round(t_targets, 3), "target_steps": all_targets.steps,
                  "target_nll_first": float(all_targets.nll_first.mean()),
                  "target_nll_last": float(all_targets.nll_last.mean())}
    if not kept:
        return SpreadOutput({}, base_stats | {"layers": layers}, unreached)
    index = torch.tensor(kept, dtype=torch.long)
    targets = TargetResult(all_targets.delta[index.to(all_targets.delta.device)], all_targets.h_init[index.to(all_targets.h_init.device)],
                           all_targets.nll_first[index], all_targets.nll_last[index], all_targets.steps, all_targets.row_passes)
    requests = [requests[i] for i in kept]
    z = targets.h_init + targets.delta  # [n, d1]

    prompts = [r.prompt for r in requests]
    subjects = [r.subject for r in requests]
    plain_rows = encode_prompts(tokenizer, prompts, subjects, hp.fact_token)
    ctx_rows = encode_prompts(tokenizer, prompts, subjects, hp.fact_token, prefixes)
    tensors: dict[str, torch.Tensor] = {}
    per_layer: dict[str, Any] = {}
    names = [layout.mlp_out_weight(layer) for layer in layers]
    with WeightGuard(model, names):
        for i, layer in enumerate(layers):
            keys = keys_at(model, layout, [layer], ctx_rows, hp.batch_size)[layer]  # [n, d0]
            h_now = read_at_fact_tokens(model, plain_rows, [last_block], kind="output", batch_size=hp.batch_size)[last_block]
            resid = (z - h_now.to(z.device)) / (len(layers) - i)  # [n, d1]
            u, v = solve(layer, keys.T.double(), resid.T.double())  # [d1, r], [r, d0]
            layer_tensors = packed(layout, layer, u, v, hp.lowrank)
            add_update_(model, layer_tensors)
            tensors.update(layer_tensors)
            update = u.double() @ v.double()
            per_layer[str(layer)] = {
                "residual_norm": float(resid.norm(dim=1).mean()),
                "update_norm": float(update.norm()),
                "fit": float(((update @ keys.T.double()) - resid.T.double()).norm() / resid.norm().clamp(min=1e-12)),
            }
        if after is not None:
            after(model, layers, ctx_rows)
    stats = base_stats | {"layers": layers, "prefixes": len(prefixes), "per_layer": per_layer}
    return SpreadOutput(tensors, stats, unreached)
