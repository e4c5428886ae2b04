"""Text cut into sentences, the unit speech is synthesised in: whole, or as it is being written.

This module has no heavy dependency, so the router can cut a reply that streams from a language
model into sentences for the voice while the rest is still being written.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = ("Mr", "Mrs", "Ms", "Dr", "Prof", "St", "vs", "etc", "e.g", "i.e")
_SENTENCE_END = re.compile(
    # After a terminator, maybe followed by a closing quote or bracket,
    "(?:(?<=[.!?\u2026])|(?<=[.!?\u2026][\"'\u201d\u2019)\\]]))"
    + "".join(rf"(?<!\b{re.escape(a)}\.)" for a in _ABBREVIATIONS)
    + r"\s+|\n\s*\n|\n(?=\s*[-*•])"  # or at a paragraph break or list item.
)


def split_sentences(text: str) -> list[str]:
    """Sentences (or paragraphs and list items) in order, without empty pieces."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


class SentenceStream:
    """Sentences of text that arrives in pieces: a sentence is given once the text after it
    shows that it ended (the space after its full stop), the rest when the text is finished."""

    def __init__(self) -> None:
        self._open = ""

    def push(self, text: str) -> list[str]:
        *ended, self._open = _SENTENCE_END.split(self._open + text)
        return [s.strip() for s in ended if s and s.strip()]

    def finish(self) -> list[str]:
        rest, self._open = self._open, ""
        return split_sentences(rest)
