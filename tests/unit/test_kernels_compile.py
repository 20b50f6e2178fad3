"""Every csrc/ kernel really compiles with NVRTC for sm_90 (no GPU needed), defines the
kernels the launch code names, and keeps everything in registers (no local-memory spills).

Skipped only when the NVRTC library itself cannot be loaded; the skip reason says why.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from server.engine.gpu import kernels

from server.engine.gpu import nvrtc
from server.engine.gpu.kernel_store import KernelStoreError, load_cubins, save_cubins
from server.engine.ops.cuda_attention_smem import cta_smem_bytes, dynamic_smem_bytes

ARCH = "sm_90"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    try:
        nvrtc.nvrtc_version()
    except nvrtc.NvrtcUnavailableError as exc:
        print(f"NVRTC unavailable: {exc}")
        pytest.skip(f"NVRTC library not found: {exc}")
    return tmp_path_factory.mktemp("kernel-cache")  # starts empty: everything compiles


@pytest.fixture(scope="module")
def compiled(cache_dir) -> dict[str, nvrtc.CompiledKernel]:
    kernels.compile_all(ARCH, cache_dir=cache_dir)  # side by side; the logs come from the cache
    return {module.name: nvrtc.compile_module(module.name, arch=module.target(ARCH),
                                              fast_math=module.fast_math, cache_dir=cache_dir)
            for module in kernels.MODULES}


def test_every_csrc_file_is_a_registered_module():
    on_disk = {path.stem for path in nvrtc.CSRC_DIR.glob("*.cu")}
    assert on_disk == set(kernels.MODULES_BY_NAME)


@pytest.mark.parametrize("module", [m.name for m in kernels.MODULES])
def test_module_compiles_for_sm90_with_every_named_kernel(compiled, module):
    cubin = compiled[module].cubin
    assert cubin[:4] == b"\x7fELF", "NVRTC output is not a cubin"
    missing = [name for name in kernels.MODULES_BY_NAME[module].functions
               if name.encode() + b"\x00" not in cubin]
    assert not missing, f"{module}.cu does not define {missing}"


@pytest.mark.parametrize("module", [m.name for m in kernels.MODULES])
def test_module_kernels_do_not_spill_registers(compiled, module):
    log = compiled[module].log
    assert "Compiling entry function" in log, "ptxas -v report missing"
    assert nvrtc.spilled_kernels(log) == [], log


# Most registers per thread that keep each attention variant's resident CTAs per SM on sm_90
# (65536 registers, handed out in 8s; shared memory alone allows 6 CTAs at head_dim 128, 8 at
# 96, 9 at 80, 12 at 64): the merge folded into the kernel must not cost the unsplit launches
# occupancy. w1k2 (64 threads) must reach the shared-memory limit too: 6 x 64 x 168,
# 8 x 64 x 128, 9 x 64 x 112 and 12 x 64 x 80 fit. (Head_dim 96's unsplit kernels trade
# occupancy for no spills: paged_attention.cuh.)
ATTENTION_REGISTER_CEILINGS = {"d128_w1": 255, "d128_w2": 168, "d128_w4": 168,
                               "d128_w1k2": 168, "d64_w1": 168, "d64_w2": 128, "d64_w4": 128,
                               "d64_w1k2": 80, "d128_w1t": 168, "d128_w1tk2": 168,
                               "d64_w1t": 168, "d64_w1tk2": 80, "d96_w1": 255, "d96_w2": 168,
                               "d96_w4": 168, "d96_w1k2": 128, "d96_w1t": 168,
                               "d96_w1tk2": 128, "d80_w1": 168, "d80_w2": 128, "d80_w4": 128,
                               "d80_w1k2": 112, "d80_w1t": 168, "d80_w1tk2": 112,
                               **{f"d256_{variant}": 255 for variant in (
                                   "w1", "w2", "w4", "w1k2", "w1t", "w1tk2")}}
# Head_dim 256: shared memory alone holds 3 CTAs (2 of w2 and w4), and those hold 255
# registers a thread. Over an e4m3 cache, w1k2 is bounded to 4 CTAs (255 registers, where 5
# would spill), w1tk2 to 6 (168); w4 (about 210 registers) keeps 2 CTAs of the 3 that shared
# memory allows.
# The e4m3-cache kernels (paged_attention_fp8_d*.cu): w1k2 asks for 6 CTAs at head_dim 128 and
# 96 and 8 at 80 and 64, whose register limits are 168 and 128; w1tk2 10 at 128 and 96 (96),
# 12 at 80 (80).
FP8_CACHE_REGISTER_CEILINGS = {**ATTENTION_REGISTER_CEILINGS, "d64_w1k2": 128,
                               "d128_w1tk2": 96, "d96_w1k2": 168, "d96_w1tk2": 96,
                               "d80_w1k2": 128, "d80_w1tk2": 80, "d256_w1tk2": 168}
# The _extras kernels (soft-capping, ALiBi, sliding window) keep their plain twins' ceilings,
# but for the 16-bit cache's w1k2 at head_dims 64 and 80, which ask for 8 CTAs, and w2 at
# 80, unbounded against spills (paged_attention_d64.cu, paged_attention_d80.cu), and the e4m3
# cache's w1tk2 at 80, 10 CTAs (paged_attention_fp8_d80.cu).
# Keyed by cache kind (e4m3_cache False or True), then by head_dim and variant.
EXTRAS_REGISTER_CEILINGS = {False: {**ATTENTION_REGISTER_CEILINGS, "d64_w1k2": 128,
                                    "d80_w1k2": 128, "d80_w2": 168},
                            True: {**FP8_CACHE_REGISTER_CEILINGS, "d80_w1tk2": 96}}
# head_dim: two stages of 32 K and 32 V rows, each padded by 16 bytes against bank conflicts
ATTENTION_SMEM_BYTES = {128: 34816, 96: 26624, 80: 22528, 64: 18432}
# e4m3 rows are half as long (at 80, padded by 32 bytes: attention_fragments.cuh); the
# 4-warp kernels' Q tile (64 rows) outgrows a stage and gets its own space after stage 0
FP8_CACHE_SMEM_BYTES = {256: 34816, 128: 18432, 96: 14336, 80: 14336, 64: 10240}
FP8_CACHE_W4_SMEM_BYTES = {128: 9216 + 64 * 136 * 2, 96: 7168 + 64 * 104 * 2,
                           80: 7168 + 64 * 88 * 2, 64: 5120 + 64 * 72 * 2}
# Head_dim 256: the 16-row tiles keep Q in shared memory after both stages (16 rows a warp,
# 264 elements each); past 48 KB the kernel declares it extern and the launch passes the size
FP8_CACHE_Q_KEPT_SMEM_BYTES = {256: 34816 + 16 * 264 * 2}  # w1, w1k2
DYNAMIC_SMEM_BYTES = {  # by cache kind (e4m3_cache), like EXTRAS_REGISTER_CEILINGS
    False: {"d256_w1": 67584 + 8448, "d256_w1k2": 67584 + 8448,
                        "d256_w2": 67584 + 2 * 8448, "d256_w4": 67584 + 4 * 8448,
                        "d256_w1t": 67584, "d256_w1tk2": 67584},
    True: {"d256_w2": 34816 + 2 * 8448, "d256_w4": 34816 + 4 * 8448}}
STATIC_SMEM_LIMIT = 48 * 1024


# attention module -> (head_dim, whether its KV cache is e4m3)
ATTENTION_MODULES = {kernels.attention_module(head_dim, e4m3_cache=e4m3): (head_dim, e4m3)
                     for head_dim in kernels.ATTENTION_HEAD_DIMS for e4m3 in (False, True)}


def expected_smem(e4m3_cache: bool, head_dim: int, variant: str) -> tuple[int, int]:
    """(static bytes ptxas reports, dynamic bytes the launch passes)"""
    dynamic = DYNAMIC_SMEM_BYTES[e4m3_cache].get(f"d{head_dim}_{variant}", 0)
    if dynamic:
        return 0, dynamic
    if not e4m3_cache:
        return ATTENTION_SMEM_BYTES[head_dim], 0
    if head_dim in FP8_CACHE_Q_KEPT_SMEM_BYTES and variant in ("w1", "w1k2"):
        return FP8_CACHE_Q_KEPT_SMEM_BYTES[head_dim], 0
    return (FP8_CACHE_W4_SMEM_BYTES if variant == "w4" else FP8_CACHE_SMEM_BYTES)[head_dim], 0


@pytest.mark.parametrize("module", ATTENTION_MODULES)
def test_attention_kernels_keep_their_registers_and_shared_memory(compiled, module):
    usage = nvrtc.kernel_resources(compiled[module].log)
    assert set(usage) == set(kernels.MODULES_BY_NAME[module].functions)  # its head_dim's only
    module_head_dim, e4m3_cache = ATTENTION_MODULES[module]
    ceilings = FP8_CACHE_REGISTER_CEILINGS if e4m3_cache else ATTENTION_REGISTER_CEILINGS
    for name, resources in usage.items():
        registers, smem = resources.registers, resources.smem_bytes
        head_dim, variant, extras = re.search(r"_d(\d+)_(w\dt?(?:k\d)?)(_extras)?$",
                                              name).groups()
        assert int(head_dim) == module_head_dim, name
        ceiling = (EXTRAS_REGISTER_CEILINGS[e4m3_cache] if extras else ceilings)[
            f"d{head_dim}_{variant}"]
        assert registers <= ceiling, (name, registers)
        static, dynamic = expected_smem(e4m3_cache, int(head_dim), variant)
        assert smem == static, (name, smem)
        assert smem <= STATIC_SMEM_LIMIT, (name, smem)
        # what the launch computes (cuda_attention_smem.py), against the kernel's own layout
        shape = dict(head_dim=int(head_dim), e4m3_cache=e4m3_cache,
                     rows=8 if "t" in variant else 16 * int(variant[1]),
                     transposed="t" in variant)
        assert dynamic_smem_bytes(**shape) == dynamic, name
        assert cta_smem_bytes(**shape) == static + dynamic, name


@pytest.mark.parametrize("module", ATTENTION_MODULES)
def test_key_split_decode_kernels_exist_for_every_one_warp_kernel(module):
    names = set(kernels.MODULES_BY_NAME[module].functions)
    one_warp = {name for name in names if name.endswith("_w1")}
    assert len(one_warp) == len(kernels.DTYPES)
    assert {f"{name}k2" for name in one_warp} <= names


@pytest.mark.parametrize("module", ATTENTION_MODULES)
def test_every_attention_kernel_has_an_extras_build(compiled, module):
    # soft-capping and ALiBi run on the _extras twin of whichever kernel the plan picks
    names = set(kernels.MODULES_BY_NAME[module].functions)
    plain = {name for name in names if not name.endswith("_extras")}
    assert {f"{name}_extras" for name in plain} == names - plain
    usage = nvrtc.kernel_resources(compiled[module].log)
    for name in plain:  # same tiles, same shared memory
        assert usage[f"{name}_extras"].smem_bytes == usage[name].smem_bytes, name


def test_compile_all_takes_cached_cubins_without_compiling(compiled, cache_dir, monkeypatch):
    def no_compile(*args, **kwargs):
        raise AssertionError("compiled although every cubin was cached")

    monkeypatch.setattr(nvrtc, "_nvrtc_compile", no_compile)
    assert kernels.compile_all(ARCH, cache_dir=cache_dir) == {
        name: c.cubin for name, c in compiled.items()}


def test_modules_compile_side_by_side(monkeypatch, tmp_path):
    # two compiles must be in flight at once: each waits for the other at the barrier (a
    # sequential loop would time out there)
    barrier = threading.Barrier(2, timeout=10)

    def fake_compile(module, **kwargs):
        barrier.wait()
        return nvrtc.CompiledKernel(cubin=module.encode(), log="")

    monkeypatch.setattr(kernels, "compile_module", fake_compile)
    monkeypatch.setattr(kernels.os, "cpu_count", lambda: 2)
    assert kernels.compile_modules(["gelu", "rms_norm"], arch=ARCH, cache_dir=tmp_path) == {
        "gelu": b"gelu", "rms_norm": b"rms_norm"}


def test_a_fresh_process_compiles_modules_side_by_side(cache_dir, tmp_path):
    # cuda.core's first import, made by several threads at once, left most of them with
    # "cannot import name 'Program'" (5 runs of 6 before compile_modules imported it first)
    script = ("import sys; from pathlib import Path; from server.engine.gpu import kernels; "
              "kernels.compile_modules(['gelu', 'rms_norm', 'layer_norm', 'quantize'], "
              "arch=sys.argv[1], cache_dir=Path(sys.argv[2]))")
    done = subprocess.run([sys.executable, "-c", script, ARCH, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(tmp_path.glob("*.cubin"))) == 4


def test_broken_kernel_reports_the_compiler_log(compiled, tmp_path):
    (tmp_path / "broken.cu").write_text('extern "C" __global__ void k(float* x) { y[0] = 1; }\n')
    with pytest.raises(nvrtc.KernelCompileError, match='identifier "y" is undefined'):
        nvrtc.compile_module("broken", arch=ARCH, fast_math=False, csrc_dir=tmp_path,
                             cache_dir=tmp_path / "cache")


def test_engine_directory_cubins_round_trip_and_refuse_other_sources(compiled, tmp_path):
    cubins = {name: c.cubin for name, c in compiled.items()}
    save_cubins(tmp_path / "engine", ARCH, cubins)
    assert load_cubins(tmp_path / "engine", ARCH) == cubins
    with pytest.raises(KernelStoreError, match="sm_80"):
        load_cubins(tmp_path / "engine", "sm_80")

    edited = tmp_path / "csrc"
    shutil.copytree(nvrtc.CSRC_DIR, edited)
    rope = Path(edited / "rope_cache.cu")
    rope.write_text(rope.read_text() + "\n// changed\n")
    with pytest.raises(KernelStoreError, match="rope_cache"):
        load_cubins(tmp_path / "engine", ARCH, csrc_dir=edited)
    (edited / "rope_cache.cu").unlink()  # a kernel a later inflightd dropped
    with pytest.raises(KernelStoreError, match="no longer has; rebuild"):
        load_cubins(tmp_path / "engine", ARCH, csrc_dir=edited)


# csrc/gemv_int.cu and the W8A8 GEMV of csrc/w8a8.cu: one tile of tokens with the weights
# scaled one by one is held to 80 registers (3 CTAs of 256 threads per SM), the rest to 128
# (2 CTAs); shared memory holds the 8 warps' partial sums (4 registers x 32 lanes a tile).
INT_GEMV_SMEM_BYTES_PER_TILE = 8 * 4 * 32 * 4


def test_integer_gemv_kernels_keep_their_occupancy(compiled):
    usage = {**nvrtc.kernel_resources(compiled["gemv_int"].log),
             **{name: resources for name, resources
                in nvrtc.kernel_resources(compiled["w8a8"].log).items()
                if name.startswith("gemv_")}}
    assert len(usage) == len(kernels.MODULES_BY_NAME["gemv_int"].functions) + 4
    for name, resources in usage.items():
        tiles = int(re.search(r"_t(\d)", name).group(1))
        one_by_one = tiles == 1 and "_bs" not in name and "w8a8" not in name
        assert resources.registers <= (80 if one_by_one else 128), (name, resources.registers)
        assert resources.smem_bytes == tiles * INT_GEMV_SMEM_BYTES_PER_TILE, name
