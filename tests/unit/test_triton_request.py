"""Reading the ensemble's inputs: generate bodies and KServe v2 tensors (JSON, binary and
their checks), TensorRT-LLM's word lists, and its sampling defaults."""

from __future__ import annotations

import struct

import pytest

from server.triton.errors import TritonError
from server.triton.generate import EnsembleSampling
from server.triton.request import EnsembleRequest, from_generate_body, from_tensors
from server.triton.tensors import Tensor, from_json, from_raw, to_raw


def test_words_are_comma_separated_lists_with_csv_quoting():
    request = from_generate_body({"text_input": "x", "max_tokens": 1,
                                  "bad_words": ['a,"b, c"', ""], "stop_words": ""})
    assert request.bad_words == ("a", "b, c")
    assert request.stop_words == ()


def test_min_length_and_seed_aliases_are_read():
    request = from_generate_body({"text_input": "x", "max_tokens": 4, "min_length": 2,
                                  "random_seed": 7})
    assert (request.min_tokens, request.seed) == (2, 7)


def test_tensors_of_the_same_family_are_accepted():
    tensors = [Tensor("text_input", "BYTES", (1, 1), (b"hello",)),
               Tensor("max_tokens", "INT64", (1, 1), (5,)),
               Tensor("temperature", "FP64", (1, 1), (0.5,))]
    request = from_tensors(tensors)
    assert (request.text_input, request.max_tokens, request.temperature) == ("hello", 5, 0.5)


@pytest.mark.parametrize("tensors, message", [
    ([Tensor("text_input", "BYTES", (1,), (b"\xff",)), Tensor("max_tokens", "INT32", (1,),
                                                               (1,))], "UTF-8"),
    ([Tensor("text_input", "INT32", (1,), (1,))], "must be BYTES"),
    ([Tensor("max_tokens", "INT32", (1,), (1,))], "'text_input' is required"),
    ([Tensor("text_input", "BYTES", (1,), (b"x",)), Tensor("text_input", "BYTES", (1,),
                                                           (b"y",))], "twice")])
def test_bad_tensors_are_refused_with_a_message(tensors, message):
    with pytest.raises(TritonError, match=message):
        from_tensors(tensors)


def test_binary_bytes_round_trip_and_truncation_is_refused():
    tensor = Tensor("text_input", "BYTES", (2,), ("héllo", b"\x00x"))
    raw = to_raw(tensor)
    assert from_raw("text_input", "BYTES", (2,), raw).values == ("héllo".encode(), b"\x00x")
    with pytest.raises(TritonError, match="runs past"):
        from_raw("text_input", "BYTES", (2,), raw[:-1])
    with pytest.raises(TritonError, match="needs 8 bytes"):
        from_raw("max_tokens", "INT32", (2,), struct.pack("<i", 3))


def test_json_data_may_be_nested_as_the_shape():
    assert from_json("x", "INT32", (2, 2), [[1, 2], [3, 4]]).values == (1, 2, 3, 4)
    with pytest.raises(TritonError, match="integers"):
        from_json("x", "INT32", (1,), [1.5])


def _params(**fields):
    request = EnsembleRequest(text_input="x", max_tokens=4, **fields)
    return EnsembleSampling(request=request, bad_word_ids=(), end_token_ids=(2,)) \
        .to_sampling_params(max_tokens=4)


def test_sampling_is_greedy_unless_top_k_or_top_p_asks_for_more():
    assert _params().greedy
    assert _params(temperature=0.8).greedy  # TensorRT-LLM: no top_k / top_p, greedy
    assert _params(top_k=1, top_p=0.9).greedy
    sampled = _params(top_k=40, temperature=0.7)
    assert (sampled.temperature, sampled.top_k) == (0.7, 40)
    assert _params(top_p=0.9).top_p == 0.9 and not _params(top_p=0.9).greedy


def test_min_tokens_bans_the_model_end_tokens():
    params = _params(min_tokens=3)
    assert params.min_tokens == 3 and params.stop_token_ids == (2,) and not params.ignore_eos


def test_end_id_replaces_the_model_end_tokens_and_minus_one_removes_them():
    replaced = _params(end_id=9, min_tokens=3)
    assert replaced.ignore_eos and replaced.stop_token_ids == (9,)
    none = _params(end_id=-1)
    assert none.ignore_eos and none.stop_token_ids == ()


def test_guided_decoding_maps_tensorrt_llm_guide_types_to_grammars():
    from server.triton.generate import guide_grammar

    def grammar(**fields):
        return guide_grammar(EnsembleRequest(text_input="x", max_tokens=4, **fields))

    assert grammar() is None
    assert grammar(guide_type="json").spec.kind == "json_object"
    assert grammar(guide_type="regex", guide="a+").spec.kind == "regex"
    assert grammar(guide_type="ebnf_grammar", guide='root ::= "a"').spec.kind == "ebnf"
    with pytest.raises(TritonError, match="end_id"):
        grammar(guide_type="json", end_id=5)
