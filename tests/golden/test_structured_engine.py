"""Grammar-constrained decoding in the engine, on the CPU reference path with a tiny random
model and the default model's tokenizer: async scheduling gives the tokens of the sync
engine, preempted requests replay into fresh matchers, a grammar that fails rejects its
request alone, and a request waiting for its grammar holds nobody back."""

from __future__ import annotations

import json
import threading

import jsonschema
import pytest

from server.scheduler.request import SamplingParams
from server.structured_output import compiler as compiler_module
from server.structured_output.spec import GrammarSpec
from tests.golden.helpers import single_torch_thread, tiny_llm_that_preempts

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 6},
                         "level": {"type": "integer", "minimum": 1, "maximum": 9},
                         "tags": {"type": "array", "items": {"enum": ["x", "y"]},
                                  "maxItems": 2}},
          "required": ["name", "level", "tags"]}
JSON_SCHEMA = GrammarSpec("json_schema", json.dumps(SCHEMA))
CHOICE = GrammarSpec("choice", json.dumps(["alpha", "beta", "gamma delta"]))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_torch_thread():
        yield


def _prompts() -> list[list[int]]:
    return [[7 + i, 100 + 3 * i, 41, 9] * (2 + i % 3) for i in range(8)]


def _params() -> list[SamplingParams]:
    return [
        SamplingParams(temperature=0, max_tokens=40, grammar=JSON_SCHEMA),
        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.9, seed=3, max_tokens=40, grammar=JSON_SCHEMA),
        SamplingParams(temperature=0, max_tokens=10, grammar=CHOICE),
        SamplingParams(temperature=0.7, seed=11, max_tokens=40, grammar=JSON_SCHEMA),
        SamplingParams(temperature=0, max_tokens=12, grammar=GrammarSpec("regex", "[a-c]{3,5}")),
        SamplingParams(temperature=1.0, seed=2, max_tokens=40, grammar=JSON_SCHEMA,
                       logprobs=1),
        SamplingParams(temperature=0.8, seed=5, max_tokens=16, ignore_eos=True),
    ]


def test_async_engine_with_grammars_gives_the_tokens_of_the_sync_engine():
    sync_llm, async_llm = tiny_llm_that_preempts(async_scheduling=False), tiny_llm_that_preempts(async_scheduling=True)
    expected = sync_llm.generate(_prompts(), _params())
    got = async_llm.generate(_prompts(), _params())
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert [c.finish_reason for c in got] == [c.finish_reason for c in expected]
    assert async_llm.engine.stats().num_preemptions > 0  # matchers were replayed
    assert async_llm.engine.runner.grammar_times.num_rows > 0
    async_llm.engine.step()  # the runner hears of the last finished request
    assert async_llm.engine.runner.grammars.num_running == 0  # all released


def test_constrained_outputs_follow_their_grammars_through_preemption():
    completions = tiny_llm_that_preempts(async_scheduling=True).generate(_prompts(), _params())
    for completion, params in zip(completions, _params()):
        if params.grammar is None or completion.finish_reason != "stop":
            continue
        if params.grammar is CHOICE:
            assert completion.text in ("alpha", "beta", "gamma delta")
        elif params.grammar.kind == "regex":
            assert completion.text and set(completion.text) <= set("abc")
        else:
            jsonschema.validate(json.loads(completion.text), SCHEMA)
    assert any(c.finish_reason == "stop" for c, p in zip(completions, _params()) if p.grammar)


def test_a_grammar_that_does_not_compile_rejects_its_request_alone():
    llm = tiny_llm_that_preempts(async_scheduling=True)
    engine = llm.engine
    engine.add_request("bad", [5, 6, 7], SamplingParams(max_tokens=4,
                                                        grammar=GrammarSpec("regex", "((")))
    engine.add_request("good", [5, 6, 7], SamplingParams(temperature=0, max_tokens=4,
                                                         ignore_eos=True))
    finished, rejected = {}, []
    while engine.has_unfinished():
        for output in engine.step():
            if output.finished:
                finished[output.req_id] = output.finish_reason
        rejected += engine.take_rejections()
    assert finished == {"good": "length"}
    assert [(r.req_id, r.code) for r in rejected] == [("bad", "invalid_grammar")]
    assert "parenthesis" in rejected[0].error
    assert engine.scheduler.stats.num_free_blocks == engine.info.num_kv_blocks


def test_a_request_waiting_for_its_grammar_holds_nobody_back(monkeypatch):
    release = threading.Event()
    real_compile = compiler_module.compile_spec

    def slow_compile(compiler, spec):
        release.wait(timeout=30)
        return real_compile(compiler, spec)

    monkeypatch.setattr(compiler_module, "compile_spec", slow_compile)
    engine = tiny_llm_that_preempts(async_scheduling=False).engine
    engine.add_request("constrained", [5, 6, 7], SamplingParams(temperature=0, max_tokens=5,
                                                                grammar=CHOICE))
    engine.add_request("free", [8, 9], SamplingParams(temperature=0, max_tokens=3,
                                                      ignore_eos=True))
    done = set()
    for _ in range(10):
        done |= {o.req_id for o in engine.step() if o.finished}
    assert done == {"free"}
    assert engine.scheduler.num_awaiting_grammar == 1
    assert engine.stats().num_waiting == 1
    release.set()
    while engine.has_unfinished():
        done |= {o.req_id for o in engine.step() if o.finished}
    assert done == {"free", "constrained"}


def test_aborting_a_request_whose_grammar_compiles_forgets_it():
    engine = tiny_llm_that_preempts(async_scheduling=False).engine
    engine.add_request("a", [5, 6, 7], SamplingParams(max_tokens=5, grammar=JSON_SCHEMA))
    (output,) = engine.abort(["a"])
    assert output.finish_reason == "abort"
    assert not engine.has_unfinished()
    engine.step()
    assert engine.take_rejections() == []


def test_grammars_time_out_with_their_own_error(monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(compiler_module, "compile_spec",
                        lambda compiler, spec: release.wait(timeout=30))
    engine = tiny_llm_that_preempts(async_scheduling=False).engine
    compiler = engine.prepare_grammars()
    monkeypatch.setattr(compiler, "_timeout_s", 0.05)
    engine.add_request("slow", [5, 6], SamplingParams(max_tokens=3, grammar=CHOICE))
    rejected = []
    while engine.has_unfinished():
        engine.step()
        rejected += engine.take_rejections()
    release.set()
    assert [(r.req_id, r.code) for r in rejected] == [("slow", "grammar_timeout")]
