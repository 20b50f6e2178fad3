"""`inflightd serve` argument handling (no daemon started)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from server.cli import build_parser, main, serve_config
from server.config import DEFAULT_MODEL
from tests.api.daemon import REPO_ROOT


def parse(*argv: str):
    argv = list(argv)
    return build_parser(argv).parse_args(argv)


def test_serve_with_no_arguments_serves_the_default_model_on_localhost_8000():
    config = serve_config(parse("serve"))
    assert (config.api.host, config.api.port) == ("127.0.0.1", 8000)
    assert config.model.model == DEFAULT_MODEL
    assert config.served_model_name == DEFAULT_MODEL
    assert config.cache.enable_prefix_caching
    assert config.cache.kv_cache_tokens is None  # the engine picks; 32768 on CPU


def test_serve_options_reach_the_engine_configs():
    config = serve_config(parse(
        "serve", "--model", "dummy:tiny", "--served-model-name", "x", "--port", "9001",
        "--max-num-seqs", "8", "--max-num-batched-tokens", "512", "--max-model-len", "1024",
        "--block-size", "32", "--kv-cache-tokens", "4096", "--disable-prefix-caching",
        "--dtype", "float32", "--device", "cpu", "--enforce-eager", "--seed", "3",
        "--kv-admission", "guaranteed", "--tensor-parallel-size", "3"))
    assert config.served_model_name == "x" and config.api.port == 9001
    assert (config.scheduler.max_num_seqs, config.scheduler.max_num_batched_tokens) == (8, 512)
    assert config.scheduler.max_model_len == config.model.max_model_len == 1024
    assert (config.cache.block_size, config.cache.kv_cache_tokens) == (32, 4096)
    assert not config.cache.enable_prefix_caching
    assert (config.model.dtype, config.model.device, config.model.seed) == ("float32", "cpu", 3)
    assert config.model.enforce_eager
    assert config.scheduler.kv_admission == "guaranteed"
    assert config.model.tensor_parallel_size == 3


def test_positional_model_directory_wins_over_the_flag():
    assert serve_config(parse("serve", "/models/engine-dir")).model.model == "/models/engine-dir"


def test_kv_cache_tokens_and_memory_fraction_exclude_each_other():
    with pytest.raises(SystemExit):
        parse("serve", "--kv-cache-tokens", "1024", "--memory-fraction", "0.5")


def test_invalid_setting_exits_with_status_2_and_names_the_option(capsys):
    assert main(["serve", "--block-size", "3"]) == 2
    assert "--block-size" in capsys.readouterr().err


def test_help_lists_serve_and_its_options():
    result = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--help"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--host", "--port", "--model", "--served-model-name", "--max-num-seqs",
                   "--max-num-batched-tokens", "--max-model-len", "--block-size",
                   "--kv-cache-tokens", "--memory-fraction", "--disable-prefix-caching"):
        assert option in result.stdout


def test_served_model_name_repeats_into_aliases_and_grpc_stays_off_unless_given():
    config = serve_config(parse("serve", "--served-model-name", "ensemble",
                                "--served-model-name", "tensorrt_llm",
                                "--served-model-name", "ensemble"))
    assert config.served_model_names == ("ensemble", "tensorrt_llm")
    assert config.served_model_name == "ensemble" and config.api.grpc_port is None
    assert serve_config(parse("serve", "--grpc-port", "8001")).api.grpc_port == 8001


def test_a_grpc_port_out_of_range_is_refused(capsys):
    assert main(["serve", "--grpc-port", "70000"]) == 2
    assert "--grpc-port" in capsys.readouterr().err
