"""`inflightd build` without a GPU: the engine directory's layout, its config round trip, the
weights it writes (or the dummy spec it records), and loading it back through resolve_model.
Cubins for sm_90 are compiled with NVRTC, which needs no GPU."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from server.engine.loading import build as build_module
from server.engine.loading import default_model
from server.engine.gpu import nvrtc
from server.engine.loading.build import BuildError, BuildOptions, build_engine, ensure_engine_dir
from server.engine.loading.dummy import dummy_hf_config, iter_dummy_weights
from server.engine.loading.engine_dir import (EngineDirConfig, EngineDirError, read_engine_config,
                                      resolve_engine_dir)
from server.engine.gpu.kernel_store import load_cubins
from server.engine.models.config import ModelArchConfig
from server.engine.step.runner import ModelRunner
from server.engine.gpu.tuning import KernelTuning, PartitionChoice, context_buckets, load_tuning
from server.engine.loading.weights import resolve_model
from server.scheduler.output import NewRequestData, ScheduledRequest, SchedulerOutput
from server.scheduler.request import SamplingParams


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # No default-model tokenizer for dummy shapes (it would convert the packaged GGUF), and
    # kernels compiled into a cache of this test's own.
    monkeypatch.setattr(default_model, "packaged_default_gguf", lambda: None)
    monkeypatch.setenv("INFLIGHTD_CACHE", str(tmp_path / "cache"))


def make_hf_dir(path: Path, *, shape: str = "tiny-mha") -> Path:
    """A float32 Hugging Face directory: config, dummy weights and tokenizer files."""
    path.mkdir(parents=True)
    config = dummy_hf_config(shape)
    (path / "config.json").write_text(json.dumps(config))
    arch = ModelArchConfig.from_hf(config)
    weights = dict(iter_dummy_weights(arch, seed=7, dtype=torch.float32,
                                      device=torch.device("cpu")))
    save_file(weights, str(path / "model.safetensors"))
    (path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "WordLevel"}}')
    (path / "tokenizer_config.json").write_text('{"model_max_length": 2048}')
    (path / "generation_config.json").write_text('{"eos_token_id": 2}')
    return path


def first_step_logits(runner: ModelRunner) -> torch.Tensor:
    out = SchedulerOutput(
        scheduled=(ScheduledRequest("r", (5, 9, 14, 3), 0, (0,), True),),
        new_requests=(NewRequestData("r", (5, 9, 14, 3), (), SamplingParams(temperature=0)),),
        preempted_req_ids=(), finished_req_ids=(), num_batched_tokens=4)
    return runner.forward_logits(out)[1]


def cpu_runner(model: str, dtype: torch.dtype = torch.float32) -> ModelRunner:
    return ModelRunner(resolve_model(model), dtype=dtype, device="cpu", block_size=16,
                       num_blocks=4)


def test_dummy_engine_records_shape_and_seed_and_loads_the_same_weights(tmp_path):
    engine = build_engine(BuildOptions(model="dummy:tiny", output=tmp_path / "engine",
                                       max_model_len=512, max_batch_size=32),
                          progress=False)
    assert sorted(p.name for p in engine.iterdir()) == ["config.json", "tuning.json"]
    hf_config, config = read_engine_config(engine)
    assert hf_config == dummy_hf_config("tiny")
    assert (config.model_name, config.weights, config.dummy_seed) == ("dummy:tiny", "dummy", 0)
    assert (config.dtype, config.max_batch_size, config.max_model_len) == ("bfloat16", 32, 512)
    assert config.kernel_arches == ()
    source, _ = resolve_engine_dir(engine)
    assert source.weights_dir is None and source.engine_dir == engine.resolve()
    assert source.arch.max_position_embeddings == 512  # the engine's context window
    assert torch.equal(first_step_logits(cpu_runner(str(engine))),
                       first_step_logits(cpu_runner("dummy:tiny")))


def test_hf_engine_holds_weights_in_engine_dtype_and_the_tokenizer_files(tmp_path):
    model_dir = make_hf_dir(tmp_path / "hf")
    engine = build_engine(BuildOptions(model=str(model_dir), output=tmp_path / "engine",
                                       dtype="float16"), progress=False)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (engine / name).read_bytes() == (model_dir / name).read_bytes()
    with safe_open(str(engine / "model.safetensors"), "pt") as f, \
            safe_open(str(model_dir / "model.safetensors"), "pt") as original:
        assert set(f.keys()) == set(original.keys())
        for name in f.keys():
            assert f.get_tensor(name).dtype == torch.float16
            assert torch.equal(f.get_tensor(name), original.get_tensor(name).half())
    source = resolve_model(str(engine))
    assert source.weights_dir == engine and source.tokenizer_dir == engine
    assert source.name == str(model_dir)
    # float16-rounded weights, run in float32: the same model up to that rounding
    torch.testing.assert_close(first_step_logits(cpu_runner(str(engine))),
                               first_step_logits(cpu_runner(str(model_dir))),
                               atol=2e-3, rtol=0)


def test_large_models_are_written_in_indexed_shards(tmp_path, monkeypatch):
    model_dir = make_hf_dir(tmp_path / "hf")
    monkeypatch.setattr(build_module, "SHARD_BYTES", 200_000)
    engine = build_engine(BuildOptions(model=str(model_dir), output=tmp_path / "engine",
                                       dtype="float32"), progress=False)
    index = json.loads((engine / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    for shard in shards:  # a shard exceeds the limit only when one tensor alone does
        with safe_open(str(engine / shard), "pt") as f:
            sizes = [f.get_tensor(name).nbytes for name in f.keys()]
        assert len(sizes) == 1 or sum(sizes) <= 200_000, (shard, sizes)
    assert torch.equal(first_step_logits(cpu_runner(str(engine))),
                       first_step_logits(cpu_runner(str(model_dir))))


def test_arch_option_compiles_cubins_without_a_gpu(tmp_path):
    try:
        nvrtc.nvrtc_version()
    except nvrtc.NvrtcUnavailableError as exc:
        pytest.skip(f"NVRTC library not found: {exc}")
    # head_dim 64: the attention modules of that head_dim only, for both KV cache kinds
    engine = build_engine(BuildOptions(model="dummy:smollm2-135m", output=tmp_path / "engine",
                                       arches=("sm_90",)), progress=False)
    cubins = load_cubins(engine, "sm_90")
    assert set(cubins) == {"rms_norm", "activation", "layer_norm", "gelu", "rope_cache", "gemv",
                           "gemv_fp8", "quantize", "gemv_int", "dequantize_int", "w8a8",
                           "token_bitmask", "argmax", "all_reduce", "decode_stack",
                           "paged_attention_d64", "paged_attention_fp8_d64"}
    assert all(cubin[:4] == b"\x7fELF" for cubin in cubins.values())
    assert read_engine_config(engine)[1].kernel_arches == ("sm_90",)
    if not torch.cuda.is_available():
        assert load_tuning(engine, "sm_90") is None  # nothing timed without a GPU


def test_engines_compile_the_attention_modules_of_their_head_dim_only():
    assert build_module.model_head_dims(resolve_model("dummy:smollm2-135m")) == (64,)
    assert build_module.model_head_dims(resolve_model("dummy:llama-3-8b")) == (128,)
    # head_dim 16, which no attention kernel covers: the model runs on the torch reference
    assert build_module.model_head_dims(resolve_model("dummy:tiny")) == ()


def test_build_refuses_to_overwrite_and_checks_limits(tmp_path):
    out = tmp_path / "engine"
    out.mkdir()
    with pytest.raises(BuildError, match="--force"):
        build_engine(BuildOptions(model="dummy:tiny", output=out), progress=False)
    build_engine(BuildOptions(model="dummy:tiny", output=out, force=True), progress=False)
    with pytest.raises(BuildError, match="context window"):
        build_engine(BuildOptions(model="dummy:tiny", output=tmp_path / "e2",
                                  max_model_len=4096), progress=False)
    with pytest.raises(BuildError, match="already an engine"):
        build_engine(BuildOptions(model=str(out), output=tmp_path / "e3"), progress=False)
    with pytest.raises(BuildError, match="sm_90"):
        BuildOptions(model="dummy:tiny", output=out, arches=("hopper",))
    assert not list(tmp_path.glob(".*partial*"))  # failed builds leave nothing behind


def test_cli_build_writes_the_engine_and_reports_errors(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="inflightd")
    build_module.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build", "dummy:tiny-mqa", "--output", str(tmp_path / "e"),
                              "--max-batch-size", "8", "--dtype", "float16"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "e").resolve())
    config = read_engine_config(tmp_path / "e")[1]
    assert (config.max_batch_size, config.dtype) == (8, "float16")
    args = parser.parse_args(["build", "dummy:nope", "--output", str(tmp_path / "f")])
    assert args.func(args) == 2
    assert "unknown dummy shape" in capsys.readouterr().err


def test_ensure_engine_dir_builds_once_per_model_and_options(tmp_path, monkeypatch):
    first = ensure_engine_dir("dummy:tiny", progress=False)
    assert first.parent == tmp_path / "cache" / "engines"
    assert ensure_engine_dir(str(first)) == first  # an engine directory is used as is

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt an engine that was already in the cache")

    monkeypatch.setattr(build_module, "build_engine", no_build)
    assert ensure_engine_dir("dummy:tiny", progress=False) == first
    with pytest.raises(AssertionError, match="rebuilt"):
        ensure_engine_dir("dummy:tiny", dtype="float16", progress=False)


def test_engine_config_round_trips_and_rejects_other_formats():
    config = EngineDirConfig(model_name="m", dtype="bfloat16", max_batch_size=4,
                             max_num_tokens=64, max_model_len=128, weights="dummy",
                             dummy_seed=3, kernel_arches=("sm_90",), inflightd_version="x",
                             built_at="t")
    assert EngineDirConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    with pytest.raises(EngineDirError, match="format"):
        EngineDirConfig.from_json({**config.to_json(), "format": 99})
    with pytest.raises(EngineDirError, match="dummy_seed"):
        EngineDirConfig(**{**config.__dict__, "weights": "safetensors"})


def test_tuning_picks_the_choice_of_the_smallest_bucket_covering_the_context(tmp_path):
    tuning = KernelTuning(arch="sm_90", device_name="gpu", dtype="bfloat16",
                          decode_partition_len=(
                              PartitionChoice(512, 64, ((64, 10.0), (128, 12.0))),
                              PartitionChoice(2048, 128, ((64, 30.0), (128, 25.0)))))
    assert [tuning.partition_len_for(n) for n in (1, 512, 513, 2048, 10**6)] == \
        [64, 64, 128, 128, 128]
    assert KernelTuning.from_json("sm_90", json.loads(json.dumps(tuning.to_json()))) == tuning
    assert context_buckets(8192) == (512, 2048, 8192)
    assert context_buckets(3000) == (512, 2048, 3000)
    assert context_buckets(300) == (300,)


@pytest.mark.parametrize("family", ["glm4", "falcon-new-decoder", "bloom"])
def test_engine_from_a_family_with_its_own_names_and_layouts_computes_the_same(tmp_path,
                                                                              family):
    """The engine directory holds the engine's names and layouts already (GLM 4's renamed
    norms and reordered q/k rows, Falcon's grouped q|k|v): reading it back must not rename
    or reorder them a second time."""
    from tests.golden.helpers import make_hf_model

    model_dir = tmp_path / "hf"
    make_hf_model(family).save_pretrained(model_dir)
    engine = build_engine(BuildOptions(model=str(model_dir), output=tmp_path / "engine",
                                       dtype="float32"), progress=False)
    assert torch.equal(first_step_logits(cpu_runner(str(engine))),
                       first_step_logits(cpu_runner(str(model_dir))))
