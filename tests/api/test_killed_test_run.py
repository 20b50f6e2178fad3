"""A killed test run leaves no daemon behind: a stand-in for pytest starts a daemon through
tests/api/daemon.py, holds a stream open on it, and is SIGKILLed; the api process and its
engine process must both be gone within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.api.daemon import REPO_ROOT
from tests.reliability.procs import child_pids, pid_alive, poll_until

# What pytest would do: start a daemon with the suite's helper, and be in the middle of a
# streamed request when it is killed.
TEST_RUN = textwrap.dedent("""
    import time
    import httpx
    from tests.api.daemon import running_daemon

    with running_daemon(model="dummy:tiny", kv_cache_tokens=1024) as daemon:
        body = {"prompt": "Hi", "max_tokens": 900, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{daemon.base_url}/v1/completions", json=body,
                          timeout=60) as response:
            chunks = response.iter_bytes()
            next(chunks)
            print(daemon.process.pid, daemon.log_path, flush=True)
            time.sleep(600)
""")


def test_killing_the_test_run_stops_the_daemon_and_its_engine():
    test_run = subprocess.Popen([sys.executable, "-c", TEST_RUN], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, text=True)
    api_pid = log_path = None
    try:
        api_pid, log_path = test_run.stdout.readline().split()
        api_pid = int(api_pid)
        assert poll_until(lambda: len(child_pids(api_pid)) == 1, timeout_s=10)
        [engine_pid] = child_pids(api_pid)
        os.kill(test_run.pid, signal.SIGKILL)
        test_run.wait(timeout=10)
        assert poll_until(lambda: not pid_alive(api_pid), timeout_s=15), "the api survived"
        assert poll_until(lambda: not pid_alive(engine_pid), timeout_s=15), \
            "the engine survived"
    finally:
        if test_run.poll() is None:
            test_run.kill()
            test_run.wait()
        if api_pid is not None and pid_alive(api_pid):  # the failure left it: clean up
            os.kill(api_pid, signal.SIGKILL)  # its engine follows (stdin pipe)
        if log_path is not None:  # the killed run could not remove its daemon's log
            Path(log_path).unlink(missing_ok=True)
