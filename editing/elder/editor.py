"""ELDER editor: trains the shared LoRA experts and routers on a batch of edits, lifelong.

The experts, routers and stored codes come in through `EditContext.state` (the previous ELDER
delta of the chain) and go out in `EditResult.state`; the delta has no weight tensors and is
served unmerged (`apply_kind="elder"`). Paraphrases are never trained on: the guided loss uses our
own augmentations of each prompt (see `augment_prompt`).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Sequence

import torch
from torch import nn

from editing.adapters.targets import target_modules
from editing.adapters.training import adam_steps
from editing.architecture import layout_of
from editing.elder.core import guided_loss, min_hamming, preferred_experts, route_codes, router_probs, unique_codes
from editing.elder.hparams import ELDERHParams
from editing.elder.modules import CONFIG, KEY_QUERIES, export_state, install, read_config
from editing.protocol import EditContext, EditResult
from editing.trainable import only_these_trainable
from infra.domain import EditRequest
from infra.encoding import encode_pair, encode_text, pad_id
from infra.errors import InvalidInput

log = logging.getLogger(__name__)

IGNORE = -100
#: Config keys that must match between a carried state and the current hyperparameters.
STRUCTURE = ("targets", "query_block", "num_experts", "top_k", "r", "alpha")


def augment_prompt(prompt: str, which: int) -> str:
    """Our own variants of an edit prompt for the guided loss (0: a generic prefix, 1: lower-cased first letter)."""
    if which == 0:
        return "Note: " + prompt
    return prompt[:1].lower() + prompt[1:] if prompt[:1].isupper() else "So " + prompt


def _rows(tokenizer: Any, texts: Sequence[tuple[str, str | None]]) -> list[tuple[list[int], int]]:
    """(ids, prompt length) per (prompt, answer); answer None = the sentence is a negative (all positions)."""
    out = []
    for prompt, answer in texts:
        if answer is None:
            ids = encode_text(tokenizer, prompt)
            out.append((ids, len(ids)))
        else:
            prompt_ids, answer_ids = encode_pair(tokenizer, prompt, answer, eos=True)
            out.append((prompt_ids + answer_ids, len(prompt_ids)))
    return out


class ELDEREditor:
    name = "elder"

    def compute(
        self,
        model: nn.Module,
        tokenizer: Any,
        requests: Sequence[EditRequest],
        hparams: ELDERHParams,
        context: EditContext | None = None,
    ) -> EditResult:
        if not requests:
            raise InvalidInput("elder: no edit requests")
        context = context or EditContext()
        started = time.perf_counter()
        layout = layout_of(model)
        targets = target_modules(model, hparams.layers, hparams.modules, "elder")
        config = {
            "targets": targets, "query_block": layout.block_module(hparams.query_layer),
            "num_experts": hparams.num_experts, "top_k": hparams.top_k, "r": hparams.r, "alpha": hparams.alpha,
            "threshold": hparams.threshold, "key_similarity": hparams.key_similarity,
        }
        state = {k: v for k, v in context.state.items() if k.startswith("elder.")}
        if CONFIG in state:
            carried = read_config(state)
            changed = [k for k in STRUCTURE if carried.get(k) != config[k]]
            if changed:
                raise InvalidInput(f"elder: the carried experts were built with other {changed}; start a new chain to change them")
            if KEY_QUERIES not in state:
                raise InvalidInput("elder: the carried state has no stored edit keys (a delta from before key storage), "
                                   "so its codes cannot follow the routers; start a new chain")
        device = next(model.parameters()).device
        E, k = hparams.num_experts, hparams.top_k
        reserved = torch.zeros(E, dtype=torch.bool, device=device)
        if hparams.null_weight > 0:
            reserved[:k] = True  # experts 0..k-1 are the "defer" allocation

        # rows: edits, their augmentations, then negatives from the pool (resampled every step)
        edit_texts: list[tuple[str, str | None]] = []
        owner: list[int] = []
        for i, r in enumerate(requests):
            for prompt in [r.prompt] + [augment_prompt(r.prompt, j) for j in range(hparams.augmentations)]:
                edit_texts.append((prompt, r.target_new))
                owner.append(i)
        edit_rows = _rows(tokenizer, edit_texts)
        edited = {r.prompt for r in requests} | {p for r in requests for p in r.paraphrases}
        pool = [p + " " + a for p, a in context.fact_pool if p not in edited] + list(context.corpus)
        max_tokens = int(getattr(getattr(model, "config", None), "n_positions", 0) or 64)
        pool_rows = [(ids[:max_tokens], n) for ids, n in _rows(tokenizer, [(text, None) for text in pool])]
        n_null = min(len(pool_rows), max(hparams.null_facts * len(requests), 16)) if hparams.null_weight > 0 else 0
        rng = random.Random(hparams.seed)
        pad = pad_id(tokenizer)

        def make_batch(negatives: list[tuple[list[int], int]]):  # noqa: ANN202
            rows = edit_rows + negatives
            width = max(len(ids) for ids, _ in rows)
            B = len(rows)
            ids = torch.full((B, width), pad, dtype=torch.long)
            attn = torch.zeros((B, width), dtype=torch.long)
            labels = torch.full((B, width), IGNORE, dtype=torch.long)
            key_pos = torch.zeros((B, width), dtype=torch.bool)  # the last prompt token of each edit row
            null_pos = torch.zeros((B, width), dtype=torch.bool)  # tokens that must be deferred
            for b, (row, n_prompt) in enumerate(rows):
                ids[b, : len(row)] = torch.tensor(row)
                attn[b, : len(row)] = 1
                if b < len(edit_rows):
                    labels[b, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
                    key_pos[b, n_prompt - 1] = True
                    null_pos[b, : n_prompt - 1] = True
                else:
                    null_pos[b, : len(row)] = True
            return ids.to(device), attn.to(device), labels.to(device), key_pos.to(device), null_pos.to(device)

        inst = install(model, state, config, seed=hparams.seed, init_scale=hparams.init_scale)
        runtime = inst.runtime
        runtime.mode = "train"
        L = len(targets)
        # earlier edits' keys keep their routing (probabilities) while the shared routers train on this batch
        anchor_q = runtime.key_queries.to(device)  # type: ignore[union-attr]  # [K, d]
        anchor_target = runtime.key_probs.to(device).reshape(-1, L, E)  # type: ignore[union-attr]  # [K, L, E]
        anchor_codes = torch.zeros_like(anchor_target, dtype=torch.bool).scatter_(-1, anchor_target.topk(k, dim=-1).indices, True)
        use_anchors = hparams.anchor_weight > 0 and anchor_q.shape[0] > 0
        # how often stored keys use each expert: new edits are preset on the least-used ones
        usage = anchor_codes.float().mean(0) if anchor_q.shape[0] and hparams.spread_experts else None  # [L, E]
        owner_t = torch.tensor(owner, device=device)
        lm_losses: list[float] = []
        routing: dict[str, float] = {}  # last step: share of edit keys / deferred tokens / stored keys routed as they should
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():  # preset each edit's experts from the router's preference at its key tokens
                ids, attn, _, key_pos, _ = make_batch([])
                runtime.key_mask = key_pos
                model(input_ids=ids, attention_mask=attn)
                key_probs = torch.stack(runtime.last_probs, dim=2)[key_pos]  # [N, L, E]
                key_owner = owner_t[:, None].expand(-1, key_pos.shape[1])[key_pos]  # [N]
                allocation = torch.stack([
                    torch.stack([preferred_experts(key_probs[key_owner == i][:, layer], k, ~reserved,
                                                   None if usage is None else usage[layer]) for layer in range(L)])
                    for i in range(len(requests))])  # [n_requests, L, E] bool
                if hparams.hard_routing:
                    edit_targets = allocation[owner_t]  # [n_edit_rows, L, E]
            trainable = [name for name, _ in model.named_parameters()
                         if any(name.startswith(t + ".") and not name.startswith(t + ".base.") for t in targets)]

            def loss_fn() -> tuple[torch.Tensor, float]:
                negatives = rng.sample(pool_rows, n_null) if n_null else []
                ids, attn, labels, key_pos, null_pos = make_batch(negatives)
                runtime.key_mask = key_pos
                if hparams.hard_routing:
                    runtime.hard_targets = torch.cat([edit_targets, edit_targets.new_zeros(len(negatives), L, E)])
                logits = model(input_ids=ids, attention_mask=attn).logits
                lm = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE)
                probs = torch.stack(runtime.last_probs, dim=2)  # [B, T, L, E]
                n_edit_rows = len(edit_rows)
                # guided loss at the key tokens, toward each edit's preset experts (every layer)
                edit_probs = probs[:n_edit_rows][key_pos[:n_edit_rows]]  # [N, L, E]
                row_owner = owner_t[:, None].expand(-1, key_pos.shape[1])[key_pos[:n_edit_rows]]  # [N]
                target = allocation[row_owner]  # [N, L, E]
                guide = guided_loss(edit_probs.reshape(-1, E), target.reshape(-1, E)) if hparams.guide_weight else lm * 0
                loss = lm + hparams.guide_weight * guide
                if use_anchors:
                    anchor_probs = torch.stack([router_probs(anchor_q, layer.router.weight, layer.router.bias)
                                                for layer in runtime.layers], dim=1)  # [K, L, E]
                    loss = loss + hparams.anchor_weight * guided_loss(anchor_probs.reshape(-1, E), anchor_target.reshape(-1, E))
                    with torch.no_grad():
                        anchor_hit = torch.zeros_like(anchor_codes).scatter_(-1, anchor_probs.topk(k, dim=-1).indices, True)
                null_probs = probs[null_pos]  # [M, L, E]
                if hparams.null_weight > 0:
                    null_target = reserved.expand(null_probs.shape[0], null_probs.shape[1], E)
                    loss = loss + hparams.null_weight * guided_loss(null_probs.reshape(-1, E), null_target.reshape(-1, E))
                with torch.no_grad():
                    chosen = edit_probs.topk(k, dim=-1).indices
                    hit = torch.zeros_like(edit_probs, dtype=torch.bool).scatter_(-1, chosen, True)
                    routed = bool((hit == target).all())
                    routing["edit_keys"] = float((hit == target).all(-1).all(-1).float().mean())
                    if hparams.null_weight > 0 and null_probs.numel():
                        null_hit = torch.zeros_like(null_probs, dtype=torch.bool).scatter_(-1, null_probs.topk(k, dim=-1).indices, True)
                        routing["deferred"] = float((null_hit == reserved).all(-1).all(-1).float().mean())
                        routed = routed and routing["deferred"] >= hparams.null_routed
                    if use_anchors:
                        routing["stored_keys"] = float((anchor_hit == anchor_codes).all(-1).all(-1).float().mean())
                        routed = routed and routing["stored_keys"] >= 0.99
                lm_losses.append(float(lm.detach()))
                return loss, float(lm.detach()) + (0.0 if routed else 1.0)

            with only_these_trainable(model, trainable):
                metrics = adam_steps([p for n, p in model.named_parameters() if n in set(trainable)], loss_fn,
                                     steps=hparams.steps, lr=hparams.lr, weight_decay=hparams.weight_decay,
                                     early_stop_loss=hparams.early_stop_loss)
                with torch.no_grad():
                    runtime.hard_targets = None
                    ids, attn, _, key_pos, _ = make_batch([])
                    runtime.key_mask = key_pos
                    model(input_ids=ids, attention_mask=attn)
                    new_codes = runtime.last_codes[key_pos].cpu()  # [N, L*E]
                    new_probs = torch.cat(runtime.last_probs, dim=-1)[key_pos].float().cpu()  # [N, L*E]
                    new_queries = runtime.last_query[key_pos].float().cpu()  # [N, d]
                    if hparams.null_weight > 0:
                        # a key that ended on the reserved "defer" allocation is not stored (it would open that door)
                        null_code = reserved.cpu().repeat(len(targets))
                        kept = min_hamming(new_codes, null_code[None, :]) >= hparams.threshold
                        new_probs, new_queries = new_probs[kept], new_queries[kept]
                    key_queries = torch.cat([runtime.key_queries.cpu(), new_queries])  # type: ignore[union-attr]
                    runtime.key_queries = key_queries
                    runtime.key_probs = torch.cat([runtime.key_probs.cpu(), new_probs])  # type: ignore[union-attr]
                    runtime.keys = torch.nn.functional.normalize(key_queries, dim=-1)
                    # deferral matches the codes every stored key has under the routers as they are now, so
                    # later training of the shared routers cannot silently switch an earlier edit off
                    current = route_codes(key_queries, [(layer.router.weight.detach().cpu(), layer.router.bias.detach().cpu())
                                                        for layer in runtime.layers], k)
                    if hparams.null_weight > 0:
                        current = current[min_hamming(current, null_code[None, :]) >= hparams.threshold]
                    runtime.codes = unique_codes(current)
            new_state = export_state(inst, config)
        finally:
            runtime.key_mask = None
            runtime.hard_targets = None
            inst.revert()
            model.train(was_training)
        log.info("elder: %d requests, %d steps, lm loss %.4f -> %.4f, %d stored codes",
                 len(requests), len(metrics), lm_losses[0], lm_losses[-1], int(new_state["elder.codes"].shape[0]))
        return EditResult(
            tensors={},
            state=new_state,
            apply_kind="elder",
            stats={"steps": len(metrics), "loss_first": lm_losses[0], "loss_last": lm_losses[-1],
                   "codes": int(new_state["elder.codes"].shape[0]), "keys": int(new_state[KEY_QUERIES].shape[0]), "routed": routing,
                   "seconds": time.perf_counter() - started},
        )
