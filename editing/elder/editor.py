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
from editing.elder.core import guided_loss, min_hamming, preferred_experts, unique_codes
from editing.elder.hparams import ELDERHParams
from editing.elder.modules import CONFIG, export_state, install, read_config
from editing.protocol import EditContext, EditResult
from editing.trainable import only_these_trainable
from infra.domain import EditRequest
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
        ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        n_prompt = len(ids)
        if answer is not None:
            ids += list(tokenizer(" " + answer, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
        out.append((ids, n_prompt))
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
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        def make_batch(negatives: list[tuple[list[int], int]]):  # noqa: ANN202
            rows = edit_rows + negatives
            width = max(len(ids) for ids, _ in rows)
            B = len(rows)
            ids = torch.full((B, width), pad_id, dtype=torch.long)
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
        allocation: torch.Tensor | None = None  # [n_requests, L, E] bool, preset on the first step
        stored = runtime.codes.reshape(-1, len(targets), E).float()  # [M, L, E]
        usage = (stored.mean(0) if stored.shape[0] else torch.zeros(len(targets), E)).to(device)  # [L, E]
        owner_t = torch.tensor(owner, device=device)
        lm_losses: list[float] = []
        was_training = model.training
        model.eval()
        try:
            trainable = [name for name, _ in model.named_parameters()
                         if any(name.startswith(t + ".") and not name.startswith(t + ".base.") for t in targets)]

            def loss_fn() -> tuple[torch.Tensor, float]:
                nonlocal allocation
                negatives = rng.sample(pool_rows, n_null) if n_null else []
                ids, attn, labels, key_pos, null_pos = make_batch(negatives)
                runtime.key_mask = key_pos
                logits = model(input_ids=ids, attention_mask=attn).logits
                lm = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE)
                probs = torch.stack(runtime.last_probs, dim=2)  # [B, T, L, E]
                n_edit_rows = len(edit_rows)
                if allocation is None:
                    with torch.no_grad():
                        allocation = torch.stack([
                            torch.stack([preferred_experts(probs[:n_edit_rows][(owner_t == i)[:, None] & key_pos[:n_edit_rows]][:, l],
                                                           k, ~reserved, usage[l]) for l in range(probs.shape[2])])
                            for i in range(len(requests))])
                # guided loss at the key tokens, toward each edit's preset experts (every layer)
                edit_probs = probs[:n_edit_rows][key_pos[:n_edit_rows]]  # [N, L, E]
                row_owner = owner_t[:, None].expand(-1, key_pos.shape[1])[key_pos[:n_edit_rows]]  # [N]
                target = allocation[row_owner]  # [N, L, E]
                guide = guided_loss(edit_probs.reshape(-1, E), target.reshape(-1, E)) if hparams.guide_weight else lm * 0
                loss = lm + hparams.guide_weight * guide
                null_probs = probs[null_pos]  # [M, L, E]
                if hparams.null_weight > 0:
                    null_target = reserved.expand(null_probs.shape[0], null_probs.shape[1], E)
                    loss = loss + hparams.null_weight * guided_loss(null_probs.reshape(-1, E), null_target.reshape(-1, E))
                with torch.no_grad():
                    chosen = edit_probs.topk(k, dim=-1).indices
                    hit = torch.zeros_like(edit_probs, dtype=torch.bool).scatter_(-1, chosen, True)
                    routed = bool((hit == target).all())
                    if hparams.null_weight > 0 and null_probs.numel():
                        null_hit = torch.zeros_like(null_probs, dtype=torch.bool).scatter_(-1, null_probs.topk(k, dim=-1).indices, True)
                        routed = routed and float((null_hit == reserved).all(-1).all(-1).float().mean()) >= 0.99
                lm_losses.append(float(lm.detach()))
                return loss, float(lm.detach()) + (0.0 if routed else 1.0)

            with only_these_trainable(model, trainable):
                metrics = adam_steps([p for n, p in model.named_parameters() if n in set(trainable)], loss_fn,
                                     steps=hparams.steps, lr=hparams.lr, weight_decay=hparams.weight_decay,
                                     early_stop_loss=hparams.early_stop_loss)
                with torch.no_grad():
                    ids, attn, _, key_pos, _ = make_batch([])
                    runtime.key_mask = key_pos
                    model(input_ids=ids, attention_mask=attn)
                    new_codes = runtime.last_codes[key_pos].cpu()  # [N, L*E]
                    new_keys = torch.nn.functional.normalize(runtime.last_query[key_pos].float(), dim=-1).cpu()  # [N, d]
            if hparams.null_weight > 0:
                # never store a code that would open the door to the reserved "defer" allocation
                null_code = reserved.cpu().repeat(len(targets))
                new_codes = new_codes[min_hamming(new_codes, null_code[None, :]) >= hparams.threshold]
            runtime.codes = unique_codes(torch.cat([runtime.codes.cpu(), new_codes.bool()]))
            if hparams.key_similarity is not None:
                runtime.keys = torch.cat([runtime.keys.cpu() if runtime.keys is not None else new_keys[:0], new_keys])
            new_state = export_state(inst, config)
        finally:
            runtime.key_mask = None
            inst.revert()
            model.train(was_training)
        log.info("elder: %d requests, %d steps, lm loss %.4f -> %.4f, %d stored codes",
                 len(requests), len(metrics), lm_losses[0], lm_losses[-1], int(new_state["elder.codes"].shape[0]))
        return EditResult(
            tensors={},
            state=new_state,
            apply_kind="elder",
            stats={"steps": len(metrics), "loss_first": lm_losses[0], "loss_last": lm_losses[-1],
                   "codes": int(new_state["elder.codes"].shape[0]), "seconds": time.perf_counter() - started},
        )
