"""UltraEdit editor: one forward/backward pass per turn, lifelong statistics, one ridge solve per layer.

Per turn of `edits_per_turn` requests: read the keys (inputs of each edited MLP output projection)
and the gradients of the edit loss w.r.t. its output at every position that predicts an answer
token (prompt + " " + answer + eos, as every editor encodes it), merge them into the carried
statistics, normalise, and solve (see `core`). The turn's updates are held in place while the next
turn reads its features; every edited weight is restored bit for bit before returning.

Carried state, per edited module m (float64, the count int64 [1]), in through `EditContext.state`
and out, grown by this batch, in `EditResult.state`:

    ultraedit.<m>.count      positions seen over every delta of the chain
    ultraedit.<m>.key_mean   [d0], ultraedit.<m>.key_m2  [d0]   (sum of squared deviations)
    ultraedit.<m>.grad_mean  [d1], ultraedit.<m>.grad_m2 [d1]

Cumulative mode (every ledger fact again from the base model, no carried state) is the same
lifelong stream run afresh: the statistics start empty and grow turn by turn over the ledger, as
they do over the first refreshes of a sequential chain. It is allowed but not preferred: the
sequential chain is what the method was designed for, and it costs only the new facts.

    result = UltraEditEditor().compute(model, tok, requests, hparams, EditContext(state=previous.state()))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from editing.architecture import ModelLayout, layout_of
from editing.batches import AnswerBatch, answer_batch
from editing.locate.hooks import capture, get_module
from editing.locate.spread import check_layers
from editing.locate.weights import WeightGuard, add_update_, packed, param, stored_bytes
from editing.protocol import EditContext, EditResult
from editing.ultraedit.core import Moments, merge, normalise, pseudo_values, ridge_update, update_norm, update_outputs
from editing.ultraedit.hparams import UltraEditHParams
from infra.domain import EditRequest
from infra.errors import InvalidInput

log = logging.getLogger(__name__)

STATE_PREFIX = "ultraedit."
STATE_FIELDS = ("count", "key_mean", "key_m2", "grad_mean", "grad_m2")

Factors = list[tuple[torch.Tensor, torch.Tensor | None]]


def state_name(module: str, field_name: str) -> str:
    return f"{STATE_PREFIX}{module}.{field_name}"


def carried_moments(state: dict[str, torch.Tensor], module: str, d0: int, d1: int) -> tuple[Moments, Moments]:
    """(key moments, gradient moments) of `module` carried in `state`; empty before the first edit."""
    names = {f: state_name(module, f) for f in STATE_FIELDS}
    present = [f for f, n in names.items() if n in state]
    if not present:
        return Moments.empty(d0), Moments.empty(d1)
    if len(present) != len(STATE_FIELDS):
        missing = sorted(set(STATE_FIELDS) - set(present))
        raise InvalidInput(f"ultraedit: carried statistics of {module} lack {missing}")
    count = int(state[names["count"]].reshape(-1)[0])
    shapes = {"key_mean": d0, "key_m2": d0, "grad_mean": d1, "grad_m2": d1}
    for f, dim in shapes.items():
        if tuple(state[names[f]].shape) != (dim,):
            raise InvalidInput(f"ultraedit: carried {names[f]} has shape {tuple(state[names[f]].shape)}, expected ({dim},)")
    if count < 0:
        raise InvalidInput(f"ultraedit: carried count of {module} is negative ({count})")
    keys = Moments(count, state[names["key_mean"]].double().cpu(), state[names["key_m2"]].double().cpu())
    grads = Moments(count, state[names["grad_mean"]].double().cpu(), state[names["grad_m2"]].double().cpu())
    return keys, grads


def moments_state(module: str, keys: Moments, grads: Moments) -> dict[str, torch.Tensor]:
    return {
        state_name(module, "count"): torch.tensor([keys.count], dtype=torch.int64),
        state_name(module, "key_mean"): keys.mean.detach().cpu().contiguous(),
        state_name(module, "key_m2"): keys.m2.detach().cpu().contiguous(),
        state_name(module, "grad_mean"): grads.mean.detach().cpu().contiguous(),
        state_name(module, "grad_m2"): grads.m2.detach().cpu().contiguous(),
    }


@contextmanager
def output_probes(model: nn.Module, modules: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Add a zero leaf tensor (requires grad) to each module's output: its gradient is the gradient
    w.r.t. the output, with the graph intact (later edited layers still pass gradient back) and no
    parameter's `requires_grad` or `.grad` touched. Adding zeros leaves the forward pass unchanged."""
    probes: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str) -> Any:
        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
            probe = torch.zeros_like(output, requires_grad=True)
            probes[name] = probe
            return output + probe

        return hook

    try:
        for name in modules:
            handles.append(get_module(model, name).register_forward_hook(hook_for(name)))
        yield probes
    finally:
        for handle in handles:
            handle.remove()


