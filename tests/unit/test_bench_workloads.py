"""bench/workloads.py, TensorRT-LLM's throughput workloads, on the CPU with a tiny model:
exact lengths, every figure present, and the engine's methods put back afterwards."""

from __future__ import annotations

import argparse
import weakref

import pytest
import torch

import server.engine.step.runner as runner_module
from bench.offline import free_gpu_memory
from bench.workloads import WorkloadError, parse_workloads, run_workload, run_workloads
from server.engine.llm import LLM


def test_workloads_parse_with_and_without_a_request_count():
    assert parse_workloads(["128/2048:1000", "1000/1000"], default_requests=7) == [
        (128, 2048, 1000), (1000, 1000, 7)]


@pytest.mark.parametrize("text", ["128", "128/", "a/2", "0/5", "5/0", "8/8:x"])
def test_malformed_workloads_are_refused_naming_the_form(text):
    with pytest.raises(WorkloadError, match="ISL/OSL"):
        parse_workloads([text], default_requests=1)


def test_workload_generates_exactly_osl_tokens_for_each_request_and_restores_the_engine():
    llm = LLM("dummy:tiny", device="cpu", max_num_seqs=8, max_model_len=64)
    engine = llm.engine
    prepare_inputs = runner_module.prepare_inputs
    result = run_workload(llm, input_len=12, output_len=9, num_prompts=6)
    assert result["output_tokens"] == 6 * 9
    assert result["total_tokens_per_s"] > result["output_tokens_per_s"] > 0
    assert set(result["host_ms_per_step"]) == {"schedule", "prepare", "update", "launch",
                                               "total"}
    assert "trtllm_h200_fp8_tokens_per_s" not in result  # not one of TensorRT-LLM's rows
    # the timing wrappers are gone: the class's methods and the module's function again
    assert "schedule" not in vars(engine.scheduler) and "update" not in vars(engine.scheduler)
    assert runner_module.prepare_inputs is prepare_inputs


def test_each_workloads_engine_is_freed_before_the_next_is_built(monkeypatch, tmp_path):
    # On an H100 the second workload's engine found the first one's memory still held: the
    # device was "auto", so the allocator's cache was never emptied, and its KV cache shrank
    # from 1,072,928 tokens to 30,944.
    engines, freed_before_build = [], []

    def make_llm(model, args, **kwargs):
        freed_before_build.append(all(ref() is None for ref in engines))
        llm = LLM(model, device="cpu", max_num_seqs=4, max_model_len=kwargs["max_model_len"])
        engines.append(weakref.ref(llm.engine))
        return llm

    emptied = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    args = argparse.Namespace(workload=["8/4:2", "12/3:2"], num_prompts=2, device="auto",
                              quantization=None, kv_cache_dtype="auto", seed=0,
                              temperature=0.0, top_p=1.0, json=tmp_path / "w.json")
    results = run_workloads(args, make_llm=make_llm, engine_model=lambda a: ("dummy:tiny", None),
                            free_memory=free_gpu_memory)
    assert [r["workload"] for r in results] == ["8/4", "12/3"]
    assert freed_before_build == [True, True]
    assert all(ref() is None for ref in engines) and len(emptied) == 2
