"""Our CUDA kernels: which exist, how they are built, and how they are launched.

Each csrc/<module>.cu is one NVRTC program defining a few `extern "C"` kernels (one per
dtype / head_dim / tile variant, so no name mangling is involved). `KernelLibrary` loads a
module's cubin on first use, from an engine directory's prebuilt cubins when given, or else
through the NVRTC compile cache, and launches kernels on torch's current stream with
torch tensor pointers. A launch makes no allocation and no synchronisation, so it can be
recorded in a torch CUDA graph.

Programmatic dependent launch (PDL, sm_90 and later): with `programmatic_launch` on, each
kernel may start while the one before it drains, its CTAs waiting in
`wait_for_previous_kernel` (csrc/common.cuh; every kernel calls it before reading its
inputs, a GEMV after issuing its first weight loads). What it buys: the launch and ramp-up
of the ~300 small kernels of a batch-1 decode step hide behind the kernel before: on an H100,
batch-1 decode on Llama-3-8B shapes went from 173.6 to 184.5 tok/s in bf16 and from 262.0 to
282.1 with FP8 weights (docs/benchmarks.md). On by default on sm_90 and later;
INFLIGHTD_PROGRAMMATIC_LAUNCH=0 turns it off.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from server.engine.gpu.kernel_args import KernelArgumentError  # noqa: F401  (re-exported)
from server.engine.gpu.kernel_args import env_switch
from server.engine.gpu.nvrtc import CSRC_DIR, compile_module

DTYPES = ("bf16", "fp16")
PROGRAMMATIC_LAUNCH_ENV = "INFLIGHTD_PROGRAMMATIC_LAUNCH"
PROGRAMMATIC_LAUNCH_MIN_ARCH = 90  # griddepcontrol needs sm_90
ATTENTION_HEAD_DIMS = (64, 80, 96, 128, 256)
ATTENTION_WARPS = (1, 2, 4)
ATTENTION_VARIANTS = (*ATTENTION_WARPS, "1k2", "1t", "1tk2")
ATTENTION_EXTRAS = ("", "_extras")  # plain, or soft-capping and ALiBi


@dataclass(frozen=True)
class KernelModule:
    name: str  # csrc/<name>.cu
    fast_math: bool  # only where approximate exp/division cannot hurt (softmax, silu)
    functions: tuple[str, ...]
    # an arch-specific target (e.g. "sm_90a": Hopper's wgmma) where the module needs one: it
    # then exists only on that GPU (sm_90), built for the target
    arch_specific: str | None = None

    def target(self, arch: str) -> str | None:
        """The NVRTC target of this module on a GPU of `arch` ("sm_90"); None where the
        module cannot run there."""
        if self.arch_specific is None:
            return arch
        return self.arch_specific if self.arch_specific.rstrip("a") == arch else None


def _names(template: str, **axes: tuple) -> tuple[str, ...]:
    keys = list(axes)
    return tuple(template.format(**dict(zip(keys, values)))
                 for values in itertools.product(*(axes[k] for k in keys)))


# every module but attention's
BASE_MODULES: tuple[KernelModule, ...] = (
    KernelModule("rms_norm", False,
                 _names("{add}rms_norm{fp8}_{dt}_vec{v}", add=("", "add_"), fp8=("", "_fp8"),
                        dt=DTYPES, v=(8, 1))),
    KernelModule("activation", True, _names("silu_and_mul_{dt}_vec{v}", dt=DTYPES, v=(8, 1))
                 + _names("silu_and_mul_fp8_{dt}", dt=DTYPES)),
    # the LayerNorm families' norm and MLP activations, and Gemma's GeGLU (exact erff, tanhf)
    KernelModule("layer_norm", False,
                 _names("{add}layer_norm_{dt}_vec{v}", add=("", "add_"), dt=DTYPES, v=(8, 1))),
    KernelModule("gelu", False,
                 _names("gelu_{kind}{mul}_{dt}_vec{v}", kind=("erf", "tanh"),
                        mul=("", "_and_mul"), dt=DTYPES, v=(8, 1))),
    KernelModule("rope_cache", False,
                 _names("rope_and_cache_{dt}{cos}{kv}", dt=DTYPES, cos=("", "_f32cos"),
                        kv=("", "_kvfp8"))),
    # the decode GEMV, plain, with GELU on its outputs (exact erff, tanhf), or float32 out
    # (the logits)
    KernelModule("gemv", False, _names("gemv{act}_{dt}_m{m}",
                                       act=("", "_gelu_erf", "_gelu_tanh", "_logits"),
                                       dt=DTYPES, m=(1, 2, 3, 4))),
    # FP8 weights: e4m3 activations (1-4 tokens, CUDA cores; up to 8, tensor cores), and
    # one-token steps' weight-only kernels (16-bit activations, plain or with SiLU-and-mul)
    KernelModule("gemv_fp8", False, _names("gemv_fp8_bf16_m{m}", m=(1, 2, 3, 4))
                 + ("gemv_fp8_mma_bf16",)
                 + _names("gemv_w8a16{silu}_{dt}", silu=("", "_silu"), dt=DTYPES)),
    # activations to FP8 for --quantization fp8 (exact division: matches the torch reference)
    KernelModule("quantize", False, _names("quantize_fp8_rows_{dt}", dt=DTYPES)),
    # integer weights (IntWeight): W4A16 / W8A16 decode GEMV (_bs: one group per K block),
    # their dequantization for cuBLAS, W8A8's int8 activations, GEMV and int32 epilogue
    KernelModule("gemv_int", False,
                 _names("gemv_w{bits}_{dt}_t{tiles}{bs}", bits=(4, 8), dt=DTYPES, tiles=(1, 2),
                        bs=("", "_bs"))
                 + _names("gemv_w{bits}_{dt}_t1{bs}_silu", bits=(4, 8), dt=DTYPES,
                          bs=("", "_bs"))),
    KernelModule("dequantize_int", False, _names("dequantize_w{bits}_{dt}", bits=(4, 8),
                                                 dt=DTYPES)),
    KernelModule("w8a8", False, _names("quantize_int8_rows_{dt}", dt=DTYPES)
                 + _names("int8_scaled_out_{dt}", dt=DTYPES)
                 + _names("gemv_w8a8_{dt}_t{tiles}", dt=DTYPES, tiles=(1, 2))),
    # grammar masks on the sampled rows' logits (structured outputs)
    KernelModule("token_bitmask", False, ("apply_token_bitmask_f32",)),
    # greedy rows' argmax of the logits
    KernelModule("argmax", False, ("argmax_f32",)),
    # tensor parallelism's all-reduce over IPC-shared buffers (parallel/ipc_all_reduce.py)
    KernelModule("all_reduce", False, ("all_reduce_bf16", "all_reduce_fp16", "all_reduce_f32")),
    # batch-1 decode of a GPT-2-style model, every layer in one persistent kernel (bulk
    # copies and mbarriers: sm_90; server/engine/fused/decode_stack.py)
    KernelModule("decode_stack", False,
                 _names("decode_stack_{dt}_d{d}_{gelu}", dt=DTYPES, d=(64, 128),
                        gelu=("gelu_tanh", "gelu_erf")), arch_specific="sm_90a"),
)


def attention_module(head_dim: int, *, e4m3_cache: bool) -> str:
    """The csrc/ module of the paged attention kernels of one head_dim over a 16-bit KV cache,
    or with e4m3_cache an e4m3 one: one module per head_dim, so that a model compiles only
    its own (all head dims at once took most of a cold start's 82 s)."""
    if head_dim not in ATTENTION_HEAD_DIMS:
        raise KernelArgumentError(f"the attention kernels cover head_dim {ATTENTION_HEAD_DIMS}, "
                                  f"not {head_dim}")
    return f"paged_attention{'_fp8' if e4m3_cache else ''}_d{head_dim}"


def _attention_modules(head_dim: int) -> tuple[KernelModule, KernelModule]:
    # w1k2: the 1-warp row class on 2-warp CTAs that split each K/V tile's keys; _extras:
    # the same kernels with soft-capping and ALiBi (csrc/attention_scores.cuh); the second
    # module: the same over an e4m3 KV cache (--kv-cache-dtype fp8)
    axes = dict(dt=DTYPES, d=(head_dim,), w=ATTENTION_VARIANTS, x=ATTENTION_EXTRAS)
    return (KernelModule(attention_module(head_dim, e4m3_cache=False), True,
                         _names("paged_attention_{dt}_d{d}_w{w}{x}", **axes)),
            KernelModule(attention_module(head_dim, e4m3_cache=True), True,
                         _names("paged_attention_{dt}_kvfp8_d{d}_w{w}{x}", **axes)))


# prefill attention on Hopper's warpgroup MMA (head_dim 128; a 16-bit or an e4m3 cache), and
# the two probes that check its MMA layouts apart (ops/cuda_attention_hopper.py)
HOPPER_ATTENTION_MODULE = KernelModule(
    "paged_attention_hopper", True,
    _names("paged_attention_hopper_{dt}{kv}_d128", dt=DTYPES, kv=("", "_kvfp8"))
    + _names("wgmma_probe_{what}_{dt}", what=("scores", "values"), dt=DTYPES),
    arch_specific="sm_90a")
# decode attention over 8 kv heads of head_dim 128, the cache's rows bulk-copied into a ring
# of stages by a producer warp (a 16-bit or an e4m3 cache; ops/cuda_decode_bulk.py)
DECODE_BULK_MODULE = KernelModule(
    "paged_decode_bulk", True,
    _names("paged_decode_bulk_{dt}{kv}_d128", dt=DTYPES, kv=("", "_kvfp8")),
    arch_specific="sm_90a")
ATTENTION_MODULES = tuple(module for head_dim in ATTENTION_HEAD_DIMS
                          for module in _attention_modules(head_dim))
MODULES: tuple[KernelModule, ...] = (BASE_MODULES + ATTENTION_MODULES
                                     + (HOPPER_ATTENTION_MODULE, DECODE_BULK_MODULE))
MODULES_BY_NAME = {module.name: module for module in MODULES}


def module_names(head_dims: Iterable[int] = ATTENTION_HEAD_DIMS) -> tuple[str, ...]:
    """The modules a model of these head dims needs: the attention modules of those head dims
    (both KV cache kinds), and every other module. Attention's come first: the longest
    compiles, they start first when compile_modules has fewer threads than modules."""
    head_dims = tuple(head_dims)
    return (*(attention_module(head_dim, e4m3_cache=e4m3) for head_dim in head_dims
              for e4m3 in (False, True)),
            *((HOPPER_ATTENTION_MODULE.name, DECODE_BULK_MODULE.name)
              if 128 in head_dims else ()),
            *(module.name for module in BASE_MODULES))


def compile_all(arch: str, *, head_dims: Iterable[int] = ATTENTION_HEAD_DIMS,
                cache_dir: Path | None = None, csrc_dir: Path = CSRC_DIR) -> dict[str, bytes]:
    """{module name: cubin} for module_names(head_dims) (by default every module) that can
    run on `arch` such as "sm_90". Needs no GPU."""
    return compile_modules(module_names(head_dims), arch=arch, cache_dir=cache_dir,
                           csrc_dir=csrc_dir)


def compile_modules(names: Iterable[str], *, arch: str, cache_dir: Path | None = None,
                    csrc_dir: Path = CSRC_DIR) -> dict[str, bytes]:
    """{module name: cubin}, the modules compiled side by side: NVRTC releases the GIL, and
    a cold start is mostly the attention modules (one per head_dim and KV cache kind)."""
    specs = [MODULES_BY_NAME[name] for name in names
             if MODULES_BY_NAME[name].target(arch) is not None]
    if not specs:
        return {}

    def cubin(spec: KernelModule) -> bytes:
        return compile_module(spec.name, arch=spec.target(arch), fast_math=spec.fast_math,
                              csrc_dir=csrc_dir, cache_dir=cache_dir).cubin

    # imported here first: a thread that imports cuda.core while another does finds it half
    # initialised ("cannot import name 'Program'")
    from cuda.core import Program  # noqa: F401

    with ThreadPoolExecutor(max_workers=min(len(specs), os.cpu_count() or 1)) as pool:
        return dict(zip((spec.name for spec in specs), pool.map(cubin, specs)))


def device_arch(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def programmatic_launch_enabled(arch: str, requested: bool | None = None) -> bool:
    """Whether launches carry the PDL attribute: as requested, else as
    INFLIGHTD_PROGRAMMATIC_LAUNCH says ("0" off, default on); never before sm_90."""
    if requested is None:
        requested = env_switch(PROGRAMMATIC_LAUNCH_ENV, default=True)
    return requested and arch_number(arch) >= PROGRAMMATIC_LAUNCH_MIN_ARCH


def arch_number(arch: str) -> int:
    """90 for "sm_90" or "sm_90a"."""
    return int(arch.removeprefix("sm_").rstrip("a"))


class KernelLibrary:
    """Loaded kernels of one GPU. Not thread-safe: use it from the thread that owns the GPU."""

    def __init__(self, device: torch.device | str | int | None = None, *,
                 cubins: Mapping[str, bytes] | None = None, cache_dir: Path | None = None,
                 csrc_dir: Path = CSRC_DIR, programmatic_launch: bool | None = None) -> None:
        from cuda.core import Device

        if device is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = torch.device(device if not isinstance(device, int) else f"cuda:{device}")
        if self.device.type != "cuda":
            raise KernelArgumentError(f"KernelLibrary needs a CUDA device, got {self.device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.init()
        Device(self.device.index).set_current()  # torch's primary context, shared with us
        self.arch = device_arch(self.device)
        # captured graphs keep the launches' attributes: set before capturing
        self.programmatic_launch = programmatic_launch_enabled(self.arch, programmatic_launch)
        self.num_sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        self._cubins = dict(cubins or {})
        self._cache_dir = cache_dir
        self._csrc_dir = csrc_dir
        self._objects: dict[str, object] = {}
        self._kernels: dict[str, object] = {}
        self._streams: dict[int, object] = {}
        self._occupancy: dict[str, int] = {}
        self._dynamic_shared: dict[str, int] = {}  # bytes each kernel is allowed
        self._zeroed: dict[str, torch.Tensor] = {}
        self._outgrown: list[torch.Tensor] = []  # captured graphs may still point at these

    def load_all(self, *, head_dims: Iterable[int] = ATTENTION_HEAD_DIMS) -> None:
        """Compiles (or loads) now rather than at first use every module but attention's,
        and the attention modules of head_dims (by default every head_dim). A module left
        out still loads, compiling if need be, when a kernel of it is first used."""
        names = module_names(head_dims)
        missing = [name for name in names
                   if name not in self._cubins and name not in self._objects]
        self._cubins.update(compile_modules(missing, arch=self.arch, cache_dir=self._cache_dir,
                                            csrc_dir=self._csrc_dir))
        for name in names:
            if MODULES_BY_NAME[name].target(self.arch) is not None:
                self._object(name)

    def launch(self, module: str, function: str, *, grid: tuple[int, ...],
               block: tuple[int, ...], args: tuple, shared_bytes: int = 0,
               cooperative: bool = False) -> None:
        """Launches csrc/<module>.cu's `function` on torch's current stream. Pointers are
        passed as Python ints (torch data_ptr()), other scalars as numpy int32/int64/float32.
        shared_bytes: dynamic shared memory per CTA, for kernels that declare theirs
        `extern __shared__` (the attention kernels past 48 KB). cooperative: every CTA of
        the grid resident at once, or the launch fails (a kernel whose CTAs wait on each
        other); such a launch takes no programmatic serialization."""
        from cuda.core import LaunchConfig, launch

        kernel = self._kernel(module, function)
        if shared_bytes:
            self._allow_dynamic_shared(module, function, shared_bytes)
        options = {"is_cooperative": True} if cooperative else {
            "programmatic_stream_serialization": self.programmatic_launch}
        config = LaunchConfig(grid=grid, block=block, shmem_size=shared_bytes, **options)
        launch(self._stream(), config, kernel, *args)

    def max_active_ctas(self, module: str, function: str, threads: int,
                        shared_bytes: int = 0) -> int:
        """CTAs of `threads` threads (and shared_bytes of dynamic shared memory) of this
        kernel that one SM holds at once."""
        key = f"{module}:{function}:{threads}:{shared_bytes}"
        count = self._occupancy.get(key)
        if count is None:
            if shared_bytes:
                self._allow_dynamic_shared(module, function, shared_bytes)
            occupancy = self._kernel(module, function).occupancy
            count = max(1, int(occupancy.max_active_blocks_per_multiprocessor(threads,
                                                                              shared_bytes)))
            self._occupancy[key] = count
        return count

    def _allow_dynamic_shared(self, module: str, function: str, shared_bytes: int) -> None:
        """Raises the kernel's dynamic shared memory limit (48 KB unless set) to
        shared_bytes, once: launches and occupancy queries past the limit would fail."""
        key = f"{module}:{function}"
        if self._dynamic_shared.get(key, 0) >= shared_bytes:
            return
        from cuda.bindings import driver

        attribute = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        handle = self._kernel(module, function).handle
        if not isinstance(handle, (driver.CUkernel, driver.CUfunction)):
            handle = driver.CUkernel(int(handle))  # a bare address
        if isinstance(handle, driver.CUkernel):  # cuda.core loads modules as libraries
            (error,) = driver.cuKernelSetAttribute(attribute, shared_bytes, handle,
                                                   driver.CUdevice(self.device.index))
        else:
            (error,) = driver.cuFuncSetAttribute(handle, attribute, shared_bytes)
        if error != driver.CUresult.CUDA_SUCCESS:
            raise KernelArgumentError(f"{function}: {shared_bytes} bytes of dynamic shared "
                                      f"memory refused ({error.name})")
        self._dynamic_shared[key] = shared_bytes

    def zeroed_int32(self, name: str, size: int) -> torch.Tensor:
        """A persistent int32 buffer of at least `size` words, zeroed when made, for kernels
        that leave it zeroed again (the attention kernel's arrival counters); every caller
        naming `name` shares it, so their launches must not overlap in time. It grows only
        outside CUDA-graph capture, where its zeroing would be recorded rather than run: run
        a step eagerly first (as a warm-up does). An outgrown buffer is kept, never freed."""
        buffer = self._zeroed.get(name)
        if buffer is None or buffer.numel() < size:
            if torch.cuda.is_current_stream_capturing():
                raise KernelArgumentError(
                    f"{name}: {size} zeroed words needed while capturing a CUDA graph; run "
                    "the step once eagerly before capturing it")
            if buffer is not None:
                self._outgrown.append(buffer)
            buffer = torch.zeros(max(size, 4096, 2 * (0 if buffer is None else buffer.numel())),
                                 dtype=torch.int32, device=self.device)
            self._zeroed[name] = buffer
        return buffer

    def _kernel(self, module: str, function: str):
        key = f"{module}:{function}"
        kernel = self._kernels.get(key)
        if kernel is None:
            if module not in MODULES_BY_NAME:
                raise KernelArgumentError(f"no kernel module {module!r}; the modules are "
                                          f"{sorted(MODULES_BY_NAME)}")
            if function not in MODULES_BY_NAME[module].functions:
                raise KernelArgumentError(f"{module}.cu defines no kernel {function!r}")
            kernel = self._object(module).get_kernel(function)
            self._kernels[key] = kernel
        return kernel

    def _object(self, module: str):
        obj = self._objects.get(module)
        if obj is None:
            from cuda.core import ObjectCode

            cubin = self._cubins.get(module)
            if cubin is None:
                spec = MODULES_BY_NAME[module]
                target = spec.target(self.arch)
                if target is None:
                    raise KernelArgumentError(f"{module}.cu runs only on {spec.arch_specific} "
                                              f"GPUs, not {self.arch}")
                cubin = compile_module(module, arch=target, fast_math=spec.fast_math,
                                       csrc_dir=self._csrc_dir, cache_dir=self._cache_dir).cubin
            obj = ObjectCode.from_cubin(cubin, name=module)
            self._objects[module] = obj
        return obj

    def _stream(self):
        # Wrapping a torch stream is cheap but not free; keep one wrapper per raw handle.
        handle = torch.cuda.current_stream(self.device).cuda_stream
        stream = self._streams.get(handle)
        if stream is None:
            from cuda.core import LEGACY_DEFAULT_STREAM, Stream

            stream = LEGACY_DEFAULT_STREAM if handle == 0 else Stream.from_handle(handle)
            self._streams[handle] = stream
        return stream
