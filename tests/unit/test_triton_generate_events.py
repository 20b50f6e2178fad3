"""The generate extension's answers: the streamed event's bytes and generate's document say
the same thing, and match the tensors /infer sends for the same response."""

import json

import pytest

from server.triton.errors import TritonError
from server.triton.generate_events import GenerateEvents
from server.triton.outputs import Step, output_tensors
from server.triton.request import EnsembleRequest
from server.triton.tensors import to_json_data

STEP = Step(text=' "quoted" \u00e9', logprobs=(-0.25, -1.5), finished=False,
            num_input_tokens=12, num_output_tokens=2)


def make_events(*, request_id: object = "abc", **request_fields) -> GenerateEvents:
    request = EnsembleRequest(text_input="hi", max_tokens=8, **request_fields)
    return GenerateEvents(model_name="ensemble", model_version="1", request=request,
                          request_id=request_id)


def parse_event(event: bytes) -> dict:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    return json.loads(event[len(b"data: "):])


def test_event_is_the_document_as_one_sse_event():
    events = make_events(return_log_probs=True, return_num_input_tokens=True,
                         return_num_output_tokens=True)
    document = events.document(STEP)
    assert parse_event(events.event(STEP)) == document
    assert list(document) == ["model_name", "model_version", "id", "text_output",
                              "cum_log_probs", "output_log_probs", "num_input_tokens",
                              "num_output_tokens"]


def test_outputs_match_the_infer_tensors_scalars_unwrapped():
    request = EnsembleRequest(text_input="hi", max_tokens=8, return_log_probs=True,
                              return_num_output_tokens=True)
    events = GenerateEvents(model_name="ensemble", model_version="1", request=request,
                            request_id=None)
    document = events.document(STEP)
    for tensor in output_tensors(STEP, request):
        data = to_json_data(tensor)
        expected = data if tensor.name == "output_log_probs" else data[0]
        assert document[tensor.name] == expected
    assert document["cum_log_probs"] == pytest.approx(-1.75)


@pytest.mark.parametrize("request_id", [None, 7, ["x"]])
def test_only_a_string_request_id_is_echoed(request_id):
    events = make_events(request_id=request_id)
    assert parse_event(events.event(STEP)) == {"model_name": "ensemble", "model_version": "1",
                                               "text_output": STEP.text}


def test_each_event_carries_only_its_own_step():
    events = make_events()
    first = parse_event(events.event(STEP))
    second = parse_event(events.event(Step(text="", logprobs=(), finished=True)))
    assert first["text_output"] == STEP.text and second["text_output"] == ""


def test_an_unknown_output_is_refused_when_the_answers_are_made():
    with pytest.raises(TritonError, match="unexpected inference output 'nope'"):
        output_tensors(STEP, EnsembleRequest(text_input="hi", max_tokens=8), ("nope",))
