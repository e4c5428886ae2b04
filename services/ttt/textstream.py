"""Incremental text filters for streamed generation.

Both work chunk by chunk because a stop sequence or a `<think>` tag can be split across token
boundaries: text that might be the start of one is held back until it is decided.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from genmesh.ttt import tools
from genmesh.ttt.engine import GenerationChunk, TokenLogprob, ToolCall

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
class CallDelta:
    """A piece of call `call_index`: id and name on its first piece, then argument text."""

    call_index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class Split:
    text: str = ""
    thoughts: str = ""
    calls: list[CallDelta] = field(default_factory=list)
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.text or self.thoughts or self.calls or self.logprobs or self.prompt_logprobs
        )


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


@dataclass
class _Call:
    id: str
    name: str
    arguments: str = ""
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    closed: bool = False  # the arguments' JSON value is complete

    def take(self, text: str) -> int:
        """Consumes argument characters from `text` until the value closes; returns how many."""
        for index, char in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    self.closed = True
                    self.arguments += text[: index + 1]
                    return index + 1
        self.arguments += text
        return len(text)


def _json_string(body: str) -> str | None:
    """The value of a JSON string literal's body, or None if it does not decode."""
    try:
        value = json.loads(f'"{body}"')
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None


@dataclass
class ToolCallParser:
    """Splits answer text into plain text and tool-call deltas, chunk by chunk. With `check`
    (name, arguments), a complete call that fails it is given back as text instead. A call's
    deltas are held until it is complete and kept, so no delta ever streamed is contradicted by
    the final output (a call given back as text never was half-streamed)."""

    check: Callable[[str, str], bool] | None = None
    calls: list[ToolCall] = field(default_factory=list)
    _held: str = ""
    _call: _Call | None = None
    _pending: list[CallDelta] = field(default_factory=list)  # the current call's deltas
    _inside: bool = False

    def feed(self, text: str) -> tuple[str, list[CallDelta]]:
        out = ""
        deltas: list[CallDelta] = []
        buffer = self._held + text
        self._held = ""
        while buffer:
            if not self._inside:
                index = buffer.find(tools.OPEN)
                if index < 0:
                    keep = _partial_suffix(buffer, tools.OPEN)
                    out += buffer[: len(buffer) - keep]
                    self._held = buffer[len(buffer) - keep :]
                    break
                out += buffer[:index]
                buffer = buffer[index + len(tools.OPEN) :]
                self._inside = True
            elif self._call is None:
                match = tools.HEADER.match(buffer)
                name = None if match is None else _json_string(match.group(1))
                if match is None or name is None:
                    if tools.CLOSE in buffer:  # not a call after all: give the block back as text
                        end = buffer.index(tools.CLOSE) + len(tools.CLOSE)
                        out += tools.OPEN + buffer[:end]
                        buffer, self._inside = buffer[end:], False
                        continue
                    self._held = buffer
                    break
                self._call = _Call(tools.new_call_id(), name)
                self._pending = [CallDelta(len(self.calls), self._call.id, self._call.name)]
                buffer = buffer[match.end() :]
            elif not self._call.closed:
                used = self._call.take(buffer)
                self._pending.append(CallDelta(len(self.calls), arguments=buffer[:used]))
                buffer = buffer[used:]
            else:
                index = buffer.find(tools.CLOSE)
                if index < 0:
                    self._held = buffer
                    break
                out += self._end(deltas)
                buffer = buffer[index + len(tools.CLOSE) :]
        if self.calls and not out.strip():
            out = ""  # whitespace between calls
        return out, deltas

    def flush(self) -> tuple[str, list[CallDelta]]:
        """Text held back at the end, and the deltas of a call cut short (which keeps the
        arguments it got)."""
        deltas: list[CallDelta] = []
        text = self._end(deltas) if self._call is not None else ""
        held, self._held = self._held, ""
        if self._inside and not self.calls:
            return text + tools.OPEN + held, deltas
        return text + ("" if self.calls else held), deltas

    def _end(self, deltas: list[CallDelta]) -> str:
        """Keeps the call just read, its deltas added to `deltas`, or gives its text back when
        it fails the check."""
        call, self._call, self._inside = self._call, None, False
        pending, self._pending = self._pending, []
        if call is None:
            return ""
        made = ToolCall(call.id, call.name, call.arguments)
        if self.check is not None and call.closed and not self.check(call.name, call.arguments):
            return tools.call_text(made)
        self.calls.append(made)
        deltas.extend(d for d in pending if d.id or d.arguments)
        return ""


class TextOutput:
    """The output stage of a generation: engine chunks in, client deltas out, with stop
    sequences cut, <think> text moved to thoughts, tool calls parsed out of the answer (when
    tools were offered), usage counted and the finish reason kept."""

    def __init__(
        self, stops: tuple[str, ...], calls: bool | Callable[[str, str], bool] | None = False
    ) -> None:
        """`calls`: parse tool calls out of the answer, keeping those the callable accepts."""
        self._stops = StopMatcher(stops)
        self._thinking = ThinkSplitter()
        check = calls if callable(calls) else None
        self._calls = ToolCallParser(check) if calls else None
        self.answer: list[str] = []
        self.thoughts: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: list[TokenLogprob] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish = ""

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self._calls.calls if self._calls else []

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
        self.logprobs.extend(chunk.logprobs)
        self.prompt_logprobs.extend(chunk.prompt_logprobs)
        split = self._keep(self._thinking.feed(self._stops.feed(chunk.text)))
        split.logprobs = chunk.logprobs
        split.prompt_logprobs = chunk.prompt_logprobs
        if self._stops.matched:
            self.finish = "stop_sequence"
        elif self.finish == "stop" and self.tool_calls:
            self.finish = "tool_calls"
        return split

    def flush(self) -> Split:
        """Text held back at the end in case it began a stop sequence or a tag."""
        tail = self._thinking.feed(self._stops.flush())
        rest = self._thinking.flush()
        split = self._keep(Split(tail.text + rest.text, tail.thoughts + rest.thoughts))
        if self._calls is not None:
            held, calls = self._calls.flush()
            split.text += held
            split.calls += calls
            self.answer.append(held)
        if self.finish == "stop" and self.tool_calls:
            self.finish = "tool_calls"
        return split

    def _keep(self, split: Split) -> Split:
        if self._calls is not None:
            split.text, split.calls = self._calls.feed(split.text)
        self.answer.append(split.text)
        self.thoughts.append(split.thoughts)
        return split
