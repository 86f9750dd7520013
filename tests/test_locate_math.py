"""The closed forms of the locate-and-edit editors, on random tensors (float64, no model)."""

from __future__ import annotations

import math

import pytest
import torch

from editing.alphaedit.core import alphaedit_factors, gram_factor, grow_key_factor, null_space_projector
from editing.architecture import LAYOUTS
from editing.locate.weights import packed, update_of
from editing.memit.core import memit_factors
from editing.prune.core import condition_number, restrain, restrain_values, spectral_norm
from editing.rome.core import regularised_inverse_apply, rome_factors


def _low_rank_keys(d0: int, rank: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(d0, rank, generator=g, dtype=torch.float64)
    return basis @ torch.randn(rank, n, generator=g, dtype=torch.float64)  # [d0, n] of rank `rank`


def test_memit_solves_its_normal_equations():
    g = torch.Generator().manual_seed(0)
    d0, d1, n = 24, 16, 5
    k0 = torch.randn(d0, 200, generator=g, dtype=torch.float64)
    mom2 = k0 @ k0.T / 200
    keys = torch.randn(d0, n, generator=g, dtype=torch.float64)
    resid = torch.randn(d1, n, generator=g, dtype=torch.float64)
    u, v = memit_factors(keys, resid, mom2, 3.0)
    delta = u @ v
    lhs = delta @ (3.0 * mom2 + keys @ keys.T)
    torch.testing.assert_close(lhs, resid @ keys.T, rtol=1e-9, atol=1e-9)
    assert u.shape == (d1, n) and v.shape == (n, d0)


def test_alphaedit_update_leaves_preserved_keys_unchanged():
    d0, d1, n = 32, 12, 6
    k0 = _low_rank_keys(d0, rank=20, n=500, seed=1)  # preserved keys span 20 of 32 dimensions
    mom2 = k0 @ k0.T / 500
    projector, dim = null_space_projector(mom2, threshold=1e-8, relative=True)
    assert dim == 12
    g = torch.Generator().manual_seed(2)
    keys = torch.randn(d0, n, generator=g, dtype=torch.float64)
    resid = torch.randn(d1, n, generator=g, dtype=torch.float64)
    earlier = torch.randn(d0, 4, generator=g, dtype=torch.float64)
    for edited_kkt in (None, earlier @ earlier.T):
        u, v = alphaedit_factors(keys, resid, projector, l2=1.0, edited_kkt=edited_kkt)
        delta = u @ v
        # Δ K0 = 0 to float precision, while Δ does move the edited keys
        assert float((delta @ k0).norm()) <= 1e-9 * float(delta.norm() * k0.norm())
        assert float((delta @ keys).norm()) > 0.1 * float(resid.norm())


def test_alphaedit_protects_earlier_edits_keys():
    d0, d1 = 32, 8
    mom2 = torch.eye(d0, dtype=torch.float64) * 1e-6  # nothing preserved: P = I
    projector, dim = null_space_projector(mom2, threshold=1.0)
    assert dim == d0
    g = torch.Generator().manual_seed(3)
    earlier = torch.randn(d0, 3, generator=g, dtype=torch.float64)
    keys = torch.randn(d0, 3, generator=g, dtype=torch.float64)
    resid = torch.randn(d1, 3, generator=g, dtype=torch.float64)
    with_memory = alphaedit_factors(keys, resid, projector, l2=1e-3, edited_kkt=1e4 * earlier @ earlier.T)
    without = alphaedit_factors(keys, resid, projector, l2=1e-3)
    moved_with = float(((with_memory[0] @ with_memory[1]) @ earlier).norm())
    moved_without = float(((without[0] @ without[1]) @ earlier).norm())
    assert moved_with < 0.05 * moved_without


def test_rome_writes_each_fact_exactly_after_the_ones_before():
    g = torch.Generator().manual_seed(4)
    d0, d1, n = 20, 10, 4
    k0 = torch.randn(d0, 300, generator=g, dtype=torch.float64)
    mom2 = k0 @ k0.T / 300
    keys = torch.randn(d0, n, generator=g, dtype=torch.float64)
    resid = torch.randn(d1, n, generator=g, dtype=torch.float64)
    u, v = rome_factors(keys, resid, regularised_inverse_apply(mom2, keys, ridge=0.0))
    for i in range(n):
        so_far = u[:, : i + 1] @ v[: i + 1]
        torch.testing.assert_close(so_far @ keys[:, i], resid[:, i], rtol=1e-9, atol=1e-9)
    # each rank-one update is the minimum-C-norm change that writes its fact
    single_u, single_v = rome_factors(keys[:, :1], resid[:, :1], regularised_inverse_apply(mom2, keys[:, :1], 0.0))
    torch.testing.assert_close(single_u @ single_v, u[:, :1] @ v[:1])


def test_prune_restraint_bounds_singular_values_and_condition_number():
    g = torch.Generator().manual_seed(5)
    d1, d0 = 16, 24
    w = torch.randn(d1, d0, generator=g, dtype=torch.float64)
    sigma_max = spectral_norm(w)
    # an accumulated update with a few huge directions (as many sequential MEMIT edits produce)
    a = torch.linalg.qr(torch.randn(d1, 3, generator=g, dtype=torch.float64))[0]
    b = torch.linalg.qr(torch.randn(d0, 3, generator=g, dtype=torch.float64))[0]
    big = a @ torch.diag(torch.tensor([400.0, 90.0, 0.5 * sigma_max], dtype=torch.float64)) @ b.T
    served, shrunk = restrain(big, sigma_max)
    assert shrunk == 2
    s_new = torch.linalg.svdvals(served)
    bound = sigma_max + math.log(400.0 / sigma_max)
    assert float(s_new[0]) <= bound + 1e-9
    torch.testing.assert_close(s_new[2], torch.tensor(0.5 * sigma_max, dtype=torch.float64))  # small ones untouched
    assert spectral_norm(w + served) <= 2 * sigma_max + math.log(400.0 / sigma_max) + 1e-9
    assert condition_number(w + served) < 0.2 * condition_number(w + big)
    # directions are kept: the restrained update lives in the raw update's singular subspaces
    inside = a @ a.T @ served @ b @ b.T
    torch.testing.assert_close(inside, served, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("reduce", ["log", "linear"])
def test_prune_map_is_continuous_and_monotone(reduce: str):
    sigma = torch.linspace(0.1, 50.0, 500, dtype=torch.float64)
    f = restrain_values(sigma, 5.0, reduce=reduce, alpha=2.0)
    assert bool((f[1:] >= f[:-1]).all())
    at = restrain_values(torch.tensor([5.0 + 1e-9], dtype=torch.float64), 5.0, reduce=reduce, alpha=2.0)
    assert abs(float(at) - 5.0) < 1e-6
    assert bool((f <= sigma + 1e-12).all())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_packed_updates_follow_the_parameter_layout(family: str):
    layout = LAYOUTS[family]
    g = torch.Generator().manual_seed(6)
    u, v = torch.randn(8, 2, generator=g), torch.randn(2, 32, generator=g)  # ΔW [d1=8, d0=32] of rank 2
    tensors = packed(layout, 0, u, v)
    name = layout.mlp_out_weight(0)
    assert f"{name}::u" in tensors  # rank 2 is smaller as factors
    expected = (u @ v).T if layout.transposed_weights else u @ v
    torch.testing.assert_close(update_of(tensors, name), expected)
    dense = packed(layout, 0, torch.randn(8, 8, generator=g), torch.randn(8, 32, generator=g))
    assert set(dense) == {f"{name}::dense"}


def test_carried_key_factor_reproduces_the_sum_of_key_outer_products():
    """AlphaEdit's carried state: the keys themselves while fewer than d0, a square-root factor after,
    always with F F^T equal to the sum of K K^T of every batch so far."""
    g = torch.Generator().manual_seed(5)
    d0 = 16
    batches = [torch.randn(d0, 6, generator=g, dtype=torch.float64) for _ in range(5)]
    factor, total = None, torch.zeros(d0, d0, dtype=torch.float64)
    widths = []
    for keys in batches:
        factor = grow_key_factor(factor, keys)
        total = total + keys @ keys.T
        widths.append(factor.size(1))
        torch.testing.assert_close(factor @ factor.T, total, atol=1e-9, rtol=1e-9)
    assert widths[:2] == [6, 12]  # stored as the keys while they fit
    assert max(widths[2:]) <= d0  # folded once they outnumber the dimensions
    # a dense legacy state converts to a factor of the same product
    torch.testing.assert_close(gram_factor(total) @ gram_factor(total).T, total, atol=1e-9, rtol=1e-9)
