"""Where a sampled process spent its time, by category, from py-spy's collapsed stacks
(`py-spy record --format raw`): for bench/api_overhead.py's --py-spy.

Each sample is charged to one category: the first frame, walking from the leaf towards the
root, that a rule below names. So time in pydantic under a chunk's rendering is "chunk JSON",
a socket send under uvicorn is "SSE write", and the event loop keeps only what its own
frames do (selecting, running callbacks). Idle samples (py-spy's default) are not recorded.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

# (category, substrings of "function (file:line)"), tried in this order for each frame
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("detokenize", ("detokenizer.py", "tokenizer.py:", "token_bytes")),
    ("stop strings", ("stop_strings.py",)),
    ("metrics and timing", ("prometheus_client", "request_timing.py", "metrics.py")),
    ("engine messages", ("service/client.py", "msgspec", "zmq")),
    ("chunk JSON", ("render (", "chunk (", "sse_chunks.py", "pydantic", "responses.py",
                    "json/")),
    ("SSE write", ("h11", "uvicorn/protocols", "selector_events.py", "streaming.py",
                   "starlette/_exception_handler", "starlette/middleware", "body_limit.py",
                   "admission.py")),
    ("choice assembly", ("choice.py", "generation.py", "coalesce", "serving.py")),
    ("request start", ("routes.py", "chat.py", "completions.py", "protocol",
                       "fastapi/routing", "starlette/routing", "jinja2", "transformers")),
    ("event loop", ("asyncio/", "selectors.py", "anyio")),
)


def categorize(stack: list[str]) -> str:
    for frame in reversed(stack):
        for category, needles in RULES:
            if any(needle in frame for needle in needles):
                return category
    return "other"


def breakdown(raw_path: Path) -> dict[str, float]:
    """Share of samples per category (0..1), largest first."""
    counts: Counter[str] = Counter()
    for line in raw_path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        stack = stack_text.split(";")
        # the thread's root frame ("process NNN:..." / "thread ...") is not code
        counts[categorize(stack[1:] if stack[0].startswith(("process", "thread")) else stack)
               ] += int(count)
    total = sum(counts.values()) or 1
    return {category: n / total for category, n in counts.most_common()}
