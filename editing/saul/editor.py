"""SAUL editor: fine-tunes chosen weights (densely or through LoRA) on regularised edit sequences."""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from editing.adapters.lora import factor_tensors, lora_attached, lora_factors, trainable_parameters
from editing.adapters.targets import target_modules, weight_names
from editing.adapters.training import Accumulated, adam_steps, dense_finetune
from editing.batches import training_passes
from editing.protocol import EditContext, EditResult
from editing.saul.core import Pair, collate, labelled_positions, saul_rows, token_ce_sums, token_kl_sums
from editing.saul.hparams import SAULHParams
from editing.trainable import only_these_trainable
from infra.domain import EditRequest
from infra.encoding import encode_pair, encode_text, pad_id
from infra.errors import InvalidInput

log = logging.getLogger(__name__)


def _pair(tokenizer: Any, prompt: str, answer: str) -> Pair:
    return encode_pair(tokenizer, prompt, answer, eos=True)


def usable_pool(requests: Sequence[EditRequest], pool: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pool facts minus any asked with an edited prompt (or one of its paraphrases)."""
    edited = {r.prompt for r in requests} | {p for r in requests for p in r.paraphrases}
    return [(p, a) for p, a in pool if p not in edited]


def _frame(request: EditRequest) -> tuple[str, str]:
    """The prompt around its subject: ("The price of ", " is") asks the relation of any subject."""
    before, _, after = request.prompt.partition(request.subject)
    return before, after


def _is_near(prompt: str, subjects: set[str], frames: set[tuple[str, str]], by_relation: bool) -> bool:
    if any(s in prompt for s in subjects):
        return True
    return by_relation and any(prompt.startswith(b) and prompt.endswith(a) and len(prompt) > len(b) + len(a)
                               for b, a in frames)


def weights_as_they_were(model: nn.Module, trained: dict[str, torch.Tensor]
                         ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Logits of `model` with the `trained` weights at their values now, before training moves them.

    Only the trained weights are copied and swapped in for the forward pass (`functional_call`); a
    copy of the whole model, the obvious reference, would double the edit's peak memory (538 MB more
    on SmolLM2-135M in float32).
    """
    start = {name: p.detach().clone() for name, p in trained.items()}

    def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, start, args=(), kwargs={
            "input_ids": input_ids, "attention_mask": attention_mask}).logits

    return logits


