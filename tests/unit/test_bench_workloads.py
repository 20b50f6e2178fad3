"""bench/workloads.py, TensorRT-LLM's throughput workloads, on the CPU with a tiny model:
exact lengths, every figure present, and the engine's methods put back afterwards."""

from __future__ import annotations

import pytest

import server.engine.step.runner as runner_module
from bench.workloads import WorkloadError, parse_workloads, run_workload
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
