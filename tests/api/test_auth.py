"""API keys on a real daemon: --api-key (twice) and INFLIGHTD_API_KEY, Bearer tokens,
401s in OpenAI's shape, open probes, and --metrics-auth."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

import httpx
import openai
import pytest

from server.api import auth
from server.api.auth import ApiKeys
from tests.api.daemon import Daemon, running_daemon
from tests.api.openai_schema import assert_matches

FLAG_KEYS = ("first-key", "second-key")
ENV_KEY = "key-from-the-environment"


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INFLIGHTD_API_KEY", ENV_KEY)  # the daemon inherits the environment
        with running_daemon(model="dummy:tiny", kv_cache_tokens=1024,
                            extra_args=("--api-key", FLAG_KEYS[0], "--api-key", FLAG_KEYS[1],
                                        "--metrics-auth")) as running:
            yield running


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert_matches(response.json(), "ErrorResponse")
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [
    {}, bearer("wrong-key"), bearer(FLAG_KEYS[0] + "x"), bearer(FLAG_KEYS[0][:-1]),
    {"Authorization": f"Basic {FLAG_KEYS[0]}"}, {"Authorization": "Bearer"},
    {"Authorization": FLAG_KEYS[0]},
], ids=["none", "wrong", "longer", "prefix", "basic-scheme", "empty", "no-scheme"])
def test_every_route_refuses_a_missing_or_wrong_key(daemon, headers):
    base = daemon.base_url
    assert_unauthorized(httpx.get(f"{base}/v1/models", headers=headers))
    assert_unauthorized(httpx.post(f"{base}/v1/completions", headers=headers,
                                   json={"prompt": "Hi", "max_tokens": 1}))
    assert_unauthorized(httpx.post(f"{base}/tokenize", headers=headers, json={"prompt": "Hi"}))
    assert_unauthorized(httpx.get(f"{base}/v1/engine/stats", headers=headers))
    assert_unauthorized(httpx.get(f"{base}/no/such/route", headers=headers))
    assert_unauthorized(httpx.get(f"{base}/metrics", headers=headers))  # --metrics-auth


@pytest.mark.parametrize("key", [*FLAG_KEYS, ENV_KEY])
def test_each_configured_key_is_accepted(daemon, key):
    response = httpx.get(f"{daemon.base_url}/v1/models", headers=bearer(key))
    assert response.status_code == 200, response.text
    metrics = httpx.get(f"{daemon.base_url}/metrics", headers=bearer(key))
    assert metrics.status_code == 200
    assert "inflightd:num_requests_waiting" in metrics.text


def test_probes_need_no_key(daemon):
    assert httpx.get(f"{daemon.base_url}/health").status_code == 200
    assert httpx.get(f"{daemon.base_url}/ready").status_code == 200


def test_the_openai_sdk_authenticates_with_its_api_key(daemon):
    with openai.OpenAI(base_url=f"{daemon.base_url}/v1", api_key=FLAG_KEYS[1],
                       max_retries=0, timeout=60) as client:
        completion = client.completions.create(model="dummy:tiny", prompt="Hi", max_tokens=3,
                                               extra_body={"ignore_eos": True})
        assert completion.usage.completion_tokens == 3
    with openai.OpenAI(base_url=f"{daemon.base_url}/v1", api_key="wrong", max_retries=0,
                       timeout=60) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.models.list()
        assert caught.value.code == "invalid_api_key"


def test_a_key_is_compared_against_every_configured_key(monkeypatch):
    """No early exit on a match: the time taken does not tell which key matched."""
    calls = []
    compare_digest = hmac.compare_digest

    def counting_compare(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return compare_digest(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting_compare)
    keys = ApiKeys(["short", "a-much-longer-key", "third"])
    assert keys.accepts("short")
    assert not keys.accepts("shor")
    assert keys.accepts("third")
    # three comparisons each time, always of equal-length digests (lengths don't leak)
    assert calls == [(32, 32)] * 9
