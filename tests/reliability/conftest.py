"""The reliability suite: the real daemon (default model, CPU) on a loopback port, one per
test module, shaped by the module's DAEMON_OPTIONS (keyword arguments of running_daemon).

Every test here carries the `reliability` marker and runs in the default `pytest` run;
`-m "not reliability"` leaves the suite out. `--soak-long [MINUTES]` turns the bounded soak
into a long one (run it as `pytest tests/reliability --soak-long`: pytest reads options only
from the conftest files of the paths it is given)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.daemon import Daemon, running_daemon
from tests.reliability.procs import engine_pid

HERE = Path(__file__).parent
# Small, so that the daemon starts in seconds and a step stays short on two cores.
BASE_DAEMON_OPTIONS = {"kv_cache_tokens": 16384, "max_num_seqs": 64}
LONG_SOAK_DEFAULT_MINUTES = 15.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak-long", type=float, nargs="?", const=LONG_SOAK_DEFAULT_MINUTES,
                     default=None, metavar="MINUTES",
                     help="run the reliability soak in waves for this many minutes "
                          f"(default {LONG_SOAK_DEFAULT_MINUTES:g}) instead of one wave")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: the daemon under hostile input, "
                                       "disconnects, overload and faults (tests/reliability)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="module")
def daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    options = {**BASE_DAEMON_OPTIONS, **getattr(request.module, "DAEMON_OPTIONS", {})}
    with running_daemon(**options) as running:
        yield running


@pytest.fixture(scope="module")
def pids(daemon: Daemon) -> tuple[int, int]:
    """(api process, engine process)."""
    return daemon.process.pid, engine_pid(daemon.process.pid)


@pytest.fixture(scope="module")
def http(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.base_url, timeout=120) as client:
        yield client


@pytest.fixture
def soak_minutes(request: pytest.FixtureRequest) -> float | None:
    return request.config.getoption("--soak-long", default=None)
