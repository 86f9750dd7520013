"""UltraEdit's math: lifelong feature statistics, normalisation, pseudo values and the ridge solve.

UltraEdit (Gu et al., arXiv 2505.14679) edits a linear module W (d1 x d0, keys in, values out) with
no training, no subject and no memory beyond a few running statistics. Per editing turn, for every
token position that predicts an answer token:

    k_i  [d0]  the module's input (the key),
    g_i  [d1]  the gradient of the edit loss (NLL of the new answers) w.r.t. the module's output.

1. Lifelong statistics. The mean and the sum of squared deviations (M2) of keys and of gradients are
   kept over every position of every turn ever edited, and merged with the turn's own rows first
   (Chan et al.'s pairwise update, so a chain of turns gives exactly the statistics of all rows at once).
2. Normalisation: k̂ = (k - μ_k) / (σ_k + ε), ĝ = (g - μ_g) / (σ_g + ε), σ = sqrt(M2 / (N - 1)).
3. Pseudo values, the output shift a gradient step on the normalised features would make (MEND's
   rank-one identity ΔW k = -η ĝ k̂^T k̂):  v_i = -η ||k̂_i||² ĝ_i   [d1].
4. Ridge solve on the raw keys K [N, d0] and values V [N, d1]:
       ΔW = argmin ||ΔW K^T - V^T||² + λ ||ΔW||²  =  V^T K (K^T K + λ I)^{-1}  =  V^T (K K^T + λ I)^{-1} K.
   The second form solves an N x N system (N positions, usually far fewer than d0) and is stored as the
   factors u = V^T (K K^T + λ I)^{-1} [d1, N], v = K [N, d0]; the first is used when N > d0.

Where this differs from the reference code (XiaojieGu/UltraEdit, EasyEdit's `ultraedit`):
- statistics are kept per edited module; the reference shares one normaliser between modules of the
  same shape (an artefact of its hypernetwork lineage), so their statistics pool across layers;
- M2 is merged exactly (+ Σ(x - x̄)² of the turn); the reference adds n x the turn's *unbiased*
  variance, which overcounts by one row's worth per turn;
- the edit loss is the sum over requests of each request's mean answer-token NLL, so a request's
  gradient does not depend on how the batch is chunked; the reference takes the mean over all answer
  tokens of a chunk of 10 requests (a constant factor per chunk, which the normalisation removes);
- only MLP output projections are edited (the module the service's layouts name in every family);
  the reference also edits LLaMA-3's and Qwen's gate/up projections.
The ridge λ (1 in the reference, where it is hard-coded) and the step η are hyperparameters.

Shapes: keys [N, d0], grads [N, d1], statistics [d0] / [d1], all float64.

## UltraEdit (methods.md section; `/work/shared/design/methods.md` is read-only, so it lives here)

arXiv 2505.14679, code XiaojieGu/UltraEdit and EasyEdit `easyeditor/models/ultraedit` **[code]**.
Training-free (one forward/backward per turn, no optimisation loop), subject-free (every answer-token
position is a key; no subject token, no target vector), memory-free (no codebook or side network; only
the per-module statistics above are carried, 2 (d0 + d1) + 1 numbers per module). No corpus covariance
C0, so nothing protects unrelated keys except the ridge and the normalisation.
- Turns: the reference edits 100 requests per turn (`n_edits`), 10 per backward pass, statistics
  carried over all turns. Here a refresh is split into `edits_per_turn` turns, each in place before
  the next reads its features; the statistics ride in the delta (`state::ultraedit.<module>.*`).
- Defaults: `gptj` = the reference's GPT-J zsRE/UltraEditBench run (fc_out of blocks 18-26 of 28);
  `llama` = its Mistral-7B run (down_proj of 29, 30 of 32); `gpt2` and `gpt_neox` have no reference run
  and take GPT-J's relative depth (`_depth` 28); η = 1e-6 (`config/editor/ultraedit.yaml`), λ = 1.
  η is not scale-free: ||k̂||² ≈ d0, and η = 1e-6 was tuned on 6-8B models. On SmolLM2-135M (llama
  profile, layers 27-28, 6 handmade capital/creator edits) η = 1e-6 and 1e-5 wrote nothing; 1e-3
  wrote 4/6 with four unrelated probes unchanged; 3e-3 wrote 5/6 and broke two of them.
- `demo` (4-layer demo GPT-2, d0 = 512), measured with one thread: block 3, η = 0.01, λ = 1. First
  change batch (36 requests, 14 with answers the model can write): greedy efficacy 13/14, paraphrases
  0.79, 77% of 200 unrelated facts unchanged, 0.05 s. Five sequential refreshes (statistics carried):
  efficacy of each new batch 0.93, 0.57, 0.58, 0.38, 0.39; 50% of the 74 still-current edits retained;
  58% of unrelated facts unchanged. η = 0.006 trades efficacy (0.79) for locality (0.91). An experiment
  without mean-centring the gradients (not the reference, not implemented) kept later batches at
  0.57-0.83 efficacy and 74% retention: the carried gradient mean is a bias on every later turn while
  turns are few. The 2-layer tiny test model needs block 1, η = 0.03, λ = 0.3 for 9/11 (locality ~10%).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Added to σ before dividing (float32's machine epsilon, as the reference uses).
NORM_EPS = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True)
class Moments:
    """Running count, mean [d] and sum of squared deviations M2 [d] of rows seen so far (float64)."""

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def empty(cls, dim: int, device: torch.device | str = "cpu") -> "Moments":
        zeros = torch.zeros(dim, dtype=torch.float64, device=device)
        return cls(0, zeros, zeros.clone())

    @property
    def dim(self) -> int:
        return int(self.mean.numel())

    def std(self) -> torch.Tensor:
        """Sample standard deviation per dimension (0 while fewer than two rows were seen)."""
        return (self.m2 / max(self.count - 1, 1)).clamp(min=0).sqrt()

    def to(self, device: torch.device | str) -> "Moments":
        return Moments(self.count, self.mean.to(device), self.m2.to(device))


def merge(prior: Moments, rows: torch.Tensor) -> Moments:
    """`prior` updated with `rows` [n, d] (Chan et al.): the moments of every row seen, in any chunking."""
    x = rows.to(dtype=torch.float64, device=prior.mean.device)
    n = int(x.size(0))
    if n == 0:
        return prior
    batch_mean = x.mean(0)  # [d]
    batch_m2 = (x - batch_mean).pow(2).sum(0)  # [d]
    total = prior.count + n
    delta = batch_mean - prior.mean
    mean = prior.mean + delta * (n / total)
    m2 = prior.m2 + batch_m2 + delta.pow(2) * (prior.count * n / total)
    return Moments(total, mean, m2)


def normalise(rows: torch.Tensor, moments: Moments, eps: float = NORM_EPS) -> torch.Tensor:
    """(x - μ) / (σ + ε) per dimension, in float64: rows on the scale of everything edited so far."""
    x = rows.to(dtype=torch.float64, device=moments.mean.device)
    return (x - moments.mean) / (moments.std() + eps)


def pseudo_values(keys_hat: torch.Tensor, grads_hat: torch.Tensor, lr: float) -> torch.Tensor:
    """v_i = -lr ||k̂_i||² ĝ_i [N, d1]: the output change of one normalised gradient step at key i."""
    return -lr * keys_hat.pow(2).sum(-1, keepdim=True) * grads_hat


def ridge_update(keys: torch.Tensor, values: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ΔW [d1, d0] minimising ||ΔW K^T - V^T||² + ridge ||ΔW||², for keys K [N, d0] and values V [N, d1].

    Returns (u, v) with ΔW = u @ v: u [d1, N], v = K [N, d0] when N <= d0 (an N x N solve), else
    (ΔW, None) from the d0 x d0 normal equations. Both in float64.
    """
    k = keys.double()
    vals = values.to(dtype=torch.float64, device=k.device)
    n, d0 = k.shape
    if n <= d0:
        gram = k @ k.T + ridge * torch.eye(n, dtype=k.dtype, device=k.device)  # [N, N]
        coeff = torch.linalg.solve(gram, vals)  # [N, d1]
        return coeff.T.contiguous(), k.contiguous()
    normal = k.T @ k + ridge * torch.eye(d0, dtype=k.dtype, device=k.device)  # [d0, d0]
    update_t = torch.linalg.solve(normal, k.T @ vals)  # [d0, d1]
    return update_t.T.contiguous(), None


def update_outputs(keys: torch.Tensor, u: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
    """ΔW k for each key [N, d0] -> [N, d1], for ΔW = u @ v (or u) as `ridge_update` returns it, never
    forming a dense d1 x d0 product of factors."""
    k = keys.to(dtype=u.dtype, device=u.device)
    return (k @ u.T) if v is None else (k @ v.T) @ u.T


def update_norm(u: torch.Tensor, v: torch.Tensor | None) -> float:
    """||ΔW||_F of ΔW = u @ v (or u): sqrt(Σ (u^T u) ∘ (v v^T)) for factors."""
    if v is None:
        return float(u.norm())
    return float(((u.T @ u) * (v @ v.T)).sum().clamp(min=0).sqrt())
