"""The tensor-parallel engine on the CPU: worker processes over gloo beside rank 0 in this
process give the one-process engine's tokens and prompt logprobs (every rank computes the
prompt rows' logits: their all-gathers pair up), with async scheduling too (rank 0's sampled
tokens reach the workers for the next step's inputs); a killed worker ends it with an error
naming the rank, and no worker outlives close(); two "nodes" on one machine (one of them
`inflightd serve --headless`) give the same tokens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from server.engine.llm import LLM
from server.engine.service.workers import WorkerDiedError
from server.scheduler.request import SamplingParams
from tests.api.daemon import free_port
from tests.golden.helpers import make_hf_model, single_torch_thread

REPO_ROOT = Path(__file__).resolve().parents[2]

PROMPTS = [[5, 17, 33, 2, 9, 40, 41, 42, 7], [100, 7, 8, 44, 45], [9, 9, 8, 7]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("llama-gqa")
    make_hf_model("llama-gqa-tied").save_pretrained(path)
    return str(path)


def params() -> list[SamplingParams]:
    return [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, prompt_logprobs=2),
            SamplingParams(temperature=0.8, seed=3, max_tokens=10, ignore_eos=True),
            SamplingParams(temperature=0, repetition_penalty=1.2, max_tokens=8,
                           ignore_eos=True)]


def llm(model_dir: str, *, tensor_parallel_size: int, async_scheduling: bool) -> LLM:
    return LLM(model_dir, device="cpu", kv_cache_tokens=256, block_size=4,
               max_num_batched_tokens=8, async_scheduling=async_scheduling,
               tensor_parallel_size=tensor_parallel_size)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_two_ranks_give_the_one_process_engines_tokens(model_dir, async_scheduling):
    with single_torch_thread():
        expected = llm(model_dir, tensor_parallel_size=1,
                       async_scheduling=async_scheduling).generate(PROMPTS, params())
        with llm(model_dir, tensor_parallel_size=2,
                 async_scheduling=async_scheduling) as parallel:
            workers = parallel.engine.workers._processes
            got = parallel.generate(PROMPTS, params())
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert all(not process.is_alive() for process in workers)
    got_prompt, expected_prompt = got[0].prompt_logprobs, expected[0].prompt_logprobs
    assert len(got_prompt) == len(PROMPTS[0]) and got_prompt[0] is None
    for entry, want in zip(got_prompt[1:], expected_prompt[1:]):
        assert entry.top_token_ids == want.top_token_ids
        assert entry.logprob == pytest.approx(want.logprob, abs=1e-4)


def test_a_killed_worker_ends_the_engine_naming_its_rank(model_dir):
    with single_torch_thread():
        parallel = llm(model_dir, tensor_parallel_size=2, async_scheduling=False)
        try:
            worker = parallel.engine.workers._processes[0]
            os.kill(worker.pid, signal.SIGKILL)
            worker.join(timeout=10)
            with pytest.raises(WorkerDiedError, match="rank 1 exited"):
                parallel.generate(PROMPTS[:1], params()[:1])
        finally:
            parallel.close()
    assert not worker.is_alive()


def test_two_nodes_on_one_machine_give_the_one_process_engines_tokens(model_dir):
    """Node 1 runs `inflightd serve --headless` (its rank only); node 0 is this process's
    engine with rank 0; they meet at --master-addr:--master-port."""
    port = free_port()
    node_1 = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--headless", "--nnodes", "2",
         "--node-rank", "1", "--tensor-parallel-size", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(port), "--device", "cpu", "--log-level", "warning"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with single_torch_thread():
            expected = llm(model_dir, tensor_parallel_size=1,
                           async_scheduling=True).generate(PROMPTS, params())
            with LLM(model_dir, device="cpu", kv_cache_tokens=256, block_size=4,
                     max_num_batched_tokens=8, tensor_parallel_size=2, nnodes=2,
                     node_rank=0, master_port=port) as node_0:
                assert node_0.engine.workers._processes == []  # its only rank is 0
                got = node_0.generate(PROMPTS, params())
        assert [c.token_ids for c in got] == [c.token_ids for c in expected]
        assert node_1.wait(timeout=30) == 0, node_1.stdout.read().decode()
    finally:
        if node_1.poll() is None:
            node_1.kill()


def test_headless_is_refused_on_node_0_and_several_nodes_need_a_port():
    for args, message in ((["--headless"], "--headless is for the nodes other than node 0"),
                          (["--nnodes", "2", "--node-rank", "1", "--tensor-parallel-size", "2",
                            "--headless"], "need --master-addr and --master-port")):
        result = subprocess.run([sys.executable, "-m", "server.cli", "serve", *args],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr
