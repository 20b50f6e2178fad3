"""The attention kernels split into one csrc/ module per (KV cache kind, head_dim), so that a
model compiles only its own head_dim's: the split loses no kernel, KernelLibrary loads the
modules asked for and the rest at first use, and engine directories built before the split
are refused with a rebuild hint. No GPU and no NVRTC needed (compiles are faked)."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import pytest

from server.engine.gpu import kernels
from server.engine.gpu.kernel_store import KernelStoreError, load_cubins
from server.engine.gpu.kernels import (ATTENTION_EXTRAS, ATTENTION_HEAD_DIMS, ATTENTION_VARIANTS,
                                       DTYPES, KernelArgumentError, KernelLibrary, _names,
                                       attention_module)
from server.engine.gpu.nvrtc import CSRC_DIR, CompiledKernel
from server.engine.ops.cuda_attention import kernel_module

# The functions of the all-head-dim modules before the split (paged_attention.cu and
# paged_attention_fp8.cu), from the same expressions
OLD_FUNCTIONS = {
    False: _names("paged_attention_{dt}_d{d}_w{w}{x}", dt=DTYPES, d=ATTENTION_HEAD_DIMS,
                  w=ATTENTION_VARIANTS, x=ATTENTION_EXTRAS),
    True: _names("paged_attention_{dt}_kvfp8_d{d}_w{w}{x}", dt=DTYPES, d=ATTENTION_HEAD_DIMS,
                 w=ATTENTION_VARIANTS, x=ATTENTION_EXTRAS)}


def test_every_head_dim_has_a_module_and_a_csrc_file_per_cache_kind():
    for head_dim in ATTENTION_HEAD_DIMS:
        assert attention_module(head_dim, e4m3_cache=False) == f"paged_attention_d{head_dim}"
        assert attention_module(head_dim, e4m3_cache=True) == f"paged_attention_fp8_d{head_dim}"
        for e4m3 in (False, True):
            name = attention_module(head_dim, e4m3_cache=e4m3)
            assert name in kernels.MODULES_BY_NAME
            assert (CSRC_DIR / f"{name}.cu").is_file()
    assert not (CSRC_DIR / "paged_attention.cu").exists()
    assert not (CSRC_DIR / "paged_attention_fp8.cu").exists()


@pytest.mark.parametrize("e4m3", (False, True))
def test_each_module_defines_its_head_dims_kernels_and_together_the_old_ones(e4m3):
    union: list[str] = []
    for head_dim in ATTENTION_HEAD_DIMS:
        module = kernels.MODULES_BY_NAME[attention_module(head_dim, e4m3_cache=e4m3)]
        assert module.fast_math  # as the old modules were
        expected = {name for name in OLD_FUNCTIONS[e4m3] if f"_d{head_dim}_" in name}
        assert set(module.functions) == expected
        union += module.functions
    assert sorted(union) == sorted(OLD_FUNCTIONS[e4m3])  # none lost, none twice


def test_uncovered_head_dims_are_refused_by_name():
    with pytest.raises(KernelArgumentError, match="not 112"):
        attention_module(112, e4m3_cache=False)
    with pytest.raises(KernelArgumentError, match="not 16"):
        kernels.module_names((16,))


def test_launch_code_picks_the_module_of_its_suffix_and_head_dim():
    assert kernel_module("bf16", 128) == "paged_attention_d128"
    assert kernel_module("fp16_kvfp8", 80) == "paged_attention_fp8_d80"


def test_module_names_are_every_other_module_and_the_head_dims_attention():
    base = [module.name for module in kernels.BASE_MODULES]
    assert kernels.module_names(()) == tuple(base)
    assert set(kernels.module_names((128,))) == {*base, "paged_attention_d128",
                                                  "paged_attention_fp8_d128",
                                                  "paged_attention_hopper",
                                                  "paged_decode_bulk"}
    assert set(kernels.module_names((64,))) == {*base, "paged_attention_d64",
                                                 "paged_attention_fp8_d64"}
    assert set(kernels.module_names()) == set(kernels.MODULES_BY_NAME)


def test_the_hopper_module_builds_for_sm90a_and_exists_only_on_sm90():
    hopper = kernels.MODULES_BY_NAME["paged_attention_hopper"]
    assert hopper.target("sm_90") == "sm_90a"
    assert hopper.target("sm_80") is None and hopper.target("sm_100") is None
    assert kernels.MODULES_BY_NAME["gemv"].target("sm_80") == "sm_80"


def test_compile_modules_leaves_out_what_cannot_run_on_the_arch(monkeypatch):
    built = []
    monkeypatch.setattr(kernels, "compile_module",
                        lambda name, *, arch, **_: built.append((name, arch)) or
                        type("Compiled", (), {"cubin": b""})())
    kernels.compile_modules(["gemv", "paged_attention_hopper"], arch="sm_80")
    assert built == [("gemv", "sm_80")]
    built.clear()
    kernels.compile_modules(["paged_attention_hopper"], arch="sm_90")
    assert built == [("paged_attention_hopper", "sm_90a")]


class FakeObjectCode:
    """cuda.core's ObjectCode without a GPU: hands back (module, function) as the kernel."""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_cubin(cls, cubin: bytes, *, name: str) -> "FakeObjectCode":
        assert cubin == name.encode()
        return cls(name)

    def get_kernel(self, function: str) -> tuple[str, str]:
        return self.name, function


