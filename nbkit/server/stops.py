"""OpenAI's ``stop``: end the answer before the first stop string, which is never sent.

Streaming makes it subtle: a stop string can arrive split over two pieces, so the tail of the
text that could still begin a stop string is held back until the next piece shows whether it
does. Engines decode tokens, not strings, so this lives in the server, once, for both.
"""

from __future__ import annotations


class StopStrings:
    """Feed pieces in; get back what may be shown, and whether a stop string was reached."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        """The text that can be shown now (nothing more once a stop string was found)."""
        if self.hit:
            return ""
        if not self.stops:
            return piece
        text = self._held + piece
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit = True
            self._held = ""
            return text[: min(found)]
        keep = self._could_begin_stop(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self) -> str:
        """The end of the answer: what was held back was not a stop string after all."""
        held, self._held = self._held, ""
        return "" if self.hit else held

    def _could_begin_stop(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
