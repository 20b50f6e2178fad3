"""Where split attention launches keep their partitions' partial results and arrival
counters (ops/cuda_attention.py says how a split launch uses them): a caller's own
AttentionWorkspace, or fresh partials and the library's shared zeroed counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from server.engine.gpu.kernel_args import (KernelArgumentError, check_contiguous, check_device,
                                           check_dtype, check_shape)
from server.engine.gpu.kernels import KernelLibrary

if TYPE_CHECKING:
    from server.engine.ops.cuda_attention import AttentionPlan

MAX_PARTITIONS = 64  # also the most the kernel's merge takes (attention_common.cuh)
COUNTERS = "attention_arrival_counters"  # the library's shared zeroed buffer


@dataclass(frozen=True)
class AttentionWorkspace:
    """Per-partition partial results, [P, T * num_heads (, head_dim)] float32, and the
    arrival counters, int32 [>= plan.num_counters], zero before and after every launch."""
    part_acc: torch.Tensor
    part_max: torch.Tensor
    part_sum: torch.Tensor
    counters: torch.Tensor


def allocate_partials(plan: AttentionPlan, *, num_tokens: int, num_heads: int, head_dim: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(part_acc, part_max, part_sum), uninitialised: a launch writes before it reads."""
    rows = num_tokens * num_heads
    return (torch.empty((plan.num_partitions, rows, head_dim), dtype=torch.float32,
                        device=device),
            torch.empty((plan.num_partitions, rows), dtype=torch.float32, device=device),
            torch.empty((plan.num_partitions, rows), dtype=torch.float32, device=device))


def allocate_workspace(plan: AttentionPlan, *, num_tokens: int, num_heads: int,
                       num_kv_heads: int, head_dim: int,
                       device: torch.device) -> AttentionWorkspace | None:
    """A workspace with its own counters (zeroed here, so not while capturing a graph)."""
    if plan.num_partitions == 1:
        return None
    return AttentionWorkspace(
        *allocate_partials(plan, num_tokens=num_tokens, num_heads=num_heads, head_dim=head_dim,
                           device=device),
        counters=torch.zeros(plan.num_counters(num_kv_heads), dtype=torch.int32, device=device))


def check_workspace(workspace: AttentionWorkspace, plan: AttentionPlan, *, rows: int,
                    head_dim: int, num_kv_heads: int) -> None:
    check_shape("workspace.part_acc", workspace.part_acc, (plan.num_partitions, rows, head_dim))
    check_shape("workspace.part_max", workspace.part_max, (plan.num_partitions, rows))
    check_shape("workspace.part_sum", workspace.part_sum, (plan.num_partitions, rows))
    check_dtype(torch.float32, **{"workspace.part_acc": workspace.part_acc,
                                  "workspace.part_max": workspace.part_max,
                                  "workspace.part_sum": workspace.part_sum})
    check_dtype(torch.int32, **{"workspace.counters": workspace.counters})
    check_contiguous(**{"workspace.part_acc": workspace.part_acc,
                        "workspace.part_max": workspace.part_max,
                        "workspace.part_sum": workspace.part_sum,
                        "workspace.counters": workspace.counters})
    needed = plan.num_counters(num_kv_heads)
    if workspace.counters.numel() < needed:
        raise KernelArgumentError(f"workspace.counters holds {workspace.counters.numel()} "
                                  f"counters; this launch needs {needed}")


def partials_args(lib: KernelLibrary, plan: AttentionPlan,
                   workspace: AttentionWorkspace | None, *, num_tokens: int, num_heads: int,
                   num_kv_heads: int, head_dim: int, device: torch.device) -> tuple[int, ...]:
    """(part_acc, part_max, part_sum, counters) pointers; all 0 for an unsplit launch."""
    if plan.num_partitions == 1:
        return (0, 0, 0, 0)
    if plan.num_partitions > MAX_PARTITIONS:
        raise KernelArgumentError(f"attention splits keys into at most {MAX_PARTITIONS} "
                                  f"partitions, the plan has {plan.num_partitions}")
    if workspace is None:
        # Partials: fresh memory each call (a captured graph's pool owns it). Counters: the
        # library's persistent zeroed buffer, since zeroing new ones would cost a launch.
        tensors = (*allocate_partials(plan, num_tokens=num_tokens, num_heads=num_heads,
                                      head_dim=head_dim, device=device),
                   lib.zeroed_int32(COUNTERS, plan.num_counters(num_kv_heads)))
    else:
        check_workspace(workspace, plan, rows=num_tokens * num_heads, head_dim=head_dim,
                        num_kv_heads=num_kv_heads)
        tensors = (workspace.part_acc, workspace.part_max, workspace.part_sum,
                   workspace.counters)
        check_device(lib.device, **{f"workspace.{name}": tensor for name, tensor in zip(
            ("part_acc", "part_max", "part_sum", "counters"), tensors)})
    return tuple(t.data_ptr() for t in tensors)