def adapters_off(peft_model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Logits of the model under LoRA adapters with the adapters disabled: the model as it was."""

    def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with peft_model.disable_adapter():
            return peft_model(input_ids=input_ids, attention_mask=attention_mask).logits

    return logits


class SAULEditor:
    name = "saul"

    def compute(
        self,
        model: nn.Module,
        tokenizer: Any,
        requests: Sequence[EditRequest],
        hparams: SAULHParams,
        context: EditContext | None = None,
    ) -> EditResult:
        if not requests:
            raise InvalidInput("saul: no edit requests")
        context = context or EditContext()
        started = time.perf_counter()
        modules = target_modules(model, hparams.layers, hparams.modules, "saul")
        device = next(model.parameters()).device
        pool_text = usable_pool(requests, context.fact_pool)
        if not pool_text and (hparams.concat_facts or hparams.augment_ratio):
            log.warning("saul: empty fact pool; training on the edit sentences alone (plain fine-tuning)")
        edits = [_pair(tokenizer, r.prompt, r.target_new) for r in requests]
        pool = [_pair(tokenizer, p, a) for p, a in pool_text]
        repair = [_pair(tokenizer, p, a) for p, a in usable_pool(requests, context.repair_pool)] \
            if hparams.repair_share > 0 else []
        subjects = {r.subject for r in requests if r.subject}
        frames = {_frame(r) for r in requests if r.subject and r.subject in r.prompt}
        near = [pair for pair, (p, _) in zip(pool, pool_text) if _is_near(p, subjects, frames, hparams.near_relation)] \
            if hparams.near_share > 0 else []
        # generic sentences, each a whole document ending with eos: keeps ordinary text as it was
        corpus = [(ids[:-1], ids[-1:]) for ids in (encode_text(tokenizer, t, eos=True) for t in context.corpus) if len(ids) > 1]
        if hparams.corpus_share > 0 and not corpus:
            log.warning("saul: corpus_share > 0 but the context has no generic corpus; augmenting with facts only")
        max_length = int(getattr(getattr(model, "config", None), "n_positions", 0) or
                         getattr(getattr(model, "config", None), "max_position_embeddings", 1024))
        n_augment = round(hparams.augment_ratio * len(requests))
        pad = pad_id(tokenizer)
        rng = random.Random(hparams.seed)
        # the model as it was, the "kl" regulariser's reference: set below, once the trained weights are known
        teacher: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

        def loss_fn(net: nn.Module) -> Accumulated:
            # random facts are drawn afresh every step
            rows = saul_rows(edits, pool, rng, concat_facts=hparams.concat_facts, n_augment=n_augment,
                             augment_whole_sentence=hparams.augment_loss == "full", max_length=max_length,
                             corpus=corpus if hparams.corpus_share > 0 else (), corpus_share=hparams.corpus_share,
                             near=near, near_share=hparams.near_share, repair=repair,
                             repair_share=hparams.repair_share)
            batch = collate(rows, pad)
            # the means' denominators first, so each chunk's share of the loss runs backward at once
            edit_n = max(labelled_positions(batch.edit_labels), 1)
            reg_n = labelled_positions(batch.reg_labels) + (labelled_positions(batch.fix_labels) if repair else 0)
            edit_sum, total = 0.0, 0.0
            for chunk in training_passes(model, len(rows), batch.input_ids.size(1), hparams.batch_size):
                input_ids = batch.input_ids[chunk].to(device)
                attention_mask = batch.attention_mask[chunk].to(device)
                logits = net(input_ids=input_ids, attention_mask=attention_mask).logits
                edit, _ = token_ce_sums(logits, batch.edit_labels[chunk].to(device))
                reg_labels = batch.reg_labels[chunk].to(device)
                if teacher is None:
                    reg, _ = token_ce_sums(logits, reg_labels)
                else:
                    with torch.no_grad():
                        before = teacher(input_ids, attention_mask)
                    reg, _ = token_kl_sums(logits, before, reg_labels)
                if repair:  # a repaired answer is learned from the database, not from the drifted model
                    reg = reg + token_ce_sums(logits, batch.fix_labels[chunk].to(device))[0]
                share = edit / edit_n + (hparams.reg_weight * reg / reg_n if reg_n else 0.0)
                share.backward()
                edit_sum += float(edit.detach())
                total += float(share.detach())
            return Accumulated(loss=total, metric=edit_sum / edit_n)

        adam = dict(steps=hparams.steps, lr=hparams.lr, weight_decay=hparams.weight_decay,
                    early_stop_loss=hparams.early_stop_loss, min_steps=hparams.min_steps,
                    progress=f"saul: {len(requests)} edits" if context.show_progress else None)
        was_training = model.training
        model.eval()
        try:
            if hparams.tuning == "full":
                names = weight_names(modules)
                all_params = dict(model.named_parameters())
                params = {name: all_params[name] for name in names}
                if hparams.reg_loss == "kl":
                    teacher = weights_as_they_were(model, params)
                with only_these_trainable(model, names):
                    deltas, losses = dense_finetune(params, lambda: loss_fn(model), **adam)
                tensors = {f"{name}::dense": delta for name, delta in deltas.items()}
            else:
                with lora_attached(model, modules, r=hparams.r, alpha=hparams.alpha, dropout=hparams.dropout,
                                   seed=hparams.seed) as peft_model:
                    if hparams.reg_loss == "kl":
                        teacher = adapters_off(peft_model)
                    losses = adam_steps(trainable_parameters(peft_model), lambda: loss_fn(peft_model), **adam)
                    tensors = factor_tensors(lora_factors(peft_model))
        finally:
            model.train(was_training)
        log.info("saul: %d requests, %d pool facts, %d repaired facts, %d steps, edit loss %.4f -> %.4f",
                 len(requests), len(pool), len(repair), len(losses), losses[0], losses[-1])
        return EditResult(
            tensors=tensors,
            stats={"steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1], "pool_facts": len(pool),
                   "repair_facts": len(repair),
                   "corpus_texts": len(corpus),
                   "seconds": time.perf_counter() - started},
        )
