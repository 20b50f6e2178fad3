"""The api <-> engine messages: msgspec round trips, EngineInfo and EngineStats included."""

from __future__ import annotations

import msgspec
import pytest

from server.config import CacheConfig, ModelConfig, SchedulerConfig
from server.engine.service.info import EngineInfo, EngineStats
from server.engine.service.messages import (AbortRequests, AddRequest, EngineProcessArgs, EngineReady,
                                    StatsReply, StepOutputs, decode_process_args,
                                    encode_process_args, input_codec, output_codec)
from server.scheduler.output import RequestOutput, TokenLogprobs
from server.scheduler.request import SamplingParams


def test_engine_info_and_stats_travel_as_the_engines_own_dataclasses():
    info = EngineInfo(model_name="m", vocab_size=10, max_model_len=64, eos_token_ids=(2, 3),
                      num_kv_blocks=4, block_size=16, kv_cache_tokens=64, tokenizer_dir=None,
                      device="cpu", dtype="float32")
    stats = EngineStats(num_running=1, num_waiting=2, num_free_blocks=3, num_blocks=4,
                        num_evictable_blocks=1, num_used_blocks=1, kv_cache_usage=0.25,
                        prefix_cache_queries=32, prefix_cache_hits=16, num_preemptions=0,
                        prompt_tokens_total=40, generation_tokens_total=7)
    encoder, decoder = output_codec()
    ready = decoder.decode(encoder.encode(EngineReady(info=info)))
    assert ready.info == info and isinstance(ready.info, EngineInfo)
    reply = decoder.decode(encoder.encode(StatsReply(query_id=5, stats=stats)))
    assert reply.query_id == 5 and reply.stats == stats


def test_step_outputs_round_trip_with_logprobs():
    outputs = [RequestOutput("a", (1, 2), None, 3, 0,
                             (TokenLogprobs(1, -0.5, (1, 7), (-0.5, -2.0)),
                              TokenLogprobs(2, -0.1, (2, 7), (-0.1, -3.0)))),
               RequestOutput("b", (9,), "length", 4, 2, None)]
    encoder, decoder = output_codec()
    assert decoder.decode(encoder.encode(StepOutputs(outputs=outputs))).outputs == outputs


def test_prompt_logprobs_travel_with_their_ranks_and_are_asked_for_in_sampling_params():
    prompt = (TokenLogprobs(4, -3.5, (9, 4), (-0.2, -3.5), rank=2),
              TokenLogprobs(8, -0.1, (), (), rank=1))
    output = RequestOutput("a", (), "length", 3, 0, None, prompt_logprobs=prompt)
    encoder, decoder = output_codec()
    assert decoder.decode(encoder.encode(StepOutputs(outputs=[output]))).outputs == [output]
    encoder, decoder = input_codec()
    add = AddRequest(req_id="r", prompt_token_ids=[1, 4, 8], arrival_time=0.0,
                     sampling_params=SamplingParams(max_tokens=0, prompt_logprobs=1))
    assert decoder.decode(encoder.encode(add)) == add


def test_inputs_round_trip_and_sampling_params_are_validated_on_decode():
    encoder, decoder = input_codec()
    add = AddRequest(req_id="r", prompt_token_ids=[1, 2],
                     sampling_params=SamplingParams(temperature=0, stop_token_ids=(5,)),
                     arrival_time=1.5, priority=2)
    assert decoder.decode(encoder.encode(add)) == add
    assert decoder.decode(encoder.encode(AbortRequests(req_ids=["r"]))).req_ids == ["r"]
    bad = msgspec.msgpack.encode({"type": "add", "req_id": "r", "prompt_token_ids": [1],
                                  "sampling_params": {"temperature": -1.0},
                                  "arrival_time": 0.0})
    with pytest.raises(msgspec.ValidationError, match="temperature"):
        decoder.decode(bad)


def test_process_args_survive_the_command_line_json():
    args = EngineProcessArgs(model_config=ModelConfig(model="dummy:tiny", device="cpu"),
                             cache_config=CacheConfig(block_size=8, kv_cache_tokens=512),
                             scheduler_config=SchedulerConfig(max_num_seqs=4),
                             input_addresses=["ipc:///tmp/x/in"],
                             output_addresses=["ipc:///tmp/x/out"])
    assert decode_process_args(encode_process_args(args)) == args
