"""Which all-reduces TensorParallel hands to the IPC kernel and which to torch.distributed,
and the set-up's refusals, without a GPU (the kernel itself: tests/gpu/test_ipc_all_reduce.py)."""

from __future__ import annotations

import pytest
import torch

from server.engine.parallel.ipc_all_reduce import (MAX_RANKS, IpcAllReduce, _one_host,
                                                    attach_ipc_all_reduce)
from server.engine.parallel.tensor_parallel import TensorParallel


class RecordingAllReduce:
    """Takes tensors of at most max_numel elements, doubling them (two equal ranks)."""

    def __init__(self, *, max_numel: int) -> None:
        self.max_numel = max_numel
        self.calls: list[int] = []

    def accepts(self, x: torch.Tensor) -> bool:
        return x.numel() <= self.max_numel

    def all_reduce_(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.numel())
        return x.mul_(2)


def test_all_reduces_it_accepts_go_to_the_device_all_reduce_and_the_rest_to_torch(monkeypatch):
    to_torch = []
    monkeypatch.setattr(torch.distributed, "all_reduce",
                        lambda x, group=None: to_torch.append(x.numel()))
    shared = RecordingAllReduce(max_numel=16)
    tp = TensorParallel(rank=0, world_size=2, device_all_reduce=shared)
    small, large = torch.ones(16), torch.ones(17)
    assert tp.all_reduce(small) is small and torch.equal(small, torch.full((16,), 2.0))
    tp.all_reduce(large)
    assert shared.calls == [16] and to_torch == [17]


def test_one_rank_reduces_nothing_and_attaches_nothing():
    shared = RecordingAllReduce(max_numel=16)
    x = torch.ones(4)
    assert TensorParallel(device_all_reduce=shared).all_reduce(x) is x
    assert shared.calls == [] and torch.equal(x, torch.ones(4))
    tp = TensorParallel()
    assert attach_ipc_all_reduce(tp, ops=None, device=torch.device("cpu")) is tp


@pytest.mark.parametrize("world_size", [1, MAX_RANKS + 1])
def test_ipc_all_reduce_refuses_group_sizes_its_flags_do_not_hold(world_size):
    with pytest.raises(ValueError, match=f"2 to {MAX_RANKS} ranks"):
        IpcAllReduce(lib=None, tp=TensorParallel(rank=0, world_size=world_size))


def test_ranks_on_another_machine_keep_torch_distributed(monkeypatch):
    tp = TensorParallel(rank=0, world_size=2)
    monkeypatch.setattr(TensorParallel, "all_gather_last_dim",
                        lambda self, x: torch.cat([x, x], dim=-1))
    assert _one_host(tp, torch.device("cpu"))
    monkeypatch.setattr(TensorParallel, "all_gather_last_dim",
                        lambda self, x: torch.cat([x, x + 1], dim=-1))
    assert not _one_host(tp, torch.device("cpu"))
