"""The in-memory store of /v1/responses: its count and byte limits drop the oldest, its age
limit drops the expired, and DELETE forgets."""

from __future__ import annotations

from server.api.responses_api.store import ResponseStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def response(response_id: str) -> dict:
    return {"id": response_id, "object": "response"}


def test_past_its_size_the_store_drops_the_oldest_response():
    store = ResponseStore(max_responses=2, max_bytes=10**6, max_age_s=60, clock=FakeClock())
    for name in ("a", "b", "c"):
        store.put(response(name), [{"role": "user", "content": name}])
    assert store.get("a") is None
    assert store.get("b").messages == ({"role": "user", "content": "b"},)
    assert len(store) == 2


def test_responses_older_than_the_age_limit_are_gone():
    clock = FakeClock()
    store = ResponseStore(max_responses=10, max_bytes=10**6, max_age_s=60, clock=clock)
    store.put(response("old"), [])
    clock.now = 30
    store.put(response("young"), [])
    clock.now = 61
    assert store.get("old") is None and store.get("young") is not None
    clock.now = 91
    assert len(store) == 0


def test_delete_forgets_a_response_once():
    store = ResponseStore(max_responses=10, max_bytes=10**6, max_age_s=60, clock=FakeClock())
    store.put(response("a"), [])
    assert store.delete("a") and not store.delete("a") and store.get("a") is None


def test_a_store_of_size_zero_keeps_nothing():
    store = ResponseStore(max_responses=0, max_bytes=10**6, max_age_s=60, clock=FakeClock())
    store.put(response("a"), [])
    assert store.get("a") is None


def test_past_its_byte_limit_the_store_drops_the_oldest_and_refuses_what_cannot_fit():
    store = ResponseStore(max_responses=10, max_bytes=600, max_age_s=60, clock=FakeClock())
    turn = [{"role": "user", "content": "x" * 200}]
    assert store.put(response("a"), turn) and store.put(response("b"), turn)
    assert store.put(response("c"), turn)
    assert store.get("a") is None and store.get("b") is not None
    assert store.num_bytes <= 600
    assert not store.put(response("huge"), [{"role": "user", "content": "x" * 700}])
    assert store.get("huge") is None and store.get("c") is not None
    store.delete("b")
    store.delete("c")
    assert store.num_bytes == 0
