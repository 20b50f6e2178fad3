"""Grammar compilation in the engine process: one tokenizer description and one xgrammar
compiler per model, compiling off the engine loop in a thread pool, each compile time-boxed.

    submit(req_id, spec) -> [thread pool: xgrammar compile] -> collect() -> compiled | failed

xgrammar releases the GIL while it compiles (measured here: a thread spinning beside a
20-field schema's compile kept 97 % of its rate), so the loop keeps stepping meanwhile.
A compile cannot be interrupted: one past its time box is reported failed at once and its
thread finishes in the background, its result dropped.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from server.structured_output.spec import GrammarSpec

logger = logging.getLogger("inflightd.engine")

# The most blanks a JSON output may put between two tokens of its syntax: enough for any
# indentation a model uses, while a model that loops on whitespace cannot run to max_tokens.
MAX_JSON_WHITESPACE = 16
DEFAULT_CACHE_LIMIT_BYTES = 256 << 20
DEFAULT_COMPILE_TIMEOUT_S = 10.0
DEFAULT_COMPILE_THREADS = 2


@dataclass(frozen=True)
class CompileResult:
    """A finished (or abandoned) compile, as the metrics see it."""

    req_id: str
    seconds: float
    error: str | None = None  # None: compiled
    code: str | None = None  # "invalid_grammar" or "grammar_timeout" when failed


@dataclass(frozen=True)
class CompiledBatch:
    compiled: dict[str, Any]  # req_id -> xgrammar.CompiledGrammar
    results: tuple[CompileResult, ...]

    @property
    def failed(self) -> tuple[CompileResult, ...]:
        return tuple(r for r in self.results if r.error is not None)


class GrammarCompilerPool:
    def __init__(self, tokenizer_dir: str, *, vocab_size: int, stop_token_ids: Sequence[int],
                 num_threads: int = DEFAULT_COMPILE_THREADS,
                 cache_limit_bytes: int = DEFAULT_CACHE_LIMIT_BYTES,
                 timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S) -> None:
        """vocab_size: the logits' width (the model's, which may pad the tokenizer's); the
        grammars cover the tokenizer's ids below it."""
        self._timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(num_threads, thread_name_prefix="grammar")
        # The tokenizer loads in the pool too, so building the engine does not wait for it.
        self._compiler: Future = self._executor.submit(
            _make_compiler, tokenizer_dir, vocab_size=vocab_size,
            stop_token_ids=list(stop_token_ids), num_threads=num_threads,
            cache_limit_bytes=cache_limit_bytes)
        self._pending: dict[str, tuple[Future, float]] = {}

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def submit(self, req_id: str, spec: GrammarSpec) -> None:
        self._pending[req_id] = (self._executor.submit(self._compile, spec), time.monotonic())

    def cancel(self, req_id: str) -> None:
        entry = self._pending.pop(req_id, None)
        if entry is not None:
            entry[0].cancel()

    def collect(self) -> CompiledBatch:
        """The compiles that finished since the last call, and those past their time box."""
        now = time.monotonic()
        compiled: dict[str, Any] = {}
        results: list[CompileResult] = []
        for req_id, (future, submitted_at) in list(self._pending.items()):
            seconds = now - submitted_at
            if future.done():
                del self._pending[req_id]
                error = future.exception()
                if error is None:
                    compiled[req_id] = future.result()
                    results.append(CompileResult(req_id, seconds))
                else:
                    results.append(CompileResult(req_id, seconds, _clean_message(error),
                                                 "invalid_grammar"))
            elif seconds > self._timeout_s:
                del self._pending[req_id]
                future.cancel()
                results.append(CompileResult(
                    req_id, seconds, f"the grammar did not compile within "
                    f"{self._timeout_s:g} s; simplify it", "grammar_timeout"))
        return CompiledBatch(compiled=compiled, results=tuple(results))

    def wait_for_any(self, timeout_s: float) -> None:
        """Sleep until a compile finishes or timeout_s passes (for a loop with nothing else
        to do)."""
        if self._pending:
            wait([future for future, _ in self._pending.values()], timeout=timeout_s,
                 return_when=FIRST_COMPLETED)

    def _compile(self, spec: GrammarSpec):
        return compile_spec(self._compiler.result(), spec)


def compile_spec(compiler, spec: GrammarSpec):
    """One spec through an xgrammar.GrammarCompiler (which caches by content)."""
    if spec.kind in ("json_schema", "json_object"):
        schema = spec.value if spec.kind == "json_schema" else '{"type": "object"}'
        return compiler.compile_json_schema(schema, any_whitespace=True, strict_mode=True,
                                            max_whitespace_cnt=MAX_JSON_WHITESPACE)
    if spec.kind == "regex":
        return compiler.compile_regex(spec.value)
    if spec.kind == "choice":
        return compiler.compile_grammar(choice_ebnf(json.loads(spec.value)))
    if spec.kind == "ebnf":
        return compiler.compile_grammar(spec.value)
    return compiler.compile_structural_tag(spec.value)


def choice_ebnf(choices: Sequence[str]) -> str:
    """An EBNF grammar whose sentences are exactly the choices (JSON string literals are
    valid EBNF literals, escapes included)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _make_compiler(tokenizer_dir: str, *, vocab_size: int, stop_token_ids: list[int],
                   num_threads: int, cache_limit_bytes: int):
    import os

    import xgrammar
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    # The tokenizer's own vocabulary, not the logits' width: xgrammar would take each padded
    # id as a special token, and that made every accepted token cost 13-30 us instead of 1
    # (SmolLM2's 49,152 tokens padded to 128,256). The mask leaves the padding out instead.
    info = xgrammar.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=min(len(tokenizer), vocab_size), stop_token_ids=stop_token_ids)
    compiler = xgrammar.GrammarCompiler(info, max_threads=num_threads,
                                        cache_limit_bytes=cache_limit_bytes)
    logger.info("grammar compiler ready in %.2f s (vocabulary %d, %s)",
                time.monotonic() - started, vocab_size, info.vocab_type.name.lower())
    return compiler


def _clean_message(error: BaseException) -> str:
    """xgrammar's errors start with `[time] /path/file.cc:NN: `; keep what follows."""
    text = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", str(error).strip())
    return f"the grammar could not be compiled: {text}"
