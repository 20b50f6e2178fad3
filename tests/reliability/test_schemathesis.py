"""Schemathesis, driven by the daemon's own /openapi.json, finds no 5xx.

Every operation is tested (none is excluded), in every phase (examples, coverage, fuzzing,
stateful), with a fixed seed and at most MAX_EXAMPLES cases per operation. The context
window is cut to 64 tokens so that the generation requests it sends (any max_tokens, n up
to 16) stay short on a CPU."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx

from tests.api.helpers import wait_until_idle

DAEMON_OPTIONS = {"max_model_len": 64}
MAX_EXAMPLES = 25
SEED = 20261122
RUN_TIMEOUT_S = 300


def test_schemathesis_finds_no_server_error(daemon, tmp_path):
    command = [sys.executable, "-m", "schemathesis.cli", "run",
               f"{daemon.base_url}/openapi.json", "--checks", "not_a_server_error",
               "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
               "--request-timeout", "120", "--workers", "1", "--no-color"]
    # In tmp_path: Hypothesis keeps its example database in the working directory.
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_S)
    output = run.stdout + run.stderr
    print(output[-1500:])
    assert run.returncode == 0, output[-6000:]
    # Every operation of the document was selected and tested.
    selected = re.search(r"Selected: (\d+)/\1\b", output)
    assert selected and f"Tested: {selected[1]}\n" in output, output[-3000:]
    assert httpx.get(f"{daemon.base_url}/health", timeout=10).status_code == 200
    stats = wait_until_idle(daemon.base_url, timeout_s=120)
    assert (stats["num_running"], stats["num_waiting"], stats["num_used_blocks"]) == (0, 0, 0)
    assert "unexpected error" not in daemon.log()
