"""A plain ZeroMQ subscriber for vLLM-format KV-cache events, as a router would write one: it
decodes untyped msgpack (none of our structs) and rebuilds the block hashes the engine holds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec
import zmq

END_OF_REPLAY = -1


@dataclass
class BlockSet:
    """The hashes the events say the engine holds, applied strictly: a store of a hash
    already held, or a removal of one not held, is an error in the stream."""

    hashes: set[int] = field(default_factory=set)
    num_stored: int = 0
    num_removed: int = 0
    num_cleared: int = 0

    def apply(self, payload: bytes) -> None:
        ts, events, *rest = msgspec.msgpack.decode(payload)
        assert isinstance(ts, float) and rest in ([], [0]), (ts, rest)
        for event in events:
            tag, *fields = event
            if tag == "BlockStored":
                hashes, parent, token_ids, block_size, lora_id, medium, lora_name = fields
                # (the parent may be gone: evicted while a twin of it stayed in use)
                assert parent is None or 0 <= parent < 2**64
                assert len(token_ids) == len(hashes) * block_size
                assert (lora_id, medium, lora_name) == (None, "GPU", None)
                for block_hash in hashes:
                    assert block_hash not in self.hashes, "stored twice"
                    self.hashes.add(block_hash)
                self.num_stored += len(hashes)
            elif tag == "BlockRemoved":
                hashes, medium = fields
                assert medium == "GPU"
                for block_hash in hashes:
                    self.hashes.remove(block_hash)  # KeyError: removed but never stored
                self.num_removed += len(hashes)
            else:
                assert (tag, fields) == ("AllBlocksCleared", [])
                self.hashes.clear()
                self.num_cleared += 1


class KVEventSubscriber:
    """A SUB socket on the publisher (and a DEALER on its replay socket, when given)."""

    def __init__(self, *, endpoint: str, replay_endpoint: str | None = None,
                 topic: bytes = b"") -> None:
        self._context = zmq.Context()
        self._sub = self._context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, topic)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.connect(endpoint)
        self._replay_endpoint = replay_endpoint
        self.topic = topic
        self.live: dict[int, bytes] = {}  # sequence -> payload, as received on the PUB
        self.live_order: list[int] = []

    def close(self) -> None:
        self._context.destroy(linger=0)

    def __enter__(self) -> KVEventSubscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def receive_until_quiet(self, *, quiet_s: float = 1.0, timeout_s: float = 60.0) -> int:
        """Collects live messages until none came for quiet_s; returns how many came."""
        deadline = time.monotonic() + timeout_s
        received = 0
        while time.monotonic() < deadline and self._sub.poll(int(quiet_s * 1000)):
            topic, sequence, payload = self._sub.recv_multipart()
            assert topic == self.topic and len(sequence) == 8
            number = int.from_bytes(sequence, "big")
            self.live[number] = payload
            self.live_order.append(number)
            received += 1
        return received

    def replay(self, *, start: int, timeout_s: float = 10.0) -> dict[int, bytes]:
        """The batches the replay socket resends from sequence `start` on."""
        assert self._replay_endpoint is not None
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self._replay_endpoint)
        dealer.send_multipart([b"", start.to_bytes(8, "big")])
        batches: dict[int, bytes] = {}
        try:
            while True:
                assert dealer.poll(int(timeout_s * 1000)), "the replay socket did not answer"
                empty, sequence, payload = dealer.recv_multipart()
                assert empty == b""
                number = int.from_bytes(sequence, "big", signed=True)
                if number == END_OF_REPLAY:
                    assert payload == b""
                    return batches
                batches[number] = payload
        finally:
            dealer.close(linger=0)


def rebuild(batches: dict[int, bytes]) -> BlockSet:
    """Applies batches 0..n in order; they must be contiguous from 0."""
    assert sorted(batches) == list(range(len(batches))), "a gap in the sequence numbers"
    blocks = BlockSet()
    for number in range(len(batches)):
        blocks.apply(batches[number])
    return blocks
