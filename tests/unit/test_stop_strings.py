"""StopStringFilter: stop strings found across piece boundaries, never leaked."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.api.stop_strings import StopStringFilter


def run(stop_strings, pieces):
    stop_filter = StopStringFilter(stop_strings)
    released = []
    for piece in pieces:
        text, matched = stop_filter.push(piece)
        released.append(text)
        if matched:
            return released, True
    released.append(stop_filter.flush())
    return released, False


def test_stop_string_split_over_three_pieces_is_found_and_dropped():
    released, matched = run(["STOP"], ["Hello S", "T", "OP and more"])
    assert matched
    assert "".join(released) == "Hello "


def test_text_that_might_start_a_stop_string_is_held_back_until_ruled_out():
    stop_filter = StopStringFilter(["\n\nUser:"])
    assert stop_filter.push("Sure.\n") == ("Sure.", False)
    assert stop_filter.push("\nUs") == ("", False)
    assert stop_filter.held_text == "\n\nUs"
    assert stop_filter.push("ually") == ("\n\nUsually", False)


def test_held_text_is_released_when_the_stream_ends_without_a_match():
    released, matched = run(["END"], ["the E", "N"])
    assert not matched
    assert released == ["the ", "", "EN"]


def test_earliest_of_several_stop_strings_wins():
    released, matched = run(["world", "lo w"], ["hello world"])
    assert matched
    assert "".join(released) == "hel"


def test_nothing_is_released_after_a_match():
    stop_filter = StopStringFilter(["x"])
    assert stop_filter.push("abxcd") == ("ab", True)
    assert stop_filter.matched == "x"
    assert stop_filter.push("more") == ("", True)


def test_no_stop_strings_releases_everything_at_once():
    assert StopStringFilter([]).push("anything") == ("anything", False)


def test_empty_stop_string_is_rejected():
    with pytest.raises(ValueError):
        StopStringFilter([""])


def test_stop_strings_in_chinese_and_emoji():
    released, matched = run(["世界", "🎉"], ["你好", "世", "界!"])
    assert matched and "".join(released) == "你好"


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="abc\n", max_size=30),
       stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=4), min_size=1, max_size=3),
       cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=8))
def test_released_text_is_the_text_before_the_first_completed_stop_however_it_is_split(
        text, stops, cuts):
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    released, matched = run(stops, pieces)
    # generation stops when the first stop string completes: the one ending first
    ends = [(text.find(s) + len(s), text.find(s)) for s in stops if s in text]
    expected = text[:min(ends)[1]] if ends else text
    assert matched == bool(ends)
    assert "".join(released) == expected
