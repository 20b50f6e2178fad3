"""Coordinate descent over GPTQ's codes (server/quantize/code_descent.py): on the grids GPTQ
fixed, each pass may only lower the layer's output error on the calibration inputs, and on
correlated inputs it must lower it."""

from __future__ import annotations

import pytest
import torch

from server.engine.models.int_grid import IntCodes
from server.quantize import gptq
from server.quantize.code_descent import descend_codes
from tests.unit.test_quantize_grid_search import heavy_tailed, randn


def correlated_inputs(tokens: int, width: int, *, seed: int) -> torch.Tensor:
    """Inputs whose channels share a few directions, as a layer's activations do."""
    shared = randn(tokens, 4, seed=seed) @ randn(4, width, seed=seed + 1)
    return shared + 0.3 * randn(tokens, width, seed=seed + 2)


def output_error(weight: torch.Tensor, codes: IntCodes, hessian: torch.Tensor) -> float:
    residual = weight - codes.dequantize().float()
    return float((residual @ hessian * residual).sum())


def layer(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    weight = heavy_tailed(24, 64, seed=seed)
    x = correlated_inputs(512, 64, seed=seed + 10)
    return weight, 2 * x.t() @ x / 512


def test_each_pass_lowers_the_output_error_on_the_same_grids():
    weight, hessian = layer(seed=1)
    codes = gptq.gptq_quantize(weight, hessian, bits=4, group_size=16, symmetric=False,
                               mse=True)
    order = torch.argsort(hessian.diagonal(), descending=True)
    errors = [output_error(weight, codes, hessian)]
    for passes in (1, 2, 3):
        refined = descend_codes(weight, hessian, codes, order=order, passes=passes)
        assert torch.equal(refined.scales, codes.scales)
        assert torch.equal(refined.zeros, codes.zeros)
        assert int(refined.codes.min()) >= 0 and int(refined.codes.max()) <= 15
        errors.append(output_error(weight, refined, hessian))
    assert all(later <= earlier * (1 + 1e-6) for earlier, later in zip(errors, errors[1:]))
    assert errors[1] < 0.99 * errors[0], errors


def test_gptq_with_descent_passes_returns_the_refined_codes(monkeypatch):
    weight, hessian = layer(seed=2)
    plain = gptq.gptq_quantize(weight, hessian, bits=4, group_size=16, symmetric=False,
                               mse=True)
    monkeypatch.setattr(gptq, "DESCENT_PASSES", 1)
    refined = gptq.gptq_quantize(weight, hessian, bits=4, group_size=16, symmetric=False,
                                 mse=True)
    damped = hessian + gptq.DAMP * hessian.diagonal().mean() * torch.eye(64)
    assert torch.equal(refined.scales, plain.scales)
    assert output_error(weight, refined, damped) < output_error(weight, plain, damped)


def test_descent_refuses_codes_with_scattered_groups():
    weight, hessian = layer(seed=3)
    codes = gptq.gptq_quantize(weight, hessian, bits=4, group_size=16, symmetric=False,
                               static_groups=False)
    with pytest.raises(ValueError, match="static groups"):
        descend_codes(weight, hessian, codes, order=torch.arange(64))
