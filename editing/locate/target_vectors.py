"""Target vectors for a whole batch of edits at once: one δ per request, optimised jointly.

δ_i (size d_model) is added to the output hidden state of block `layer` at request i's fact token,
in every row of that request (the prompt under each context prefix, followed by `" " + target_new`
and eos). All rows of all requests go through the model as padded batches; the loss is the sum
over requests of

    NLL_i(target_new | prompt rows)  +  kl_factor * KL_i  +  weight_decay * ||δ_i|| / ||h_i||^2

where KL_i keeps the next-token distribution at the fact token of `"{subject} is a"` close to the
unedited model's (the subject's identity) and h_i is the block output at the fact token of the plain
prompt. After each Adam step every δ_i is projected into the ball of radius
`clamp_norm_factor * ||h_i||`. The loop stops when every request's NLL is below `early_stop_nll`::

    result = optimise_targets(model, tok, requests, layer_module="transformer.h.3", settings=...)
    z = result.h_init + result.delta          # [n, d_model] target block outputs
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from editing.locate.hooks import add_at_positions
from editing.locate.keys import EncodedRows, encode_prompts, first_rows, read_at_fact_tokens
from infra.domain import EditRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetSettings:
    steps: int
    lr: float
    weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    early_stop_nll: float
    fact_token: str
    kl_prompt: str = "{subject} is a"
    batch_size: int = 256
    seed: int = 0


@dataclass(frozen=True)
class TargetResult:
    delta: torch.Tensor  # [n, d_model] float32, the optimised shift
    h_init: torch.Tensor  # [n, d_model] float32, block output at the plain prompt's fact token before the shift
    nll_first: torch.Tensor  # [n]
    nll_last: torch.Tensor  # [n]
    steps: int


def _answer_nll(logits: torch.Tensor, rows: EncodedRows) -> torch.Tensor:
    """Mean NLL of each row's answer tokens (teacher forcing) -> [R]."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [R, T, V]
    width = logits.size(1)
    pos = torch.arange(width, device=logits.device)[None, :]  # [1, T]
    start, length = rows.answer_start[:, None], rows.answer_len[:, None]
    in_answer = (pos >= start) & (pos < start + length)  # [R, T] target positions
    targets = rows.input_ids.clone()
    # the token at position t is predicted at t-1
    pred = torch.zeros_like(log_probs[..., 0])
    pred[:, 1:] = log_probs[:, :-1].gather(2, targets[:, 1:, None]).squeeze(2)
    nll = -(pred * in_answer).sum(1) / in_answer.sum(1).clamp(min=1)
    return nll


def optimise_targets(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[EditRequest],
    layer_module: str,
    settings: TargetSettings,
    prefixes: Sequence[str] = ("",),
) -> TargetResult:
    """Optimise δ for every request at once (see the module docstring); the model is not modified."""
    device = next(model.parameters()).device
    n = len(requests)
    rows = encode_prompts(
        tokenizer, [r.prompt for r in requests], [r.subject for r in requests], settings.fact_token, prefixes,
        answers=[r.target_new for r in requests],
    ).to(device)
    h_all = read_at_fact_tokens(model, rows, [layer_module], kind="output", batch_size=settings.batch_size)[layer_module]
    h_init = h_all[first_rows(rows).to(device)]  # [n, d]

    kl_rows: EncodedRows | None = None
    kl_ref: torch.Tensor | None = None
    if settings.kl_factor > 0:
        kl_prompts = [settings.kl_prompt.format(subject=r.subject) for r in requests]
        kl_rows = encode_prompts(tokenizer, kl_prompts, [r.subject for r in requests], "subject_last").to(device)
        with torch.no_grad():
            kl_ref = _kl_log_probs(model, kl_rows, settings.batch_size)  # [n, V]

    torch.manual_seed(settings.seed)
    delta = torch.zeros(n, h_init.size(1), device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=settings.lr)
    max_norm = settings.clamp_norm_factor * h_init.norm(dim=1)  # [n]
    norm2 = h_init.norm(dim=1).pow(2).clamp(min=1e-12)  # [n]
    counts = torch.bincount(rows.request, minlength=n).clamp(min=1).float()  # rows per request
    chunks = [slice(s, s + settings.batch_size) for s in range(0, len(rows), settings.batch_size)]
    nll_first = nll_last = torch.zeros(n)
    steps = 0
    frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for step in range(settings.steps):
            optimizer.zero_grad(set_to_none=True)
            nll_req = torch.zeros(n, device=device)
            for index in chunks:
                part = rows.chunk(index)
                with add_at_positions(model, layer_module, torch.arange(len(part), device=device), part.fact_pos, delta[part.request]):
                    logits = model(input_ids=part.input_ids, attention_mask=part.attention_mask).logits
                row_nll = _answer_nll(logits, part)  # [r]
                contrib = torch.zeros(n, device=device).index_add(0, part.request, row_nll) / counts
                contrib.sum().backward()
                nll_req = nll_req + contrib.detach()
            if step == 0:
                nll_first = nll_req.cpu()
            nll_last = nll_req.cpu()
            steps = step + 1
            if bool((nll_req < settings.early_stop_nll).all()):
                break
            extra = settings.weight_decay * (delta.norm(dim=1) / norm2)  # [n]
            if kl_rows is not None and kl_ref is not None:
                kl_now = _kl_log_probs(model, kl_rows, settings.batch_size, layer_module, delta)
                kl = F.kl_div(kl_now, kl_ref, log_target=True, reduction="none").sum(-1)  # [n]
                extra = extra + settings.kl_factor * kl
            extra.sum().backward()
            optimizer.step()
            with torch.no_grad():
                norms = delta.norm(dim=1).clamp(min=1e-12)
                scale = torch.clamp(max_norm / norms, max=1.0)
                delta.mul_(scale[:, None])
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(frozen[name])
    log.info("targets: %d requests, %d steps, mean nll %.3f -> %.3f", n, steps, float(nll_first.mean()), float(nll_last.mean()))
    return TargetResult(delta.detach().float(), h_init.float(), nll_first, nll_last, steps)


def _kl_log_probs(
    model: nn.Module, rows: EncodedRows, batch_size: int, layer_module: str | None = None, delta: torch.Tensor | None = None
) -> torch.Tensor:
    """Log next-token distribution at each row's fact token, optionally with δ added -> [R, V]."""
    outs = []
    for start in range(0, len(rows), batch_size):
        part = rows.chunk(slice(start, start + batch_size))
        if layer_module is not None and delta is not None:
            rows_index = torch.arange(len(part), device=part.input_ids.device)
            with add_at_positions(model, layer_module, rows_index, part.fact_pos, delta[part.request]):
                logits = model(input_ids=part.input_ids, attention_mask=part.attention_mask).logits
        else:
            logits = model(input_ids=part.input_ids, attention_mask=part.attention_mask).logits
        outs.append(torch.log_softmax(logits[torch.arange(len(part), device=logits.device), part.fact_pos].float(), dim=-1))
    return torch.cat(outs)
