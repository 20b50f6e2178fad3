"""Tool-call parsing: the shared types, the parser interface and the streaming machinery.

A parser turns what the model wrote into content plus tool calls, either all at once
(`ToolCallParser.extract`) or piece by piece as the text arrives (`ToolCallParser.stream`).

Content is trimmed the same way by both: the text outside the calls is joined and stripped of
leading and trailing whitespace, and is None when nothing is left. A stream gets there by
dropping leading whitespace and holding back a whitespace tail until more content follows, so
its content deltas concatenate to exactly `extract(text).content`.

Malformed output (a call marker followed by broken JSON, a call cut off by the end of the
output): `extract` returns the whole text as content and no calls. A stream cannot take back
what it already sent, so it sends the rest of the text, from where its last delta ended, as
content. The two therefore agree whenever no call had been streamed before the error.

Whitespace between markers, names and JSON may be any `str.isspace` character; inside JSON
(and around the items of a JSON array of calls) only JSON's own whitespace is allowed.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

_SPACE = re.compile(r"\s*")


@dataclass(frozen=True)
class ParsedToolCall:
    """One call: the function's name and its arguments as the text of a JSON object."""
    name: str
    arguments: str


@dataclass(frozen=True)
class ExtractedToolCalls:
    """A whole output split into its content (None when empty) and its calls, in order."""
    content: str | None
    calls: tuple[ParsedToolCall, ...]


@dataclass(frozen=True)
class ToolCallDelta:
    """A streamed piece of call `index`: the first piece of a call carries its name, and the
    `arguments` fragments of a call concatenate to its arguments text."""
    index: int
    name: str | None
    arguments: str


@dataclass(frozen=True)
class ContentDelta:
    text: str


StreamDelta = ContentDelta | ToolCallDelta


@dataclass(frozen=True)
class CallFormat:
    """How one call is written, for constraining generation with a structural tag: once the
    model writes `trigger`, a call is `begin(name)`, then a JSON object of arguments (held to
    the function's schema), then `end`."""
    trigger: str
    begin_before_name: str
    begin_after_name: str
    end: str
    # The name sits inside a JSON string, so it must be escaped as one.
    name_in_json_string: bool = False

    def begin(self, name: str) -> str:
        written = json.dumps(name, ensure_ascii=False)[1:-1] if self.name_in_json_string else name
        return f"{self.begin_before_name}{written}{self.begin_after_name}"


class StreamingToolCallParser(ABC):
    """The per-choice state of a parser: feed it text pieces, then tell it the output ended."""

    @abstractmethod
    def push(self, text: str) -> list[StreamDelta]:
        """Add the next piece of output (any length, split anywhere); return what is settled."""

    @abstractmethod
    def finish(self) -> list[StreamDelta]:
        """The output ended: return everything still held back."""


class ToolCallParser(ABC):
    """One tool-call format (the one the model's chat template asks for)."""
    name: ClassVar[str]
    # True when the format's markers are special tokens the detokenizer must keep.
    needs_special_tokens: ClassVar[bool] = False

    @abstractmethod
    def extract(self, text: str) -> ExtractedToolCalls:
        """Split a whole output into content and calls."""

    @abstractmethod
    def stream(self) -> StreamingToolCallParser:
        """A fresh streaming state, for one choice."""

    def call_format(self) -> CallFormat | None:
        """How a call can be forced with a structural tag; None when the format has no fixed
        text around each call's arguments."""
        return None


def content_or_none(text: str) -> str | None:
    """Content as both `extract` and streams report it: stripped, None when empty."""
    return text.strip() or None


def skip_space(text: str, pos: int) -> int:
    """The first position at or after `pos` that is not whitespace (str.isspace)."""
    return _SPACE.match(text, pos).end()


