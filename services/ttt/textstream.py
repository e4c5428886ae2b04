"""Incremental text filters for streamed generation.

Both work chunk by chunk because a stop sequence or a `<think>` tag can be split across token
boundaries: text that might be the start of one is held back until it is decided.
"""

from __future__ import annotations

from dataclasses import dataclass

from genmesh.ttt.engine import GenerationChunk

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def _partial_suffix(text: str, needle: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `needle`."""
    for size in range(min(len(text), len(needle) - 1), 0, -1):
        if needle.startswith(text[-size:]):
            return size
    return 0


class StopMatcher:
    """Cuts the stream before the first stop sequence."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.matched = ""

    def feed(self, text: str) -> str:
        """Returns the text safe to emit; after a match, nothing more is emitted."""
        if self.matched:
            return ""
        if not self.stops:
            return text
        buffer = self._held + text
        hits = [(buffer.find(s), s) for s in self.stops if s in buffer]
        if hits:
            index, self.matched = min(hits)
            self._held = ""
            return buffer[:index]
        hold = max(_partial_suffix(buffer, s) for s in self.stops)
        self._held = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.matched else held


@dataclass
class Split:
    text: str = ""
    thoughts: str = ""


class ThinkSplitter:
    """Routes text inside <think>...</think> to thoughts, the rest to the answer."""

    def __init__(self) -> None:
        self._inside = False
        self._held = ""

    def feed(self, text: str) -> Split:
        out = Split()
        buffer = self._held + text
        self._held = ""
        while buffer:
            tag = THINK_CLOSE if self._inside else THINK_OPEN
            index = buffer.find(tag)
            if index >= 0:
                self._emit(out, buffer[:index])
                buffer = buffer[index + len(tag) :]
                self._inside = not self._inside
                continue
            hold = _partial_suffix(buffer, tag)
            self._emit(out, buffer[: len(buffer) - hold])
            self._held = buffer[len(buffer) - hold :] if hold else ""
            break
        return out

    def flush(self) -> Split:
        out = Split()
        self._emit(out, self._held)
        self._held = ""
        return out

    def _emit(self, out: Split, text: str) -> None:
        if self._inside:
            out.thoughts += text
        else:
            out.text += text


class TextOutput:
    """The output stage of a generation: engine chunks in, client deltas out, with stop
    sequences cut, <think> text moved to thoughts, usage counted and the finish reason kept."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = StopMatcher(stops)
        self._thinking = ThinkSplitter()
        self.answer: list[str] = []
        self.thoughts: list[str] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish = ""

    @property
    def stop_sequence(self) -> str:
        return self._stops.matched

    @property
    def finished(self) -> bool:
        """A stop sequence ended the answer: the engine's further output is not wanted."""
        return bool(self._stops.matched)

    def feed(self, chunk: GenerationChunk) -> Split:
        """The delta a chunk of engine output makes; `finished` once a stop sequence matched."""
        self.prompt_tokens += chunk.prompt_tokens
        self.completion_tokens += chunk.tokens
        if chunk.finish_reason:
            self.finish = chunk.finish_reason
        split = self._keep(self._thinking.feed(self._stops.feed(chunk.text)))
        if self._stops.matched:
            self.finish = "stop_sequence"
        return split

    def flush(self) -> Split:
        """Text held back at the end in case it began a stop sequence or a tag."""
        tail = self._thinking.feed(self._stops.flush())
        rest = self._thinking.flush()
        return self._keep(Split(tail.text + rest.text, tail.thoughts + rest.thoughts))

    def _keep(self, split: Split) -> Split:
        self.answer.append(split.text)
        self.thoughts.append(split.thoughts)
        return split
