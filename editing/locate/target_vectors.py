"""Target vectors for a whole batch of edits at once: one δ per request, optimised jointly.

δ_i (size d_model) is added to the output hidden state of block `layer` at request i's fact token,
in every row of that request (the prompt under each context prefix, followed by `" " + target_new`
and eos). All rows of all requests go through the model as padded batches; the loss is the sum
over requests of

    NLL_i(target_new | prompt rows)  +  kl_factor * KL_i  +  weight_decay * ||δ_i|| / ||h_i||^2

where KL_i keeps the next-token distribution at the fact token (`fact_token`, as for the prompts)
of `"{subject} is a"` close to the unedited model's (the subject's identity) and h_i is the block
output at the fact token of the plain prompt. After each Adam step every δ_i is projected into the
ball of radius `clamp_norm_factor * ||h_i||`. A request whose NLL is below `early_stop_nll` stops (its rows leave
the batch, so easy facts cost few passes); the loop ends when every request has stopped::

    result = optimise_targets(model, tok, requests, layer_module="transformer.h.3", settings=...)
    z = result.h_init + result.delta          # [n, d_model] target block outputs
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from editing.locate.hooks import add_at_positions
from editing.locate.keys import EncodedRows, encode_prompts, first_rows, read_at_fact_tokens
from editing.locate.upper_stack import UpperStack
from editing.protocol import BlobCache
from infra.domain import EditRequest
from infra.errors import InvalidInput

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
    group_size: int = 0  # requests optimised jointly; 0 = the whole batch


@dataclass(frozen=True)
class TargetResult:
    delta: torch.Tensor  # [n, d_model] float32, the optimised shift
    h_init: torch.Tensor  # [n, d_model] float32, block output at the plain prompt's fact token before the shift
    nll_first: torch.Tensor  # [n]
    nll_last: torch.Tensor  # [n]
    steps: int
    row_passes: int = 0  # forward+backward row evaluations spent (the optimisation's cost)


def essence_rows(tokenizer: Any, requests: Sequence[EditRequest], settings: TargetSettings) -> EncodedRows:
    """The KL prompts (`settings.kl_prompt`, "{subject} is a"), read at the same fact token the shift
    is added at, whatever `fact_token` is (ROME and MEMIT look both up the same way)."""
    prompts = [settings.kl_prompt.format(subject=r.subject) for r in requests]
    return encode_prompts(tokenizer, prompts, [r.subject for r in requests], settings.fact_token)


def optimise_targets(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[EditRequest],
    layer_module: str,
    settings: TargetSettings,
    prefixes: Sequence[str] = ("",),
) -> TargetResult:
    """Optimise δ for every request (see the module docstring); the model is not modified.

    With `settings.group_size` > 0 the requests are optimised in consecutive groups of that size
    (1 reproduces the reference one-request-at-a-time loop; a bound on device memory otherwise).
    """
    group = settings.group_size
    if group <= 0 or group >= len(requests):
        return _optimise_group(model, tokenizer, requests, layer_module, settings, prefixes)
    parts = [
        _optimise_group(model, tokenizer, requests[s : s + group], layer_module, settings, prefixes)
        for s in range(0, len(requests), group)
    ]
    return TargetResult(
        torch.cat([p.delta for p in parts]), torch.cat([p.h_init for p in parts]),
        torch.cat([p.nll_first for p in parts]), torch.cat([p.nll_last for p in parts]),
        max(p.steps for p in parts), sum(p.row_passes for p in parts),
    )


#: Bump when the optimisation changes in a way the settings do not capture: cached targets go stale.
TARGETS_FORMAT = 1
CACHE_PREFIX = "locate-targets"


def target_cache_key(fingerprint: str, layer_module: str, settings: TargetSettings, prefixes: Sequence[str], request: EditRequest) -> str:
    """Where one request's target vector is cached: everything that determines it, hashed.

    Batch and group sizes are left out: a request's vector does not depend on its batch-mates
    (tests/test_locate_math.py checks batched against one-at-a-time).
    """
    recipe = {
        "format": TARGETS_FORMAT, "module": layer_module, "prefixes": list(prefixes),
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("batch_size", "group_size")},
        "subject": request.subject, "prompt": request.prompt, "target_new": request.target_new,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return f"{CACHE_PREFIX}/v{TARGETS_FORMAT}/{fingerprint}/{digest}.safetensors"


def cached_targets(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[EditRequest],
    layer_module: str,
    settings: TargetSettings,
    prefixes: Sequence[str],
    cache: BlobCache,
    fingerprint: str,
) -> tuple[TargetResult, int]:
    """`optimise_targets` with every request's vector cached under the model's fingerprint.

    Only for a model that *is* the one `fingerprint` names (a cumulative refresh computes on the
    base model): then a fact's vector is the same in every refresh, and a refresh optimises only
    the facts new to the ledger. Returns (the result in request order, how many came from the cache).
    """
    if not fingerprint:
        raise InvalidInput("cached target vectors need the model's fingerprint")
    keys = [target_cache_key(fingerprint, layer_module, settings, prefixes, r) for r in requests]
    found: dict[int, dict[str, torch.Tensor]] = {}
    for i, key in enumerate(keys):
        blob = cache.get_blob(key)
        if blob is not None:
            found[i] = load_safetensors(blob)
    missing = [i for i in range(len(requests)) if i not in found]
    steps = row_passes = 0
    if missing:
        fresh = optimise_targets(model, tokenizer, [requests[i] for i in missing], layer_module, settings, prefixes)
        steps, row_passes = fresh.steps, fresh.row_passes
        for j, i in enumerate(missing):
            one = {"delta": fresh.delta[j].cpu().contiguous(), "h_init": fresh.h_init[j].cpu().contiguous(),
                   "nll": torch.stack([fresh.nll_first[j], fresh.nll_last[j]]).float().cpu()}
            cache.put_blob(keys[i], save_safetensors(one))
            found[i] = one
    device = next(model.parameters()).device
    rows = [found[i] for i in range(len(requests))]
    result = TargetResult(
        torch.stack([r["delta"] for r in rows]).float().to(device), torch.stack([r["h_init"] for r in rows]).float().to(device),
        torch.stack([r["nll"][0] for r in rows]), torch.stack([r["nll"][1] for r in rows]), steps, row_passes,
    )
    return result, len(requests) - len(missing)


def _optimise_group(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[EditRequest],
    layer_module: str,
    settings: TargetSettings,
    prefixes: Sequence[str],
) -> TargetResult:
    """One joint optimisation. A request whose NLL falls below `early_stop_nll` is frozen and its
    rows leave the batch, as it would stop in the one-at-a-time loop; the rest go on.

    Where the model allows it (`UpperStack`), the blocks up to `layer_module` run once per row and
    each step runs only the blocks above and the LM head at the positions the loss reads."""
    device = next(model.parameters()).device
    n = len(requests)
    rows = encode_prompts(
        tokenizer, [r.prompt for r in requests], [r.subject for r in requests], settings.fact_token, prefixes,
        answers=[r.target_new for r in requests],
    ).to(device)
    kl_rows = essence_rows(tokenizer, requests, settings).to(device) if settings.kl_factor > 0 else None
    runner = _Runner.for_rows(model, layer_module, settings.batch_size, rows, kl_rows)
    h_init = runner.fact_hidden()[first_rows(rows).to(device)]  # [n, d]

    kl_ref: torch.Tensor | None = None
    if kl_rows is not None:
        with torch.no_grad():
            kl_ref = runner.kl_log_probs(torch.arange(n, device=device), None)  # [n, V]

    torch.manual_seed(settings.seed)
    delta = torch.zeros(n, h_init.size(1), device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=settings.lr)
    max_norm = settings.clamp_norm_factor * h_init.norm(dim=1)  # [n]
    norm2 = h_init.norm(dim=1).pow(2).clamp(min=1e-12)  # [n]
    counts = torch.bincount(rows.request, minlength=n).clamp(min=1).float()  # rows per request
    active = torch.ones(n, dtype=torch.bool, device=device)
    nll_first = torch.zeros(n)
    nll_last = torch.full((n,), float("nan"))
    steps = row_passes = 0
    frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for step in range(settings.steps):
            live_index = torch.nonzero(active[rows.request]).squeeze(1)
            optimizer.zero_grad(set_to_none=True)
            nll_req = torch.zeros(n, device=device)
            for start in range(0, len(live_index), settings.batch_size):
                index = live_index[start : start + settings.batch_size]
                part = rows.chunk(index)
                row_nll = runner.answer_nll(index, part, delta)  # [r]
                contrib = torch.zeros(n, device=device).index_add(0, part.request, row_nll) / counts
                contrib.sum().backward()
                nll_req = nll_req + contrib.detach()
            row_passes += len(live_index)
            measured = nll_req.cpu()
            if step == 0:
                nll_first = measured.clone()
            nll_last = torch.where(active.cpu(), measured, nll_last)
            steps = step + 1
            active &= (nll_req >= settings.early_stop_nll)
            if not bool(active.any()):
                break
            idx = torch.nonzero(active).squeeze(1)
            extra = settings.weight_decay * (delta[idx].norm(dim=1) / norm2[idx])  # [a]
            if kl_ref is not None:
                kl_now = runner.kl_log_probs(idx, delta)
                kl = F.kl_div(kl_now, kl_ref[idx], log_target=True, reduction="none").sum(-1)  # [a]
                extra = extra + settings.kl_factor * kl
            extra.sum().backward()
            kept = delta.detach()[~active].clone()
            optimizer.step()
            with torch.no_grad():
                delta[~active] = kept  # Adam's momentum must not move a finished request
                norms = delta.norm(dim=1).clamp(min=1e-12)
                scale = torch.clamp(max_norm / norms, max=1.0)
                delta.mul_(scale[:, None])
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(frozen[name])
    log.info("targets: %d requests, %d steps, %d row passes, mean nll %.3f -> %.3f%s",
             n, steps, row_passes, float(nll_first.mean()), float(nll_last.mean()),
             "" if runner.stack is None else " (blocks above the shift only)")
    return TargetResult(delta.detach().float(), h_init.float(), nll_first, nll_last, steps, row_passes)


#: Block outputs cached for replay at most this large (bytes); above it every step runs the whole model.
REPLAY_BUDGET = 1 << 30


def answer_positions(rows: EncodedRows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each row's answer tokens are predicted: (row, position, token), one entry per token.

    The token at position t is predicted at t-1, so an answer at [start, start+len) is read at
    [start-1, start+len-1)."""
    lens = rows.answer_len
    row = torch.repeat_interleave(torch.arange(len(rows), device=lens.device), lens)
    within = torch.arange(int(lens.sum()), device=lens.device) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
    position = rows.answer_start[row] + within - 1
    return row, position, rows.input_ids[row, position + 1]