def answer_features(model: nn.Module, batch: AnswerBatch, modules: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Keys [N, d0] and value gradients [N, d1] of each module at the N positions that predict an answer token.

    The loss is the sum over requests of each request's mean answer-token NLL, so a request's
    gradient does not depend on which other requests share its forward pass.
    """
    with torch.enable_grad(), output_probes(model, modules) as probes, capture(model, modules, kind="input") as seen:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # [B, T, V]
    labels = batch.labels[:, 1:]  # [B, T-1]: position t predicts token t+1
    mask = labels != -100
    with torch.enable_grad():
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels.clamp(min=0), reduction="none")  # [B, T-1]
        per_request = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)
        grads = torch.autograd.grad(per_request.sum(), [probes[m] for m in modules])
    rows, cols = mask.nonzero(as_tuple=True)
    keys = {m: seen[m][:, :-1][rows, cols].double() for m in modules}
    values_grad = {m: g[:, :-1][rows, cols].double() for m, g in zip(modules, grads)}
    return keys, values_grad


def pack_layer(layout: ModelLayout, layer: int, parts: Factors, lowrank: str) -> dict[str, torch.Tensor]:
    """Delta tensors of the sum of `parts` (u @ v, or u alone when dense): factors concatenated when every part is low rank."""
    if all(v is not None for _, v in parts):
        u = torch.cat([u for u, _ in parts], dim=1)
        v = torch.cat([v for _, v in parts if v is not None], dim=0)
        return packed(layout, layer, u, v, lowrank)
    dense = torch.stack([u if v is None else u @ v for u, v in parts]).sum(0)  # [d1, d0]
    dense = dense.T if layout.transposed_weights else dense
    return {f"{layout.mlp_out_weight(layer)}::dense": dense.float().contiguous()}


def chunks(items: Sequence[EditRequest], size: int) -> list[Sequence[EditRequest]]:
    size = size or len(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


class UltraEditEditor:
    name = "ultraedit"

    def compute(
        self,
        model: nn.Module,
        tokenizer: Any,
        requests: Sequence[EditRequest],
        hparams: UltraEditHParams,
        context: EditContext | None = None,
    ) -> EditResult:
        if not requests:
            raise InvalidInput("ultraedit: no edit requests")
        context = context or EditContext()
        started = time.perf_counter()
        layout = layout_of(model)
        layers = check_layers(model, hparams.layers, "ultraedit")
        modules = {layer: layout.mlp_out_module(layer) for layer in layers}
        weights = {layer: layout.mlp_out_weight(layer) for layer in layers}
        device = next(model.parameters()).device
        moments: dict[int, tuple[Moments, Moments]] = {}
        for layer in layers:
            shape = tuple(param(model, weights[layer]).shape)
            d1, d0 = shape[::-1] if layout.transposed_weights else shape
            keys_m, grads_m = carried_moments(context.state, modules[layer], d0, d1)
            moments[layer] = (keys_m.to(device), grads_m.to(device))
        counts_in = {str(layer): moments[layer][0].count for layer in layers}

        parts: dict[int, Factors] = {layer: [] for layer in layers}
        per_layer: dict[str, dict[str, float]] = {
            str(layer): {"update_norm": 0.0, "key_norm": 0.0, "value_norm": 0.0, "fit": 0.0} for layer in layers}
        turns = chunks(requests, hparams.edits_per_turn)
        tokens = 0
        t_features = t_solve = 0.0
        was_training = model.training
        model.eval()
        bar = tqdm(total=len(turns), desc="ultraedit: turns", unit="turn", disable=not context.show_progress)
        try:
            with WeightGuard(model, list(weights.values())), bar:
                for turn_index, turn in enumerate(turns):
                    t0 = time.perf_counter()
                    keys, grads = self._turn_features(model, tokenizer, turn, list(modules.values()), hparams.batch_size, device)
                    t_features += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    turn_tensors: dict[str, torch.Tensor] = {}
                    for layer in layers:
                        k, g = keys[modules[layer]], grads[modules[layer]]  # [N, d0], [N, d1]
                        key_m, grad_m = merge(moments[layer][0], k), merge(moments[layer][1], g)
                        moments[layer] = (key_m, grad_m)
                        values = pseudo_values(normalise(k, key_m), normalise(g, grad_m), hparams.lr)  # [N, d1]
                        u, v = ridge_update(k, values, hparams.ridge)
                        parts[layer].append((u, v))
                        stats = per_layer[str(layer)]  # of the last turn, the update's norm the largest turn's
                        stats["update_norm"] = max(stats["update_norm"], update_norm(u, v))
                        stats["key_norm"] = float(k.norm(dim=1).mean())
                        stats["value_norm"] = float(values.norm(dim=1).mean())
                        # relative residual of the ridge fit: how far the update is from moving each key's output by v
                        stats["fit"] = float((update_outputs(k, u, v) - values).norm() / values.norm().clamp(min=1e-12))
                        if turn_index + 1 < len(turns):
                            turn_tensors.update(pack_layer(layout, layer, [(u, v)], "auto"))
                    tokens += int(next(iter(keys.values())).size(0))
                    if turn_tensors:  # the next turn reads its keys and gradients on the model edited so far
                        add_update_(model, turn_tensors)
                    t_solve += time.perf_counter() - t0
                    bar.update(1)
        finally:
            model.train(was_training)

        tensors: dict[str, torch.Tensor] = {}
        state = {k: v for k, v in context.state.items() if k.startswith(STATE_PREFIX)}
        for layer in layers:
            tensors.update(pack_layer(layout, layer, parts[layer], hparams.lowrank))
            state.update(moments_state(modules[layer], *moments[layer]))
        for layer in layers:
            per_layer[str(layer)]["count"] = moments[layer][0].count
        stats = {
            "requests": len(requests),
            "turns": len(turns),
            "tokens": tokens,
            "layers": layers,
            "count_in": counts_in,
            "per_layer": per_layer,
            "feature_seconds": round(t_features, 3),
            "solve_seconds": round(t_solve, 3),
            "seconds": round(time.perf_counter() - started, 3),
            "stored_bytes": stored_bytes(tensors),
            "state_bytes": stored_bytes(state),
        }
        log.info("ultraedit: %d requests in %d turns (%d answer positions) in %.1fs", len(requests), len(turns), tokens, stats["seconds"])
        return EditResult(tensors=tensors, state=state, stats=stats)

    @staticmethod
    def _turn_features(
        model: nn.Module, tokenizer: Any, turn: Sequence[EditRequest], modules: list[str], batch_size: int, device: torch.device,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Keys and value gradients of a turn's requests, `batch_size` requests per pass, rows in request order."""
        batch = answer_batch(tokenizer, [r.prompt for r in turn], [r.target_new for r in turn])
        keys: dict[str, list[torch.Tensor]] = {m: [] for m in modules}
        grads: dict[str, list[torch.Tensor]] = {m: [] for m in modules}
        for start in range(0, len(turn), batch_size):
            part = batch.rows(slice(start, start + batch_size))
            width = int(part.attention_mask.sum(1).max())  # drop columns that are padding in every row of the part
            part = AnswerBatch(part.input_ids[:, :width], part.attention_mask[:, :width], part.labels[:, :width],
                               part.last_prompt_index).to(device)
            k, g = answer_features(model, part, modules)
            for m in modules:
                keys[m].append(k[m])
                grads[m].append(g[m])
        return {m: torch.cat(v) for m, v in keys.items()}, {m: torch.cat(v) for m, v in grads.items()}
