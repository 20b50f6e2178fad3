"""An ensemble request on the engine: the prompt and bad words tokenized, the sampling
settings TensorRT-LLM's way, and the output as Triton's per-step responses or one answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.api.admission import AdmissionTicket
from server.api.errors import APIError
from server.api.generation import Generation
from server.api.serving import ServingState, tokenize_off_loop
from server.api.structured import RequestGrammar, grammar_spec
from server.scheduler.request import SamplingParams, SamplingParamsError
from server.structured_output.schema_check import GrammarSpecError
from server.structured_output.spec import GrammarSpec
from server.triton.errors import TritonError
from server.triton.outputs import Step
from server.triton.request import EnsembleRequest


# TensorRT-LLM's guided_decoding_guide_type -> the engine's grammar kind
GUIDE_KINDS = {"json": "json_object", "json_schema": "json_schema", "regex": "regex",
               "ebnf_grammar": "ebnf"}
GUIDE = "guided_decoding_guide"


@dataclass(frozen=True)
class EnsembleSampling:
    """What ServingState.new_generation reads of a request body, for one ensemble request
    whose words are tokenized. Sampling is greedy unless top_k > 1 or top_p is set, as in
    TensorRT-LLM (whose default top_k and top_p of 0 mean greedy)."""

    request: EnsembleRequest
    bad_word_ids: tuple[tuple[int, ...], ...]
    end_token_ids: tuple[int, ...]  # the model's own, banned until min_tokens are out
    n: int = 1
    priority: int = 0

    @property
    def ignore_eos(self) -> bool:
        """end_id replaces the model's end tokens, as in TensorRT-LLM; -1 is no end token
        at all (the output runs to max_tokens)."""
        return self.request.end_id is not None

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        end_id = self.request.end_id
        return () if end_id is None or end_id < 0 else (end_id,)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self.request.stop_words

    def requested_max_tokens(self) -> int:
        return self.request.max_tokens

    def num_samples(self) -> int:
        return self.n  # no beam search or best_of: one sample per request

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return ()  # the ensemble has no logit bias input (embedding_bias is refused)

    def num_logprobs(self) -> int | None:
        return 0 if self.request.return_log_probs else None

    def to_sampling_params(self, *, max_tokens: int, choice_index: int = 0,
                           grammar: GrammarSpec | None = None) -> SamplingParams:
        r = self.request
        top_k = r.top_k or None
        top_p = r.top_p or None
        random = (top_k is not None and top_k > 1) or (top_p is not None and top_k != 1)
        temperature = (1.0 if r.temperature is None else r.temperature) if random else 0.0
        given = {"top_k": top_k if random else None, "top_p": top_p if random else None,
                 "repetition_penalty": r.repetition_penalty,
                 "presence_penalty": r.presence_penalty,
                 "frequency_penalty": r.frequency_penalty}
        ends = () if self.ignore_eos or not r.min_tokens else self.end_token_ids
        try:
            return SamplingParams(
                **{k: v for k, v in given.items() if v is not None}, temperature=temperature,
                seed=r.seed, max_tokens=max_tokens, stop_token_ids=self.stop_token_ids + ends,
                ignore_eos=self.ignore_eos, grammar=grammar,
                logprobs=self.num_logprobs(), bad_words=self.bad_word_ids,
                min_tokens=r.min_tokens)
        except SamplingParamsError as exc:
            raise TritonError(f"input '{exc.param}' {str(exc).removeprefix(exc.param + ' ')}") \
                from exc


class EnsembleRun:
    """One ensemble request's generation. Raises TritonError for what the request asked
    wrong and for engine failures (APIErrors of the shared layer are translated)."""

    def __init__(self, request: EnsembleRequest, generation: Generation) -> None:
        self.request = request
        self._generation = generation

    @classmethod
    async def start(cls, state: ServingState, request: EnsembleRequest, *,
                    ticket: AdmissionTicket | None) -> "EnsembleRun":
        try:
            tokenizer = state.require_tokenizer()
            state.check_prompt_chars(len(request.text_input), "text_input")
            text = request.text_input
            prompt = await tokenize_off_loop(lambda: tokenizer.encode(text),
                                             num_chars=len(text))
            sampling = EnsembleSampling(request=request,
                                        bad_word_ids=_bad_word_ids(tokenizer, request),
                                        end_token_ids=tuple(state.info.eos_token_ids))
            if request.end_id is not None and request.end_id != -1:
                state.check_token_ids([request.end_id], "end_id")
            _, generation = state.new_generation(sampling, [prompt], id_prefix="triton",
                                                 ticket=ticket, grammar=guide_grammar(request))
        except APIError as exc:
            raise _translated(exc) from exc
        return cls(request, generation)

    async def steps(self) -> AsyncIterator[Step]:
        """One Step per engine step that changed the output; its token count covers the
        tokens since the previous Step (a step whose text is held back counts in the next)."""
        sent = 0
        try:
            async for deltas in self._generation.steps():
                usage = self._generation.usage()
                for delta in deltas:
                    yield Step(text=delta.text,
                               logprobs=tuple(lp.logprob for lp in delta.logprobs),
                               finished=delta.finish_reason is not None,
                               num_input_tokens=usage.prompt_tokens,
                               num_output_tokens=usage.completion_tokens - sent)
                    sent = usage.completion_tokens
        except APIError as exc:
            raise _translated(exc) from exc

    async def collect(self) -> Step:
        """The whole output as one response (the prompt first unless excluded)."""
        parts, logprobs, num_input, num_output = [], [], 0, 0
        async for step in self.steps():
            parts.append(step.text)
            logprobs.extend(step.logprobs)
            num_input = step.num_input_tokens
            num_output += step.num_output_tokens
        prefix = "" if self.request.exclude_input_in_output else self.request.text_input
        return Step(text=prefix + "".join(parts), logprobs=tuple(logprobs), finished=True,
                    num_input_tokens=num_input, num_output_tokens=num_output)


def guide_grammar(request: EnsembleRequest) -> RequestGrammar | None:
    """The grammar of TensorRT-LLM's guided decoding inputs, checked as the OpenAI
    routes check theirs; None without a guide type."""
    kind = GUIDE_KINDS.get(request.guide_type) if request.guide_type is not None else None
    if request.guide_type is None:
        if request.guide:
            raise TritonError(f"input '{GUIDE}' needs {GUIDE}_type")
        return None
    if kind is None:
        raise TritonError(f"input '{GUIDE}_type' must be one of {', '.join(GUIDE_KINDS)}, "
                          f"got {request.guide_type!r:.40}")
    if kind != "json_object" and not request.guide:
        raise TritonError(f"{GUIDE}_type {request.guide_type} needs input '{GUIDE}'")
    if request.end_id is not None:
        raise TritonError(f"end_id cannot be combined with {GUIDE}_type: a finished grammar "
                          f"allows only the model's own end")
    try:
        return RequestGrammar(spec=grammar_spec(kind, request.guide or "", param=GUIDE),
                              param=GUIDE)
    except GrammarSpecError as exc:
        raise TritonError(f"input '{GUIDE}': {exc}") from exc


def _bad_word_ids(tokenizer, request: EnsembleRequest) -> tuple[tuple[int, ...], ...]:
    """Each word's tokens as written, stripped, and with one leading space: a word inside
    text is usually tokenized with the space before it, and a ban should catch it there."""
    sequences: dict[tuple[int, ...], None] = {}
    for word in request.bad_words:
        # "a, b" lists " b": its stripped form and that with one leading space are banned
        for variant in (word, word.strip(), " " + word.strip()):
            ids = tuple(tokenizer.encode(variant, add_special_tokens=False))
            if ids:
                sequences[ids] = None
    return tuple(sequences)


def _translated(exc: APIError) -> TritonError:
    param = {"max_tokens": "max_tokens", "messages": "text_input", "prompt": "text_input"}
    message = exc.message
    if exc.param in param and f"'{param[exc.param]}'" not in message:
        message = f"input '{param[exc.param]}': {message}"
    return TritonError(message, status_code=exc.status_code)
