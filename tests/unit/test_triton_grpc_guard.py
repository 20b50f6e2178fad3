"""The gRPC port's guard: the same API keys as HTTP (metadata `authorization: Bearer`), the
same admission controller (queue limit, draining), and TritonErrors as gRPC status codes."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from server.api.admission import AdmissionController
from server.api.auth import ApiKeys
from server.triton.errors import TritonError
from server.triton.grpc_guard import GrpcGuard


class Aborted(Exception):
    pass


class FakeContext:
    """What the guard uses of grpc.aio.ServicerContext."""

    def __init__(self, metadata=()) -> None:
        self._metadata = tuple(metadata)
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None

    def invocation_metadata(self):
        return self._metadata

    async def abort(self, code, details):
        self.code, self.details = code, details
        raise Aborted()


def _guard(*, keys=("secret",), max_queued: int | None = None) -> tuple[GrpcGuard,
                                                                         AdmissionController]:
    admission = AdmissionController(max_queued_requests=max_queued, waiting_in_engine=lambda: 0)
    return GrpcGuard(admission=admission, keys=ApiKeys(keys) if keys else None), admission


@pytest.mark.parametrize("metadata, allowed", [
    ((("authorization", "Bearer secret"),), True),
    ((("authorization", "bearer secret"),), True),
    ((("authorization", "Bearer wrong"),), False),
    ((("authorization", "Basic secret"),), False),
    ((), False)])
def test_grpc_calls_need_the_api_key_when_keys_are_set(metadata, allowed):
    guard, _ = _guard()
    context = FakeContext(metadata)
    if allowed:
        asyncio.run(guard.authorize(context))
        assert context.code is None
    else:
        with pytest.raises(Aborted):
            asyncio.run(guard.authorize(context))
        assert context.code == grpc.StatusCode.UNAUTHENTICATED


def test_without_keys_every_call_is_allowed():
    guard, _ = _guard(keys=())
    asyncio.run(guard.authorize(FakeContext()))


def test_a_full_queue_is_resource_exhausted_and_draining_unavailable():
    guard, admission = _guard(max_queued=1)

    async def call(context: FakeContext) -> None:
        async with guard.admitted(context):
            async with guard.admitted(second):
                pass

    second = FakeContext()
    with pytest.raises(Aborted):
        asyncio.run(call(FakeContext()))
    assert second.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert admission.num_in_flight == 0 and admission.num_pending == 0
    admission.start_draining()
    context = FakeContext()

    async def one() -> None:
        async with guard.admitted(context):
            pass

    with pytest.raises(Aborted):
        asyncio.run(one())
    assert context.code == grpc.StatusCode.UNAVAILABLE


def test_triton_errors_end_the_call_with_their_status():
    guard, _ = _guard()
    context = FakeContext()

    async def call() -> None:
        async with guard.errors(context):
            raise TritonError("unknown model", status_code=404)

    with pytest.raises(Aborted):
        asyncio.run(call())
    assert (context.code, context.details) == (grpc.StatusCode.NOT_FOUND, "unknown model")