@pytest.fixture
def library(monkeypatch) -> tuple[KernelLibrary, list[str]]:
    """A KernelLibrary made without a GPU, and the modules it compiles, in order."""
    compiled: list[str] = []

    def fake_compile(module, **kwargs):
        compiled.append(module)
        return CompiledKernel(cubin=module.encode(), log="")

    monkeypatch.setattr(kernels, "compile_module", fake_compile)
    monkeypatch.setitem(sys.modules, "cuda.core",
                        types.SimpleNamespace(ObjectCode=FakeObjectCode, Program=None))
    lib = object.__new__(KernelLibrary)  # __init__ needs a CUDA device
    lib.arch, lib._cubins, lib._objects, lib._kernels = "sm_90", {}, {}, {}
    lib._cache_dir, lib._csrc_dir = None, CSRC_DIR
    return lib, compiled


def test_load_all_loads_only_the_head_dims_asked_for(library):
    lib, compiled = library
    lib.load_all(head_dims=(128,))
    assert sorted(compiled) == sorted(kernels.module_names((128,)))
    assert set(lib._objects) == set(kernels.module_names((128,)))


def test_a_kernel_of_a_module_not_loaded_loads_it_at_first_use(library):
    lib, compiled = library
    lib.load_all(head_dims=(128,))
    kernel = lib._kernel("paged_attention_fp8_d64", "paged_attention_bf16_kvfp8_d64_w1t")
    assert kernel == ("paged_attention_fp8_d64", "paged_attention_bf16_kvfp8_d64_w1t")
    assert compiled[-1] == "paged_attention_fp8_d64"


def test_on_another_gpu_the_hopper_module_is_skipped_by_load_all_and_refused_by_name(library):
    lib, compiled = library
    lib.arch = "sm_80"
    lib.load_all(head_dims=(128,))
    assert "paged_attention_hopper" not in compiled
    with pytest.raises(KernelArgumentError, match="runs only on sm_90a GPUs, not sm_80"):
        lib._kernel("paged_attention_hopper", "paged_attention_hopper_bf16_d128")


def test_kernels_of_the_old_modules_are_refused_clearly(library):
    lib, _ = library
    with pytest.raises(KernelArgumentError, match="no kernel module 'paged_attention'"):
        lib._kernel("paged_attention", "paged_attention_bf16_d128_w1")
    with pytest.raises(KernelArgumentError, match="defines no kernel"):
        lib._kernel("paged_attention_d64", "paged_attention_bf16_d128_w1")


def test_an_engine_built_before_the_split_asks_for_a_rebuild(tmp_path):
    # format 1: the all-head-dim attention cubins, whose modules are gone
    kernels_dir = tmp_path / "engine" / "kernels"
    (kernels_dir / "sm_90").mkdir(parents=True)
    cubin = b"\x7fELF old attention"
    (kernels_dir / "sm_90" / "paged_attention.cubin").write_bytes(cubin)
    entry = {"file": "sm_90/paged_attention.cubin", "sha256": hashlib.sha256(cubin).hexdigest(),
             "source_sha256": "0" * 64}
    manifest = {"format": 1, "arches": {"sm_90": {"nvrtc": "12.8",
                                                  "modules": {"paged_attention": entry}}}}
    (kernels_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(KernelStoreError, match="format 1.*rebuild the engine with `inflightd"):
        load_cubins(Path(tmp_path / "engine"), "sm_90")