def partial_marker_suffix(text: str, marker: str, start: int = 0) -> int:
    """Length of the longest tail of text[start:] that is a proper prefix of `marker`: text
    that must be held back because the next piece may complete the marker."""
    for size in range(min(len(marker) - 1, len(text) - start), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


def assemble_deltas(deltas: Iterable[StreamDelta]) -> ExtractedToolCalls:
    """Put streamed deltas back together into what they describe."""
    content: list[str] = []
    names: dict[int, str] = {}
    arguments: dict[int, list[str]] = {}
    for delta in deltas:
        if isinstance(delta, ContentDelta):
            content.append(delta.text)
            continue
        if delta.name is not None:
            names[delta.index] = delta.name
        arguments.setdefault(delta.index, []).append(delta.arguments)
    calls = tuple(ParsedToolCall(names[index], "".join(arguments[index]))
                  for index in sorted(names))
    return ExtractedToolCalls(content_or_none("".join(content)), calls)


class WhitespaceTrimmer:
    """Passes a stream of text through minus the leading and trailing whitespace of the
    whole: a whitespace tail is held until non-whitespace follows, and dropped at the end."""

    def __init__(self) -> None:
        self._started = False
        self._held = ""

    def push(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        body = text.rstrip()
        if not body:
            self._held += text
            return ""
        released = self._held + body
        self._held = text[len(body):]
        return released


class StreamStateMachine(StreamingToolCallParser):
    """Base of the format streams. It keeps the text so far and calls `_step` until the state
    machine must wait for more text; `_at_end` then settles the state the output ended in.

    Two positions into `_text`: `_pos`, how far the machine has read, and `_unsent`, where
    the text that no delta has carried yet begins. Markers and JSON keys that were read but
    not sent lie between them; they become content if the output turns out malformed.
    """
    # False for grammar-forced output, where text that is not a call is never content.
    _malformed_text_is_content: ClassVar[bool] = True

    def __init__(self) -> None:
        self._text = ""
        self._pos = 0
        self._unsent = 0
        self._final = False
        self._passthrough = False
        self._trimmer = WhitespaceTrimmer()
        self._deltas: list[StreamDelta] = []
        self._calls_started = 0

    def push(self, text: str) -> list[StreamDelta]:
        self._text += text
        self._run()
        return self._take_deltas()

    def finish(self) -> list[StreamDelta]:
        if not self._final:
            self._final = True
            self._run()
            if not self._passthrough:
                self._at_end()
        return self._take_deltas()

    @abstractmethod
    def _step(self) -> bool:
        """Make one move; False when nothing more can be settled without more text."""

    @abstractmethod
    def _at_end(self) -> None:
        """The output ended in the current state: send what it still holds, or give up."""

    def _run(self) -> None:
        while not self._passthrough and self._step():
            pass
        if self._passthrough:
            self._release_rest()

    def _take_deltas(self) -> list[StreamDelta]:
        deltas, self._deltas = self._deltas, []
        return deltas

    def _treat_rest_as_content(self) -> None:
        """From the first unsent character on, everything is content (or dropped, for forced
        output): the text is not, or no longer, in the format."""
        self._passthrough = True
        self._release_rest()

    def _release_rest(self) -> None:
        if self._malformed_text_is_content:
            self._send_content(self._text[self._unsent:])
        self._text, self._pos, self._unsent = "", 0, 0

    def _send_content(self, text: str) -> None:
        released = self._trimmer.push(text)
        if not released:
            return
        if self._deltas and isinstance(self._deltas[-1], ContentDelta):
            released = self._deltas.pop().text + released
        self._deltas.append(ContentDelta(released))

    def _release_content_to(self, end: int) -> None:
        """Send the unsent text up to `end` as content and move both positions there."""
        self._send_content(self._text[self._unsent:end])
        self._pos = self._unsent = end

    def _start_call(self, name: str, arguments: str) -> None:
        self._deltas.append(ToolCallDelta(self._calls_started, name, arguments))
        self._calls_started += 1

    def _send_arguments(self, fragment: str) -> None:
        if not fragment:
            return
        index = self._calls_started - 1
        last = self._deltas[-1] if self._deltas else None
        if isinstance(last, ToolCallDelta) and last.index == index:
            self._deltas[-1] = ToolCallDelta(index, last.name, last.arguments + fragment)
        else:
            self._deltas.append(ToolCallDelta(index, None, fragment))

    def _literal_at(self, pos: int, literal: str) -> bool | None:
        """Whether the text at `pos` starts with `literal`; None while the text so far is a
        proper prefix of it and more may come."""
        found = self._text[pos:pos + len(literal)]
        if found == literal:
            return True
        if not self._final and literal.startswith(found):
            return None
        return False

    def _step_expecting(self, literal: str) -> int | None:
        """After optional whitespace, `literal` must come next: the position just past it,
        or None (wait for more text, or — when it cannot come — the rest is content)."""
        at = skip_space(self._text, self._pos)
        if at == len(self._text):
            return None
        found = self._literal_at(at, literal)
        if found is None:
            return None
        if not found:
            self._treat_rest_as_content()
            return None
        return at + len(literal)

    def _step_content_until(self, marker: str) -> bool:
        """Release content up to the next `marker`, holding back a tail that may begin it;
        True once the marker was read (`_pos` is then just after it, `_unsent` at it)."""
        at = self._text.find(marker, self._pos)
        if at == -1:
            keep = 0 if self._final else partial_marker_suffix(self._text, marker, self._pos)
            self._release_content_to(len(self._text) - keep)
            self._compact()
            return False
        self._release_content_to(at)
        self._pos = at + len(marker)
        return True

    def _compact(self) -> None:
        """Forget the text that is read and sent, so a long answer is not kept and copied on
        every piece. Only safe while no other position into `_text` is held."""
        cut = min(self._pos, self._unsent)
        if cut:
            self._text = self._text[cut:]
            self._pos -= cut
            self._unsent -= cut
