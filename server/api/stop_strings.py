"""Stop strings over a stream of text pieces that arrive a token at a time.

A stop string can span token boundaries, and the text a client receives must never contain
any part of it. So the filter holds back the longest tail of the text that could still grow
into a stop string, and releases it only once it can no longer match:

    # | released | held back (a prefix of some stop string) | <- next piece arrives here
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringFilter:
    """Feed text pieces with `push`; it returns the text that is safe to show and whether a
    stop string matched. After a match the stream is over: the stop string and everything
    after it are dropped."""

    def __init__(self, stop_strings: Sequence[str]) -> None:
        if any(not s for s in stop_strings):
            raise ValueError("stop strings must be non-empty")
        self._stop_strings = tuple(stop_strings)
        self._held = ""
        self._matched: str | None = None

    @property
    def matched(self) -> str | None:
        """The stop string that ended the stream, or None."""
        return self._matched

    @property
    def held_text(self) -> str:
        return self._held

    def push(self, piece: str) -> tuple[str, bool]:
        """Add the next piece; return (text to release now, whether a stop string matched)."""
        if self._matched is not None:
            return "", True
        if not self._stop_strings:
            return piece, False
        text = self._held + piece
        match_at, matched = self._first_completed(text)
        if matched is not None:
            self._matched = matched
            self._held = ""
            return text[:match_at], True
        keep = self._longest_partial_suffix(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """The stream ended without a match: release what was held back."""
        held, self._held = self._held, ""
        return held

    def _first_completed(self, text: str) -> tuple[int, str | None]:
        """The stop string whose first occurrence ends first (generation ends there, so a
        longer stop that started earlier but ends later never completes), and where it
        starts; of two ending at once, the one starting first."""
        best_end, best_at, best = len(text) + 1, len(text), None
        for stop in self._stop_strings:
            at = text.find(stop)
            if at != -1 and (at + len(stop), at) < (best_end, best_at):
                best_end, best_at, best = at + len(stop), at, stop
        return best_at, best

    def _longest_partial_suffix(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stop_strings:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
