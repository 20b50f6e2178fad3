"""KV-cache events in vLLM's wire format: the msgpack layout a plain decoder sees, and a real
engine (dummy weights, CPU) publishing over ZeroMQ while a plain SUB client rebuilds the set
of cached blocks from the stream and a late one from the replay socket."""

from __future__ import annotations

import hashlib
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec
import pytest

from server.config import CacheConfig, KVEventsConfig, ModelConfig, SchedulerConfig
from server.engine.core import EngineCore
from server.engine.service.kv_events import (KVEventBatch, KVEventPublisher, external_hash,
                                     wire_events)
from server.kvcache.events import RemovedBlock, StoredBlock
from server.scheduler.request import SamplingParams
from tests.kv_event_subscriber import KVEventSubscriber, rebuild

BLOCK_SIZE = 4
NUM_BLOCKS = 24  # small: the workload below overflows it, so cached blocks get evicted


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_events_decode_as_vllms_array_layout_with_64_bit_hashes():
    a, b, c = digest("a"), digest("b"), digest("c")
    records = [StoredBlock(a, None, (1, 2, 3, 4)), StoredBlock(b, a, (5, 6, 7, 8)),
               RemovedBlock(c), RemovedBlock(a), StoredBlock(c, b, (9, 9, 9, 9))]
    batch = KVEventBatch(ts=12.5, events=wire_events(records, block_size=4),
                         data_parallel_rank=0)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(batch))
    low64 = {name: int.from_bytes(d[-8:], "big") for name, d in zip("abc", (a, b, c))}
    assert decoded == [12.5, [
        # a chain run is one event: the parent is the block before the run
        ["BlockStored", [low64["a"], low64["b"]], None, [1, 2, 3, 4, 5, 6, 7, 8], 4,
         None, "GPU", None],
        ["BlockRemoved", [low64["c"], low64["a"]], "GPU"],
        ["BlockStored", [low64["c"]], low64["b"], [9, 9, 9, 9], 4, None, "GPU", None],
    ], 0]
    assert external_hash(a) == low64["a"] < 2**64


def test_blocks_that_do_not_chain_onto_each_other_are_separate_events():
    a, b = digest("a"), digest("b")
    events = wire_events([StoredBlock(a, None, (1,)), StoredBlock(b, None, (2,))],
                         block_size=1)
    assert [event.block_hashes for event in events] == [[external_hash(a)],
                                                        [external_hash(b)]]


@pytest.mark.parametrize("endpoint, problem", [
    ("127.0.0.1:5557", "a ZeroMQ address"),
    ("tcp://*", "needs a port"),
])
def test_kv_events_config_names_the_flag_and_the_fix(endpoint, problem):
    with pytest.raises(ValueError, match=f"--kv-events-endpoint.*{problem}"):
        KVEventsConfig(endpoint=endpoint)
    with pytest.raises(ValueError, match="must differ"):
        KVEventsConfig(endpoint="tcp://*:5557", replay_endpoint="tcp://*:5557")


def test_an_address_in_use_fails_with_both_addresses():
    port = free_tcp_port()
    first = KVEventPublisher(KVEventsConfig(endpoint=f"tcp://*:{port}"), block_size=4)
    try:
        with pytest.raises(ValueError, match=f"cannot open the KV-event sockets.*{port}"):
            KVEventPublisher(KVEventsConfig(endpoint=f"tcp://*:{port}"), block_size=4)
    finally:
        first.close()


@contextmanager
def publishing_engine(config: KVEventsConfig) -> Iterator[tuple[EngineCore, KVEventPublisher]]:
    core = EngineCore(model_config=ModelConfig(model="dummy:tiny", device="cpu"),
                      cache_config=CacheConfig(block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS),
                      scheduler_config=SchedulerConfig(max_num_seqs=3,
                                                       max_num_batched_tokens=32),
                      record_kv_events=True)
    publisher = KVEventPublisher(config, block_size=BLOCK_SIZE)
    try:
        yield core, publisher
    finally:
        publisher.close()


def run_mixed_workload(core: EngineCore, publisher: KVEventPublisher, *, seed: int) -> None:
    """Prompts on a few shared heads (prefix hits), more of them than the cache holds
    (evictions), in waves, and a prefix-cache reset in the middle; the events of each step
    are published as the engine process does."""
    rng = random.Random(seed)
    heads = [[rng.randrange(1, 200) for _ in range(12)] for _ in range(3)]
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    for wave in range(6):
        for index in range(4):
            prompt = rng.choice(heads) + [rng.randrange(1, 200) for _ in range(rng.randrange(1, 9))]
            core.add_request(f"w{wave}-{index}", prompt, params)
        while core.has_unfinished():
            core.step()
            publisher.publish(core.take_kv_events())
        if wave == 2:
            core.scheduler.block_manager.reset_prefix_cache()
            publisher.publish(core.take_kv_events())


def test_a_subscriber_rebuilds_the_engines_cached_blocks_from_the_stream():
    port, replay_port = free_tcp_port(), free_tcp_port()
    config = KVEventsConfig(endpoint=f"tcp://*:{port}",
                            replay_endpoint=f"tcp://127.0.0.1:{replay_port}", topic="kv@t@m")
    with publishing_engine(config) as (core, publisher), KVEventSubscriber(
            endpoint=f"tcp://127.0.0.1:{port}",
            replay_endpoint=f"tcp://127.0.0.1:{replay_port}", topic=b"kv@t@m") as client:
        client.receive_until_quiet(quiet_s=0.3)  # the SUB joins (what came before: replayed)
        run_mixed_workload(core, publisher, seed=1)
        assert client.receive_until_quiet() > 10
        manager = core.scheduler.block_manager
        assert manager.prefix_cache_hits > 0
        first_live = client.live_order[0]
        assert client.live_order == list(range(first_live, first_live + len(client.live)))
        missed = client.replay(start=0)
        assert set(range(first_live)) <= set(missed)  # the batches before the SUB joined
        for number, payload in missed.items():
            if number in client.live:
                assert client.live[number] == payload  # the same bytes, live or replayed
        blocks = rebuild({**missed, **client.live})
        assert blocks.num_cleared == 1  # the engine's first batch: nothing cached yet
        assert blocks.num_removed > 0  # evictions and the reset were published
        assert blocks.hashes == {external_hash(h) for h in manager.cached_block_hashes()}
        assert len(blocks.hashes) > 0


def test_replay_resends_from_the_requested_sequence_number():
    port, replay_port = free_tcp_port(), free_tcp_port()
    config = KVEventsConfig(endpoint=f"tcp://*:{port}",
                            replay_endpoint=f"tcp://*:{replay_port}")
    with publishing_engine(config) as (core, publisher), KVEventSubscriber(
            endpoint=f"tcp://127.0.0.1:{port}",
            replay_endpoint=f"tcp://127.0.0.1:{replay_port}") as late:
        run_mixed_workload(core, publisher, seed=2)
        everything = late.replay(start=0)
        assert len(everything) > 10
        tail = late.replay(start=len(everything) - 3)
        assert tail == {n: everything[n] for n in range(len(everything) - 3, len(everything))}
        assert late.replay(start=len(everything)) == {}
        manager = core.scheduler.block_manager
        assert rebuild(everything).hashes == {external_hash(h)
                                              for h in manager.cached_block_hashes()}