@dataclass
class _Runner:
    """Forward passes of the optimisation: whole-model, or replayed above the shifted block."""

    model: nn.Module
    layer_module: str
    batch_size: int
    rows: EncodedRows
    kl_rows: EncodedRows | None
    stack: UpperStack | None
    cached: torch.Tensor | None  # [R, T, d] block outputs of `rows`
    kl_cached: torch.Tensor | None

    @classmethod
    def for_rows(cls, model: nn.Module, layer_module: str, batch_size: int, rows: EncodedRows, kl_rows: EncodedRows | None) -> "_Runner":
        stack = UpperStack.for_model(model, layer_module)
        width = model.get_input_embeddings().embedding_dim
        tokens = rows.input_ids.numel() + (kl_rows.input_ids.numel() if kl_rows is not None else 0)
        cached = kl_cached = None
        if stack is not None and tokens * width * 4 <= REPLAY_BUDGET:
            cached = stack.block_outputs(rows.input_ids, rows.attention_mask, batch_size)
            if cached is not None and kl_rows is not None:
                kl_cached = stack.block_outputs(kl_rows.input_ids, kl_rows.attention_mask, batch_size)
        if cached is None:
            stack = None
        return cls(model, layer_module, batch_size, rows, kl_rows, stack, cached, kl_cached)

    def fact_hidden(self) -> torch.Tensor:
        """Block L's output at every row's fact token: [R, d]."""
        if self.cached is not None:
            return self.cached[torch.arange(len(self.rows), device=self.cached.device), self.rows.fact_pos]
        return read_at_fact_tokens(self.model, self.rows, [self.layer_module], kind="output", batch_size=self.batch_size)[self.layer_module]

    def _logits_at(self, part: EncodedRows, cached: torch.Tensor | None, delta: torch.Tensor | None,
                   at_rows: torch.Tensor, at_positions: torch.Tensor) -> torch.Tensor:
        """Logits [N, V] at (at_rows, at_positions) of `part` with δ added at its fact tokens."""
        shift = (
            add_at_positions(self.model, self.layer_module, torch.arange(len(part), device=part.input_ids.device),
                             part.fact_pos, delta[part.request])
            if delta is not None else nullcontext()
        )
        if self.stack is None or cached is None:
            with shift:
                logits = self.model(input_ids=part.input_ids, attention_mask=part.attention_mask).logits
            return logits[at_rows, at_positions]
        with self.stack.replaying() as replay, shift:  # the hook must find the replayed block
            replay.value = cached
            hidden = self.stack.final_hidden(part.input_ids, part.attention_mask)
        return self.stack.logits_at(hidden, at_rows, at_positions)

    def answer_nll(self, index: torch.Tensor, part: EncodedRows, delta: torch.Tensor) -> torch.Tensor:
        """Mean NLL of each row's answer tokens (teacher forcing) with δ added -> [r]."""
        at_rows, at_positions, tokens = answer_positions(part)
        cached = self.cached[index] if self.cached is not None else None
        log_probs = torch.log_softmax(self._logits_at(part, cached, delta, at_rows, at_positions).float(), dim=-1)
        token_nll = -log_probs.gather(1, tokens[:, None]).squeeze(1)
        sums = torch.zeros(len(part), device=token_nll.device).index_add(0, at_rows, token_nll)
        return sums / part.answer_len.clamp(min=1)

    def kl_log_probs(self, requests: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
        """Log next-token distribution at the KL rows' fact tokens (row i is request i) -> [a, V]."""
        assert self.kl_rows is not None
        outs = []
        for start in range(0, len(requests), self.batch_size):
            index = requests[start : start + self.batch_size]
            part = self.kl_rows.chunk(index)
            cached = self.kl_cached[index] if self.kl_cached is not None else None
            at_rows = torch.arange(len(part), device=part.input_ids.device)
            outs.append(torch.log_softmax(self._logits_at(part, cached, delta, at_rows, part.fact_pos).float(), dim=-1))
        return torch.cat(outs)
