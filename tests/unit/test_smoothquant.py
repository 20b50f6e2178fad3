"""SmoothQuant's smoothing (server/quantize/smoothquant.py, smooth_search.py): it keeps the
model's float function, v -> o under grouped-query attention included, and the searched
alpha errs no more under W8A8 rounding than the paper's fixed 0.5."""

from __future__ import annotations

import pytest
import torch

from server.quantize.layerwise import decoder_layers
from server.quantize.smooth_search import (TokenSample, search_alpha, smoothing_scales,
                                           w8a8_error)
from server.quantize.smoothquant import GROUPS, calibrate_smoothquant, channel_index, smooth


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def tiny_llama(kv_heads: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=kv_heads, head_dim=16,
                         max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def outlier_sample(seed: int = 1) -> TokenSample:
    x = randn(512, 64, seed=seed)
    x[:, [3, 17]] *= 40  # a few channels carry most of the range, as in LLM activations
    sample = TokenSample(stride=2)
    sample.add(x)
    return sample


@pytest.mark.parametrize("kv_heads", [4, 2])  # 2: each kv head read by two query heads
def test_smoothing_every_group_keeps_the_models_float_function(kv_heads):
    model = tiny_llama(kv_heads)
    ids = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(2))
    expected = logits(model, ids)
    for layer in decoder_layers(model):
        for seed, group in enumerate(GROUPS):
            index = channel_index(layer, group)
            channels = layer.get_submodule(group.source).weight.shape[0]
            smooth(layer, group, randn(channels, seed=seed).abs() + 0.2, index)
    torch.testing.assert_close(logits(model, ids), expected, rtol=1e-4, atol=1e-4)


def test_v_to_o_scales_repeat_each_kv_heads_channels_for_its_query_heads():
    layer = decoder_layers(tiny_llama(2))[0]
    index = channel_index(layer, GROUPS[1])  # v [32 rows] -> o [64 columns], 16 per head
    assert index.tolist() == [*range(16), *range(16), *range(16, 32), *range(16, 32)]
    assert channel_index(layer, GROUPS[3]) is None  # up -> down: one column per channel


def test_searched_alpha_errs_no_more_than_the_papers_half_on_outlier_channels():
    sample = outlier_sample()
    weight = randn(48, 64, seed=3)
    x = sample.tokens()
    reference = x @ weight.t()

    def error(scales):
        return w8a8_error(x, weight, reference, scales)

    alpha, scales = search_alpha(sample, [weight], None, (None, *(i / 10 for i in range(11))))
    half = smoothing_scales(sample.abs_max, [weight], 0.5)
    assert alpha is not None and error(scales) <= error(half)
    assert error(scales) < error(None) / 4  # smoothing pays on outliers


def test_search_leaves_a_group_without_outliers_unsmoothed_when_that_errs_least():
    sample = TokenSample(stride=1)
    sample.add(randn(256, 64, seed=4))
    weight = randn(32, 64, seed=5)
    weight[:, 5] *= 30  # the weights hold the outlier: moving range into them only hurts
    alpha, scales = search_alpha(sample, [weight], None, (None, 1.0))
    assert (alpha, scales) == (None, None)


def test_a_one_value_grid_is_that_alpha_without_search():
    sample = outlier_sample()
    weight = randn(16, 64, seed=6)
    alpha, scales = search_alpha(sample, [weight], None, (0.5,))
    assert alpha == 0.5
    torch.testing.assert_close(scales, smoothing_scales(sample.abs_max, [weight], 0.5))


def test_token_sample_keeps_every_strideth_token_across_blocks_and_all_maxima():
    sample = TokenSample(stride=3)
    first, second = randn(5, 4, seed=7), randn(4, 4, seed=8)
    sample.add(first)
    sample.add(second)
    joined = torch.cat([first, second])
    torch.testing.assert_close(sample.tokens(), joined[::3])
    torch.testing.assert_close(sample.abs_max, joined.abs().amax(dim=0))


def test_calibration_keeps_the_function_and_reports_an_alpha_per_layer():
    model = tiny_llama(2)
    ids = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(9))
    expected = logits(model, ids)
    blocks = [torch.randint(0, 96, (1, 24), generator=torch.Generator().manual_seed(s))
              for s in range(3)]
    chosen = calibrate_smoothquant(model, blocks)
    assert sorted(chosen) == sorted(group.source for group in GROUPS)
    assert all(len(alphas) == 2 for alphas in chosen.values())
    torch.testing.assert_close(logits(model, ids), expected, rtol=1e-3, atol=1e-3)
