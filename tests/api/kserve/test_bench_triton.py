"""`inflightd bench serve --endpoint triton` drives generate_stream on the real daemon:
every request completes, and runs to --output-len (end_id -1) by the daemon's own count."""

from __future__ import annotations

import json

from server.cli import main
from tests.api.helpers import wait_until_idle

NUM_PROMPTS = 4
OUTPUT_LEN = 6


def test_bench_serve_drives_generate_stream(kserve, tmp_path):
    before = wait_until_idle(kserve.base_url, timeout_s=120)["generation_tokens_total"]
    exit_code = main(["bench", "serve", "--base-url", kserve.base_url, "--endpoint", "triton",
                      "--triton-model", "tensorrt_llm", "--num-prompts", str(NUM_PROMPTS),
                      "--input-len", "16", "--output-len", str(OUTPUT_LEN), "--seed", "3",
                      "--no-progress", "--json", str(tmp_path / "bench.json")])
    generated = wait_until_idle(kserve.base_url, timeout_s=120)["generation_tokens_total"] \
        - before
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert exit_code == 0
    assert (doc["summary"]["completed"], doc["summary"]["failed"]) == (NUM_PROMPTS, 0)
    assert doc["config"]["url"].endswith("/v2/models/tensorrt_llm/generate_stream")
    assert generated == NUM_PROMPTS * OUTPUT_LEN + 1  # + the untimed one-token test request
