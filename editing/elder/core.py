"""ELDER math: top-k routing, the mixture of LoRA experts, binary codes, guided loss. Pure torch.

Shapes: E experts, r rank, k top-k, L adapted modules, C = L*E code bits, N positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def router_probs(query: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(W q + b): query [..., d], weight [E, d], bias [E] -> [..., E] (float32)."""
    return torch.softmax(F.linear(query.float(), weight.float(), bias.float()), dim=-1)


def top_k_gates(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gates, k-hot): the top-k probabilities kept in place, not renormalised, and their 0/1 mask; [..., E]."""
    idx = probs.topk(k, dim=-1).indices  # [..., k]
    khot = torch.zeros_like(probs).scatter_(-1, idx, 1.0)
    return probs * khot, khot.bool()


def moe_lora(x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, gates: torch.Tensor, scaling: float) -> torch.Tensor:
    """Σ_e gates_e · scaling · x A_e B_e.

    x [..., d_in], lora_a [E, d_in, r], lora_b [E, r, d_out], gates [..., E] -> [..., d_out].
    Every expert is computed and weighted (dense), as ELDER does.
    """
    hidden = torch.einsum("...d,edr->...er", x, lora_a.to(x.dtype))  # [..., E, r]
    hidden = hidden * gates.to(x.dtype).unsqueeze(-1) * scaling
    return torch.einsum("...er,ero->...o", hidden, lora_b.to(x.dtype))  # [..., d_out]


def min_hamming(codes: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """Smallest Hamming distance of each code to any stored code: codes [..., C] bool, stored [M, C] bool -> [...].

    With nothing stored, every distance is C + 1 (farther than any code can be).
    """
    if stored.numel() == 0:
        return torch.full(codes.shape[:-1], codes.shape[-1] + 1, dtype=torch.long, device=codes.device)
    flat = codes.reshape(-1, codes.shape[-1]).float()  # [N, C]
    ref = stored.to(codes.device).float()  # [M, C]
    # |a xor b| = |a| + |b| - 2 a.b for 0/1 vectors
    dist = flat.sum(-1, keepdim=True) + ref.sum(-1)[None, :] - 2.0 * flat @ ref.t()  # [N, M]
    return dist.min(dim=-1).values.round().long().reshape(codes.shape[:-1])


def guided_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−Σ_e t_e log p_e, averaged over positions: probs [N, E], target [N, E] (bool: the target experts;
    float: a target distribution, minimised at p = t) -> scalar."""
    if probs.numel() == 0:
        return probs.sum()
    return -(torch.log(probs.clamp_min(1e-9)) * target.float()).sum(-1).mean()


def preferred_experts(probs: torch.Tensor, k: int, allowed: torch.Tensor, usage: torch.Tensor | None = None) -> torch.Tensor:
    """The k experts with the highest mean probability among `allowed`, least-used first.

    probs [N, E], allowed [E] bool, usage [E] (how often stored codes already use each expert, in
    [0, 1]; used ones are passed over so successive edits spread over the experts) -> [E] bool.
    """
    mean = probs.float().mean(0)
    if usage is not None:
        mean = mean - 2.0 * usage.to(mean.device).float()  # probabilities are <= 1: usage dominates
    mean = mean.masked_fill(~allowed, float("-inf"))
    out = torch.zeros(probs.shape[-1], dtype=torch.bool, device=probs.device)
    out[mean.topk(k).indices] = True
    return out


def unique_codes(codes: torch.Tensor) -> torch.Tensor:
    """Distinct rows of a [M, C] bool tensor, in a stable (sorted) order."""
    if codes.numel() == 0:
        return codes.reshape(0, codes.shape[-1] if codes.dim() == 2 else 0).bool()
    return torch.unique(codes.to(torch.uint8), dim=0).bool()


def route_codes(queries: torch.Tensor, routers: list[tuple[torch.Tensor, torch.Tensor]], k: int) -> torch.Tensor:
    """Binary codes of queries under the given routers: queries [K, d], routers [(weight [E, d], bias [E])] * L -> [K, L*E] bool.

    The same code a token with this query gets at serve time (k-hot top-k of every router, concatenated).
    """
    if not routers:
        raise ValueError("route_codes: no routers")
    khots = [top_k_gates(router_probs(queries, w, b), k)[1] for w, b in routers]
    return torch.cat(khots, dim=-1)
