"""The grid searches `inflightd quantize` runs before rounding: AWQ's clipping (each group's
range shrunk to the ratio with the least output error on the inputs) and GPTQ's "mse" grid
(the ratio with the least rounding error). The full range is always a candidate, so neither
may do worse than it by its own measure, and on heavy-tailed weights both must do better."""

from __future__ import annotations

import torch

from server.engine.models.int_grid import grid_params, round_to_nearest
from server.quantize.awq import InputStats, clip_weight, fake_quantize
from server.quantize.gptq import MSE_RATIOS, group_grid, gptq_quantize
from server.quantize.grid_search import (group_gram, rounding_error, search_grid,
                                         shrink_ratios)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def heavy_tailed(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Student-t weights (3 degrees of freedom): a few large values per group, as in LLMs."""
    normal = randn(rows, cols, 4, seed=seed)
    return normal[..., 0] / (normal[..., 1:].pow(2).mean(dim=-1) + 1e-3).sqrt()


def test_group_gram_is_each_groups_diagonal_block():
    x = randn(100, 12, seed=1)
    gram = x.t() @ x
    blocks = group_gram(gram, 4)
    for g in range(3):
        torch.testing.assert_close(blocks[g], gram[4 * g:4 * g + 4, 4 * g:4 * g + 4])


def test_full_range_alone_is_the_min_max_grid():
    groups = randn(6, 4, 16, seed=2)
    for symmetric in (False, True):
        scales, zeros, ratios = search_grid(groups, 4, [1.0], symmetric=symmetric, min_zero=1)
        expected = grid_params(groups, 4, symmetric=symmetric, min_zero=1)
        torch.testing.assert_close(scales, expected[0])
        assert torch.equal(zeros, expected[1]) and bool((ratios == 1).all())


def test_mse_grid_never_worse_than_min_max_and_better_on_heavy_tails():
    groups = heavy_tailed(64, 128, seed=3).reshape(64, 8, 16)
    minmax = grid_params(groups, 4, symmetric=False)
    scales, zeros, ratios = search_grid(groups, 4, shrink_ratios(80, 0.8), symmetric=False)
    searched = rounding_error(groups, scales, zeros, 4, None)
    full = rounding_error(groups, *minmax, 4, None)
    assert bool((searched <= full).all())  # per group, by the measure it minimises
    assert float(searched.sum()) < 0.97 * float(full.sum())
    assert float(ratios.min()) < 1  # some groups clipped
    squared = [float(((c - z[..., None]) * s[..., None] - groups).pow(2).sum()) for s, z, c in (
        (scales, zeros, torch.clamp(torch.round(groups / scales[..., None]) + zeros[..., None],
                                    0, 15)),
        (*minmax, torch.clamp(torch.round(groups / minmax[0][..., None]) + minmax[1][..., None],
                              0, 15)))]
    assert squared[0] < squared[1]  # the plain squared error drops too


def test_gptq_mse_grid_is_fixed_from_the_original_weights_and_keeps_zeros_storable():
    weight = heavy_tailed(8, 64, seed=4) + 1  # mostly positive: zero points near 0
    x = randn(256, 64, seed=5) * torch.linspace(0.1, 3, 64)
    hessian = 2 * x.t() @ x / 256
    codes = gptq_quantize(weight, hessian, bits=4, group_size=16, symmetric=False, mse=True)
    # each group's grid from its original weights, by its share of the output error under H
    scales, _, _ = search_grid(weight.reshape(8, 4, 16), 4, MSE_RATIOS, symmetric=False,
                               gram=group_gram(hessian, 16), min_zero=1)
    torch.testing.assert_close(codes.scales, scales)
    assert int(codes.zeros.min()) >= 1
    minmax = grid_params(weight.reshape(8, 4, 16), 4, symmetric=False, min_zero=1)[0]
    assert bool((scales <= minmax * (1 + 1e-6)).all()) and bool((scales < minmax).any())


def test_gptq_static_grids_weigh_rounding_errors_by_the_inputs_energy():
    weight = heavy_tailed(32, 64, seed=9)
    x = randn(512, 64, seed=10)
    x[:, ::8] *= 6  # a few inputs carry most of the energy
    hessian = 2 * x.t() @ x / 512
    groups, blocks = weight.reshape(32, 4, 16), group_gram(hessian, 16)

    def output_error(scales, zeros):  # each group's share of the output error, [32, 4]
        return rounding_error(groups, scales, zeros, 4, blocks)

    codes = gptq_quantize(weight, hessian, bits=4, group_size=16, symmetric=False, mse=True)
    unweighted = group_grid(groups, 4, symmetric=False, min_zero=1, mse=True)
    ours, plain = output_error(codes.scales, codes.zeros), output_error(*unweighted)
    # the unweighted grid is one of the candidates, so no group's error can rise
    assert bool((ours <= plain * (1 + 1e-5)).all())
    assert float(ours.sum()) < 0.95 * float(plain.sum())


def test_awq_clipping_never_raises_the_output_error_and_cuts_it_on_heavy_tails():
    x = randn(2048, 128, seed=6)
    x[:, :8] *= 5  # uneven channel energies: the Gram weighting matters
    weight = heavy_tailed(48, 128, seed=7)
    stats = InputStats(stride=1)
    stats.add(x)
    clipped = weight.clone()
    ratios = clip_weight(clipped, stats.gram(), 32)
    assert bool((ratios <= 1).all()) and float(ratios.min()) < 1
    # each group's own share of the output error (what the search minimises) never rises
    blocks = group_gram(stats.gram(), 32)

    def shares(w):
        delta = (fake_quantize(w, 32) - weight).reshape(48, 4, 32).transpose(0, 1)
        return (torch.bmm(delta, blocks) * delta).sum(dim=-1)

    assert bool((shares(clipped) <= shares(weight) * (1 + 1e-5)).all())
    reference = x @ weight.t()
    errors = [float((x @ fake_quantize(w, 32).t() - reference).pow(2).mean())
              for w in (clipped, weight)]
    assert errors[0] < 0.9 * errors[1]


def test_awq_clipping_leaves_what_it_keeps_and_rounds_on_the_clipped_range():
    weight = heavy_tailed(16, 64, seed=8)
    clipped = weight.clone()
    ratios = clip_weight(clipped, torch.eye(64), 32)
    inside = clipped == weight
    assert float(inside.float().mean()) > 0.8  # only the extremes move
    low = weight.reshape(16, 2, 32).amin(dim=-1).clamp(max=0) * ratios
    torch.testing.assert_close(clipped.reshape(16, 2, 32).amin(dim=-1).clamp(max=0), low)
    codes = round_to_nearest(clipped, bits=4, group_size=32, symmetric=False)
    assert codes.codes.max() <= 15 and codes.codes.min() >= 0
