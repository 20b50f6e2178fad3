"""A stand-in engine process for bench/api_overhead.py: speaks the engine's ZeroMQ protocol
and emits one token per step for every open request, at a fixed pace, with no model.

The api process under test starts it instead of server.engine.service.process (the bench
points EngineClient.ENGINE_MODULE here and puts this file alone on PYTHONPATH), so all the
api process spends is its own: parsing, tokenizing, detokenizing, stop strings, JSON, SSE,
the event loop. Its settings come from the FAKE_ENGINE environment variable (JSON):

    tokenizer_dir    the default model's tokenizer; tokens come from real English text (with a
                     few multi-byte characters), so detokenization does its real work
    step_interval_s  one step (a token for every open request) per this many seconds
    max_model_len    what the engine reports

It reads the engine's start-up arguments loosely (as a dict), so the same file stands in for
the engine of an older checkout too (the bench's --baseline-tree).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time

import msgspec
import zmq

from server.engine.service.info import EngineInfo, EngineStats
from server.engine.service.messages import (AbortRequests, AddRequest, EngineReady, Shutdown,
                                            StatsQuery, StatsReply, StepInfo, StepOutputs,
                                            input_codec, output_codec)
from server.scheduler.output import RequestOutput

TEXT = ("The engine keeps every request moving one token at a time, and the server turns "
        "those tokens back into words for each client as they arrive. Café owners in Zürich "
        "and 東京 read the same stream; naïve decoders break such characters apart, so the "
        "detokenizer holds a partial character until its last byte comes. Streams end when "
        "their budget of tokens runs out, and the next request takes the free slot. ")
NUM_KV_BLOCKS = 1 << 20


class FakeEngine:
    def __init__(self, args: dict, settings: dict) -> None:
        self._interval = float(settings.get("step_interval_s", 0.02))
        from tokenizers import Tokenizer

        tokenizer_dir = settings["tokenizer_dir"]
        tokenizer = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
        self._token_ids = tokenizer.encode(TEXT * 4, add_special_tokens=False).ids
        self._info = EngineInfo(
            model_name="fake", vocab_size=tokenizer.get_vocab_size(),
            max_model_len=int(settings.get("max_model_len", 4096)), eos_token_ids=(0,),
            num_kv_blocks=NUM_KV_BLOCKS, block_size=16, kv_cache_tokens=NUM_KV_BLOCKS * 16,
            tokenizer_dir=tokenizer_dir, device="cpu", dtype="float32")
        self._context = zmq.Context()
        self._pull = self._context.socket(zmq.PULL)
        for address in _addresses(args, "input"):
            self._pull.connect(address)
        self._pushes = []
        for address in _addresses(args, "output"):
            push = self._context.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, 0)
            push.connect(address)
            self._pushes.append(push)
        self._encoder, _ = output_codec()
        _, self._decoder = input_codec()
        # req_id -> [client, tokens still to emit, position in the text, prompt length]
        self._open: dict[str, list[int]] = {}
        self._admitted: list[str] = []
        self._generated = 0

    def send(self, client: int, message) -> None:
        self._pushes[client].send(self._encoder.encode(message), copy=False)

    def run(self) -> int:
        for client in range(len(self._pushes)):
            self.send(client, EngineReady(info=self._info))
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        stdin_is_pipe = stat.S_ISFIFO(os.fstat(0).st_mode)
        if stdin_is_pipe:
            poller.register(0, zmq.POLLIN)
        next_step = time.monotonic()
        while True:
            timeout_ms = max(0.0, next_step - time.monotonic()) * 1e3 if self._open else 500
            events = dict(poller.poll(timeout_ms))
            if stdin_is_pipe and 0 in events and not os.read(0, 4096):
                return 0  # the api process is gone
            if self._pull in events and not self._drain():
                return 0
            if self._open and time.monotonic() >= next_step:
                next_step = max(next_step + self._interval, time.monotonic() - self._interval)
                self._step()

    def _drain(self) -> bool:
        """Handle every waiting message; False once told to shut down."""
        while self._pull.poll(0):
            message = self._decoder.decode(self._pull.recv(copy=False).buffer)
            if isinstance(message, Shutdown):
                return False
            self._handle(message)
        return True

    def _handle(self, message) -> None:
        if isinstance(message, AddRequest):
            client = getattr(message, "client_index", 0)
            start = hash(message.req_id) % len(self._token_ids)
            self._open[message.req_id] = [client, message.sampling_params.max_tokens,
                                          start, len(message.prompt_token_ids)]
            self._admitted.append(message.req_id)
        elif isinstance(message, AbortRequests):
            self._abort(message.req_ids)
        elif isinstance(message, StatsQuery):
            client = getattr(message, "client_index", 0)
            self.send(client, StatsReply(query_id=message.query_id, stats=self._stats()))

    def _abort(self, req_ids: list[str]) -> None:
        by_client: dict[int, list[RequestOutput]] = {}
        for req_id in req_ids:
            entry = self._open.pop(req_id, None)
            if entry is not None:
                by_client.setdefault(entry[0], []).append(RequestOutput(
                    req_id=req_id, new_token_ids=(), finish_reason="abort",
                    num_prompt_tokens=entry[3], num_cached_tokens=0))
        for client, outputs in by_client.items():
            self.send(client, StepOutputs(outputs=outputs))

    def _step(self) -> None:
        """One token for every open request; each client gets its requests' outputs."""
        started = time.monotonic()
        token_ids = self._token_ids
        by_client: dict[int, list[RequestOutput]] = {c: [] for c in range(len(self._pushes))}
        finished = []
        for req_id, entry in self._open.items():
            client, left, position, num_prompt = entry
            entry[1] = left - 1
            entry[2] = (position + 1) % len(token_ids)
            reason = "length" if left == 1 else None
            if reason is not None:
                finished.append(req_id)
            by_client[client].append(RequestOutput(
                req_id=req_id, new_token_ids=(token_ids[position],), finish_reason=reason,
                num_prompt_tokens=num_prompt, num_cached_tokens=0))
        for req_id in finished:
            del self._open[req_id]
        num_tokens = sum(len(outputs) for outputs in by_client.values())
        self._generated += num_tokens
        admitted, self._admitted = self._admitted, []
        for client, outputs in by_client.items():
            step = StepInfo(started_at=started, num_batched_tokens=num_tokens if client == 0
                            else 0, admitted_req_ids=admitted)
            if outputs or client == 0:
                self.send(client, StepOutputs(outputs=outputs, step=step))

    def _stats(self) -> EngineStats:
        return EngineStats(num_running=len(self._open), num_waiting=0,
                           num_free_blocks=NUM_KV_BLOCKS, num_blocks=NUM_KV_BLOCKS,
                           num_evictable_blocks=0, num_used_blocks=0, kv_cache_usage=0.0,
                           prefix_cache_queries=0, prefix_cache_hits=0, num_preemptions=0,
                           prompt_tokens_total=0, generation_tokens_total=self._generated)

    def close(self) -> None:
        self._context.destroy(linger=0)


def _addresses(args: dict, kind: str) -> list[str]:
    """The engine's sockets of one kind: a list in newer arguments, one address in older."""
    many = args.get(f"{kind}_addresses")
    return list(many) if many else [args[f"{kind}_address"]]


def main(argv: list[str]) -> int:
    args = msgspec.json.decode(argv[0])
    engine = FakeEngine(args, json.loads(os.environ["FAKE_ENGINE"]))
    try:
        return engine.run()
    finally:
        engine.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
