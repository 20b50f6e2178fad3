"""ChoiceAssembler: engine outputs -> the text and logprobs a client may see."""

from __future__ import annotations

from server.api.choice import ChoiceAssembler
from server.scheduler.output import RequestOutput, TokenLogprobs
from tests.unit.tokenizer_helpers import byte_level_tokenizer

DECODER = byte_level_tokenizer(vocab_size=257)  # one token per byte


def assembler(*, stop_strings=(), stop_token_ids=(), want_logprobs=False) -> ChoiceAssembler:
    return ChoiceAssembler(index=0, decoder=DECODER, prompt_token_ids=[],
                           stop_strings=stop_strings, stop_token_ids=stop_token_ids,
                           want_logprobs=want_logprobs)


def output(token_ids, *, finish=None, logprobs=False) -> RequestOutput:
    entries = tuple(TokenLogprobs(t, -0.5, (t,), (-0.5,)) for t in token_ids) if logprobs \
        else None
    return RequestOutput("r", tuple(token_ids), finish, 3, 0, entries)


def feed(choice: ChoiceAssembler, text: str, *, finish="length", logprobs=False):
    token_ids = DECODER.encode(text)
    deltas = [choice.update(output([t], logprobs=logprobs)) for t in token_ids[:-1]]
    deltas.append(choice.update(output(token_ids[-1:], finish=finish, logprobs=logprobs)))
    return deltas


def test_stop_string_across_tokens_finishes_with_stop_and_is_not_shown():
    choice = assembler(stop_strings=["o w"])
    deltas = feed(choice, "Hello world")
    assert "".join(d.text for d in deltas) == "Hell"
    assert choice.finished and choice.finish_reason == "stop" and choice.stopped_by_string
    # The match happened before the engine's last token: the caller must abort it.
    assert deltas[-1].text == "" and deltas[-1].finish_reason == "stop"


def test_held_back_text_comes_out_when_the_request_ends_without_a_match():
    choice = assembler(stop_strings=["there!"])
    deltas = feed(choice, "hi ther", finish="length")
    assert [d.text for d in deltas][-3:] == ["", "", "ther"]
    assert choice.finish_reason == "length"


def test_final_stop_token_adds_no_text():
    bang = DECODER.encode("!")[0]
    choice = assembler(stop_token_ids=[bang])
    deltas = feed(choice, "Hi!", finish="stop")
    assert "".join(d.text for d in deltas) == "Hi"
    assert choice.num_generated_tokens == 3  # still counted as generated


def test_logprobs_are_released_with_their_text_and_cut_at_a_stop_string():
    choice = assembler(stop_strings=["lo"], want_logprobs=True)
    deltas = feed(choice, "Hel你lo there", logprobs=True)
    text = "".join(d.text for d in deltas)
    released = [e.token_id for d in deltas for e in d.logprobs]
    offsets = [o for d in deltas for o in d.token_offsets]
    assert text == "Hel你"
    assert released == DECODER.encode("Hel你")  # the 'l' of "lo" made no visible text
    assert offsets == [0, 1, 2, 3, 3, 3]  # the 3 bytes of 你 all start at its position


def test_logprobs_of_a_partial_character_wait_for_the_character():
    choice = assembler(want_logprobs=True)
    first_byte, *rest = DECODER.encode("你")
    delta = choice.update(output([first_byte], logprobs=True))
    assert delta.text == "" and delta.logprobs != ()  # zero-width so far: nothing held back
    delta = choice.update(output(rest, finish="length", logprobs=True))
    assert delta.text == "你" and len(delta.logprobs) == 2
