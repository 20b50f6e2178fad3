"""Publishes prefix-cache changes as vLLM's KV-cache events: ZeroMQ PUB, and a ROUTER for replay.

Routers that score replicas by the prefix blocks they hold (llm-d's KV-cache indexer,
Dynamo's KV router, vLLM's production-stack router) subscribe to these. The wire format is
vLLM's (vllm/distributed/kv_events.py, in the array layout its subscribers decode):

    PUB message    [topic, sequence (8 bytes, big-endian), payload]
    payload        msgpack [ts, [event, ...], data_parallel_rank]      ts: time.time()
    event          ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size,
                    lora_id, medium, lora_name]
                   ["BlockRemoved", block_hashes, medium]
                   ["AllBlocksCleared"]

Sequence numbers count batches from 0 without gaps; the first batch of an engine's life is
[AllBlocksCleared], so a subscriber that kept blocks from an earlier engine at this
address drops them. One batch goes out per engine step that changed the prefix cache.

Block hashes are integers: the low 64 bits (big-endian) of our 32-byte SHA-256 chained
block digests (server/kvcache/prefix_hash.py), as vLLM publishes its own digests by default
(VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES): what llm-d's indexer and the msgpack decoders in Go
and Rust read as uint64. They are our hashes, not vLLM's: a router that recomputes vLLM's
hash from a prompt will not find them; one that keys on the published hashes and token ids
(or hashes the token ids itself) will. medium is "GPU", vLLM's word for the engine's own KV
pool (on a CPU engine too); lora_id and lora_name are nil.

Replay (vLLM's replay_endpoint): a client (DEALER, or REQ for a single answer) sends
[b"", start sequence as 8 bytes big-endian] and gets [b"", sequence, payload] for every
buffered batch from that number on, then [b"", -1 as 8 signed bytes, b""].

The engine thread only encodes and hands each batch to the publisher thread over an
inproc socket; that thread numbers, sends and buffers them and answers replay requests,
so a slow or absent subscriber never holds up a step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from itertools import count
from typing import Union

import msgspec
import zmq

from server.config import KVEventsConfig
from server.kvcache.events import KVCacheRecord, RemovedBlock, StoredBlock

logger = logging.getLogger("inflightd.engine")

MEDIUM = "GPU"
END_OF_REPLAY = (-1).to_bytes(8, "big", signed=True)
PUB_HIGH_WATER_MARK = 100_000  # batches queued for a slow subscriber before PUB drops


class _Event(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(_Event):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None


class BlockRemoved(_Event):
    block_hashes: list[int]
    medium: str | None


class AllBlocksCleared(_Event):
    pass


KVEvent = Union[BlockStored, BlockRemoved, AllBlocksCleared]


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[KVEvent]
    data_parallel_rank: int | None = None


def external_hash(block_hash: bytes) -> int:
    """The published form of a block hash: its low 64 bits, unsigned."""
    return int.from_bytes(block_hash[-8:], "big")


def wire_events(records: Sequence[KVCacheRecord], *, block_size: int) -> list[KVEvent]:
    """The records as vLLM events, in order: a run of stored blocks that continue each
    other's chain is one BlockStored, a run of removals one BlockRemoved."""
    events: list[KVEvent] = []
    last_stored: bytes | None = None  # the hash the current BlockStored ends with
    for record in records:
        if isinstance(record, StoredBlock):
            event = events[-1] if events else None
            if (isinstance(event, BlockStored) and last_stored is not None
                    and record.parent_hash == last_stored):
                event.block_hashes.append(external_hash(record.block_hash))
                event.token_ids.extend(record.token_ids)
            else:
                parent = record.parent_hash
                events.append(BlockStored(
                    block_hashes=[external_hash(record.block_hash)],
                    parent_block_hash=None if parent is None else external_hash(parent),
                    token_ids=list(record.token_ids), block_size=block_size, lora_id=None,
                    medium=MEDIUM, lora_name=None))
            last_stored = record.block_hash
        elif isinstance(record, RemovedBlock):
            last_stored = None
            if events and isinstance(events[-1], BlockRemoved):
                events[-1].block_hashes.append(external_hash(record.block_hash))
            else:
                events.append(BlockRemoved(block_hashes=[external_hash(record.block_hash)],
                                           medium=MEDIUM))
    return events


