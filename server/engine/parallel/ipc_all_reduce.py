"""Tensor parallelism's all-reduce as one kernel of ours (csrc/all_reduce.cu) over buffers
the ranks of one host share through CUDA IPC, where torch.distributed would run NCCL.

Why: a decode step all-reduces twice a layer, a few KB to a few MB each time. One launch
that copies, meets the other ranks through flags in their buffers and sums what they wrote
costs about a kernel's latency, and, being a plain kernel on the current stream, it can be
recorded in the decode step's CUDA graph, which torch.distributed's gloo (the one-GPU test
groups) cannot, so under tensor parallelism the decode steps replay graphs again.

Every rank allocates one buffer (flags, per-CTA call counts, two slots of `slot_bytes`;
the kernel's comment draws it), exports its IPC handle, and maps every other rank's. The
ranks agree before and after (`attach_ipc_all_reduce` is collective): all of them use it,
or none does, since an all-reduce half on NCCL and half here would never meet; ranks on
several machines (--nnodes) never do.
INFLIGHTD_IPC_ALL_REDUCE=0 leaves every all-reduce on torch.distributed.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import logging
import os
import socket

import numpy as np
import torch

from server.engine.parallel.tensor_parallel import TensorParallel

logger = logging.getLogger("inflightd.engine")

ENV = "INFLIGHTD_IPC_ALL_REDUCE"
MAX_RANKS = 8  # kMaxRanks, kMaxCtas (the largest grid), the header and kThreads:
MAX_CTAS = 256  # csrc/all_reduce.cu
HEADER_BYTES = (MAX_RANKS + 1) * MAX_CTAS * 4
THREADS = 512
DEFAULT_SLOT_BYTES = 8 << 20  # a decode step of 1,024 rows of 4,096 bf16 values
# how long a call waits for the other ranks before it traps (workers.py's COLLECTIVE_TIMEOUT,
# NCCL's limit for one step's collectives): a dead rank ends in an error, not a hang
DEFAULT_TIMEOUT_S = 600.0
_KERNELS = {torch.bfloat16: "all_reduce_bf16", torch.float16: "all_reduce_fp16",
            torch.float32: "all_reduce_f32"}
_HANDLE_BYTES = 64  # cudaIpcMemHandle_t


class IpcAllReduceError(RuntimeError):
    """A CUDA runtime call of the IPC set-up failed (its name and error)."""


def _check(result, call: str):
    error, *values = result
    if int(error) != 0:
        raise IpcAllReduceError(f"{call} failed: {error}")
    return values[0] if len(values) == 1 else values


class IpcAllReduce:
    """One rank's side: its buffer, every rank's buffer address in its own address space,
    and the launch. Built by attach_ipc_all_reduce on every rank at once."""

    def __init__(self, lib, tp: TensorParallel, *, slot_bytes: int = DEFAULT_SLOT_BYTES,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        from cuda.bindings import runtime

        if not 1 < tp.world_size <= MAX_RANKS:
            raise ValueError(f"the IPC all-reduce takes 2 to {MAX_RANKS} ranks, "
                             f"got {tp.world_size}")
        self.lib, self.rank, self.world_size = lib, tp.rank, tp.world_size
        self.slot_bytes = slot_bytes
        self.timeout_ns = int(timeout_s * 1e9)
        self._runtime = runtime
        self._opened: list[int] = []
        with torch.cuda.device(lib.device):  # the runtime calls act on the current device
            self._own = int(_check(runtime.cudaMalloc(HEADER_BYTES + 2 * slot_bytes),
                                   "cudaMalloc"))
            _check(runtime.cudaMemset(self._own, 0, HEADER_BYTES), "cudaMemset")
            _check(runtime.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
            handle = _check(runtime.cudaIpcGetMemHandle(self._own), "cudaIpcGetMemHandle")
            raw = ctypes.string_at(handle.getPtr(), _HANDLE_BYTES)
            local = torch.tensor(list(raw), dtype=torch.uint8, device=lib.device)[None]
            handles = tp.all_gather_last_dim(local).cpu().numpy().reshape(tp.world_size, -1)
            bases = [self._own if rank == self.rank else self._open(peer.tobytes())
                     for rank, peer in enumerate(handles)]
        self.bases = torch.tensor(np.array(bases, dtype=np.uint64).view(np.int64),
                                  device=lib.device)

    def _open(self, raw: bytes) -> int:
        runtime = self._runtime
        storage = ctypes.create_string_buffer(raw, _HANDLE_BYTES)
        handle = runtime.cudaIpcMemHandle_t(_ptr=ctypes.addressof(storage))
        pointer = int(_check(runtime.cudaIpcOpenMemHandle(
            handle, runtime.cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle"))
        self._opened.append(pointer)
        return pointer

    def accepts(self, x: torch.Tensor) -> bool:
        """Whether x can go through the kernel: on this GPU, contiguous, a multiple of 16
        bytes that fits a slot, 16-byte aligned, bf16, fp16 or float32."""
        size = x.numel() * x.element_size()
        return (x.device == self.lib.device and x.dtype in _KERNELS and x.is_contiguous()
                and 0 < size <= self.slot_bytes and size % 16 == 0 and x.data_ptr() % 16 == 0)

    def all_reduce_(self, x: torch.Tensor) -> torch.Tensor:
        """x summed over the ranks, in place (accepts(x) must hold, on every rank alike)."""
        # CTA b owns chunks b, b + MAX_CTAS, ... of THREADS vectors in every call: the CTAs
        # that own any of this tensor's
        num_chunks = -(-x.numel() * x.element_size() // (16 * THREADS))
        self.lib.launch("all_reduce", _KERNELS[x.dtype], grid=(min(MAX_CTAS, num_chunks),),
                        block=(THREADS,),
                        args=(x.data_ptr(), x.data_ptr(), np.int64(x.numel()),
                              self.bases.data_ptr(), np.int32(self.rank),
                              np.int32(self.world_size), np.int64(self.slot_bytes),
                              np.int64(self.timeout_ns)))
        return x

    def max_rows(self, row_bytes: int) -> int:
        """Rows of row_bytes each that one call takes (the decode graphs' largest batch)."""
        return self.slot_bytes // row_bytes


def attach_ipc_all_reduce(tp: TensorParallel, ops, device: torch.device) -> TensorParallel:
    """tp with an IpcAllReduce where every rank runs our kernels on a GPU and the mappings
    succeed on every rank; else tp as it came. Every rank of the group must call it."""
    if not tp.enabled:
        return tp
    lib = getattr(ops, "library", None) if device.type == "cuda" else None
    able = (lib is not None and os.environ.get(ENV, "1") != "0"
            and tp.world_size <= MAX_RANKS)
    if not _everyone(tp, able, device) or not _one_host(tp, device):
        return tp
    shared, problem = None, None
    try:
        shared = IpcAllReduce(lib, tp)
    except IpcAllReduceError as exc:  # e.g. GPUs without peer access to each other
        problem = str(exc)
    if not _everyone(tp, shared is not None, device):
        logger.info("tensor parallelism: all-reduce on torch.distributed (%s)",
                    problem or "another rank could not map the buffers")
        return tp
    return dataclasses.replace(tp, device_all_reduce=shared)


def _one_host(tp: TensorParallel, device: torch.device) -> bool:
    """Whether every rank runs on this machine (IPC handles mean nothing on another: ranks
    over several nodes keep torch.distributed)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            machine = boot.read().strip()
    except OSError:
        machine = ""
    machine += socket.gethostname()
    digest = int.from_bytes(hashlib.sha256(machine.encode()).digest()[:8], "little") >> 1
    ours = torch.tensor([[digest]], dtype=torch.int64, device=device)
    everyone = tp.all_gather_last_dim(ours)
    return bool((everyone == digest).all().item())


def _everyone(tp: TensorParallel, agrees: bool, device: torch.device) -> bool:
    flags = tp.all_gather_last_dim(torch.tensor([[int(agrees)]], dtype=torch.int32,
                                                device=device))
    return bool(flags.min().item())
