"""A tensor-parallel rank reads only its own part of each checkpoint tensor: rows of the
column-parallel weights, columns of the row-parallel ones (GPT-2's Conv1D the other way
round), its vocabulary rows; and what it reads equals cutting the whole tensor."""

from __future__ import annotations

import pytest
import torch

import server.engine.loading.weights as weights_module
from server.engine.parallel.shard_weights import shard_tensor
from server.engine.parallel.tensor_parallel import ShardPlan, TensorParallel
from server.engine.loading.weights import iter_weights, resolve_model
from tests.golden.helpers import make_hf_model


class CountingSafeOpen:
    """safe_open, counting the elements every read returns."""

    def __init__(self, real, counts: dict[str, int]) -> None:
        self._real, self._counts = real, counts

    def __call__(self, *args, **kwargs):
        return _CountingHandle(self._real(*args, **kwargs), self._counts)


class _CountingHandle:
    def __init__(self, handle, counts) -> None:
        self._handle, self._counts = handle, counts

    def __enter__(self):
        self._handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

    def keys(self):
        return self._handle.keys()

    def get_tensor(self, name):
        tensor = self._handle.get_tensor(name)
        self._counts[name] = self._counts.get(name, 0) + tensor.numel()
        return tensor

    def get_slice(self, name):
        return _CountingSlice(self._handle.get_slice(name), name, self._counts)


class _CountingSlice:
    def __init__(self, part, name, counts) -> None:
        self._part, self._name, self._counts = part, name, counts

    def get_shape(self):
        return self._part.get_shape()

    def __getitem__(self, index):
        tensor = self._part[index]
        self._counts[self._name] = self._counts.get(self._name, 0) + tensor.numel()
        return tensor


@pytest.mark.parametrize("family", ["llama-gqa-tied", "gpt2", "phi3-fused"])
def test_a_rank_reads_about_its_share_and_gets_the_cut_of_the_whole(tmp_path, monkeypatch,
                                                                   family):
    make_hf_model(family).save_pretrained(tmp_path)
    source = resolve_model(str(tmp_path))
    whole = dict(iter_weights(source, dtype=torch.float32, device="cpu"))
    plan = ShardPlan.of(source.arch, TensorParallel(rank=1, world_size=2))
    counts: dict[str, int] = {}
    monkeypatch.setattr(weights_module, "safe_open",
                        CountingSafeOpen(weights_module.safe_open, counts))
    part = dict(iter_weights(source, dtype=torch.float32, device="cpu", shard=plan))
    assert part.keys() == whole.keys()
    for name, tensor in part.items():
        assert torch.equal(tensor, shard_tensor(source.arch, plan, name, whole[name])), name
    total = sum(t.numel() for t in whole.values())
    assert sum(counts.values()) < 0.6 * total  # norms and positions whole, the rest halved