class KVEventPublisher:
    """Owns the PUB and replay sockets (in its own thread); publish() is for the engine
    thread. Binding or connecting fails in the constructor, so a bad address stops the
    engine's start-up with the error."""

    def __init__(self, config: KVEventsConfig, *, block_size: int) -> None:
        self._block_size = block_size
        self._encoder = msgspec.msgpack.Encoder()
        # its own context: one the engine terminates must not wait on these sockets
        self._context = context = zmq.Context()
        self._inbox_address = f"inproc://inflightd-kv-events-{id(self):x}"
        self._inbox = context.socket(zmq.PULL)
        self._inbox.bind(self._inbox_address)
        self._pub = context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, PUB_HIGH_WATER_MARK)
        self._replay: zmq.Socket | None = None
        try:
            _bind_or_connect(self._pub, config.endpoint)
            if config.replay_endpoint is not None:
                self._replay = context.socket(zmq.ROUTER)
                self._replay.bind(config.replay_endpoint)
        except zmq.ZMQError as exc:
            self._context.destroy(linger=0)
            raise ValueError(f"cannot open the KV-event sockets ({config.endpoint}, "
                             f"replay {config.replay_endpoint}): {exc}") from exc
        self._outbox = context.socket(zmq.PUSH)  # the engine thread's end of the inbox
        self._outbox.setsockopt(zmq.SNDHWM, 0)
        self._outbox.connect(self._inbox_address)
        self._sender = _BatchSender(self._pub, self._replay, config.topic.encode(),
                                    buffer_steps=config.buffer_steps)
        self._thread = threading.Thread(target=self._sender.run, args=(self._inbox,),
                                        name="kv-events", daemon=True)
        self._thread.start()
        self._send_batch([AllBlocksCleared()])

    def publish(self, records: Sequence[KVCacheRecord]) -> None:
        """One batch for these records (none when there are none)."""
        if records:
            self._send_batch(wire_events(records, block_size=self._block_size))

    def close(self, *, timeout_s: float = 2.0) -> None:
        """Sends what is queued, then stops the thread and closes the sockets."""
        self._outbox.send(b"")  # an empty frame tells the thread to finish
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("the KV-event publisher did not stop within %.0f s", timeout_s)
            return  # its sockets stay open; the process is exiting anyway
        self._context.destroy(linger=0)

    def _send_batch(self, events: list[KVEvent]) -> None:
        batch = KVEventBatch(ts=time.time(), events=events, data_parallel_rank=0)
        self._outbox.send(self._encoder.encode(batch), copy=False)


class _BatchSender:
    """The publisher thread: numbers each encoded batch, publishes it, keeps the last
    buffer_steps for replay, and answers replay requests as they come."""

    def __init__(self, pub: zmq.Socket, replay: zmq.Socket | None, topic: bytes, *,
                 buffer_steps: int) -> None:
        self._pub = pub
        self._replay = replay
        self._topic = topic
        self._sequence = count()
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)

    def run(self, inbox: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(inbox, zmq.POLLIN)
        if self._replay is not None:
            poller.register(self._replay, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._replay is not None and self._replay in ready:
                self._answer_replay()
            if inbox in ready:
                while (payload := _receive_nowait(inbox)) is not None:
                    if not payload:
                        return
                    self._send(payload)

    def _send(self, payload: bytes) -> None:
        sequence = next(self._sequence)
        self._pub.send_multipart((self._topic, sequence.to_bytes(8, "big"), payload))
        self._buffer.append((sequence, payload))

    def _answer_replay(self) -> None:
        while (frames := _receive_nowait(self._replay, multipart=True)) is not None:
            if len(frames) != 3 or len(frames[2]) != 8:
                logger.warning("ignoring a malformed KV-event replay request (%d frames)",
                               len(frames))
                continue
            client, _, start = frames
            for sequence, payload in self._since(int.from_bytes(start, "big")):
                self._replay.send_multipart((client, b"", sequence.to_bytes(8, "big"), payload))
            self._replay.send_multipart((client, b"", END_OF_REPLAY, b""))

    def _since(self, start: int) -> Iterator[tuple[int, bytes]]:
        return ((sequence, payload) for sequence, payload in self._buffer
                if sequence >= start)


def _receive_nowait(sock: zmq.Socket, *, multipart: bool = False):
    try:
        return sock.recv_multipart(zmq.NOBLOCK) if multipart else sock.recv(zmq.NOBLOCK)
    except zmq.Again:
        return None


def _bind_or_connect(sock: zmq.Socket, address: str) -> None:
    """vLLM's rule: bind a wildcard host (and ipc/inproc), connect to a named one."""
    host = address.split("://", 1)[1].rpartition(":")[0]
    if not address.startswith("tcp://") or host in ("*", "[::]", "::") or "*" in host:
        sock.bind(address)
    else:
        sock.connect(address)
