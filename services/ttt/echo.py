"""A deterministic echo engine: the last user message comes back one character per token.

Like Triton's identity model it isolates the mesh's own overhead (routing, relaying, queueing)
for load tests and benchmarks. `extra` may set `delay_ms` (per token), `repeat`, and `fail_after`
(tokens after which the engine fails, as a real one might mid-stream).

It cannot steer its output, so it serves a constraint or a required tool call only when its echo
already satisfies it (a prompt that is valid JSON, a tool-call block, one of the choices) and
refuses the request with FAILED_PRECONDITION otherwise: tests of the protocol (tool-call deltas,
choices, logprobs) then run deterministically. Its logprobs say each character is certain.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genmesh.runtime import errors
from genmesh.runtime.errors import FieldViolation
from genmesh.ttt import structured
from genmesh.ttt.engine import (
    ChatMessage,
    Constraint,
    EngineModelInfo,
    GenerationChunk,
    SamplingParams,
    TextEngine,
    TokenLogprob,
    ToolUse,
    UnsupportedError,
    check_prompt_scores,
)
from genmesh.ttt.textstream import ToolCallParser

CONTEXT_SIZE = 1 << 20


class EchoOptions(BaseModel):
    """The echo's knobs in `extra`; any other key is the binding's business and ignored."""

    model_config = ConfigDict(extra="ignore")

    repeat: int = Field(1, ge=1, le=1_000_000)
    delay_ms: float = Field(0, ge=0, le=60_000, allow_inf_nan=False)
    fail_after: int | None = Field(None, ge=0)

    @classmethod
    def of(cls, extra: dict[str, Any]) -> EchoOptions:
        try:
            return cls.model_validate(extra)
        except ValidationError as exc:
            violations = [
                FieldViolation("extra." + ".".join(str(p) for p in e["loc"]), e["msg"])
                for e in exc.errors()
            ]
            raise errors.invalid_argument("invalid echo options", *violations) from None


def _satisfies(text: str, constraint: Constraint) -> bool:
    if constraint.choices:
        return text in constraint.choices
    if constraint.regex is not None:
        return structured.fullmatch(constraint.regex, text) is True
    try:
        jsonschema.validate(json.loads(text), constraint.json_schema or {})
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def _calls_valid(text: str, use: ToolUse) -> bool:
    """Whether `text` makes only valid calls (at least one when required)."""
    parser = ToolCallParser()
    rest = parser.feed(text)[0] + parser.flush()[0]
    schemas = {t.name: t.parameters for t in use.allowed}
    if use.required and (rest.strip() or not parser.calls):
        return False
    if len(parser.calls) > 1 and not use.parallel:
        return False
    for call in parser.calls:
        try:
            jsonschema.validate(json.loads(call.arguments), schemas[call.name])
        except (KeyError, ValueError, jsonschema.ValidationError):
            return False
    return True


def _length(prompt: str, options: EchoOptions, params: SamplingParams) -> int:
    """The echo's length: the prompt `repeat` times, or repeated on to min_tokens."""
    return max(len(prompt) * options.repeat, params.min_tokens if prompt else 0)


class EchoEngine(TextEngine):
    # It samples nothing, so penalties change nothing, as temperature does not.
    features = frozenset(
        {
            "json_schema",
            "regex",
            "choices",
            "tools",
            "logprobs",
            "raw_prompt",
            "prompt_logprobs",
            "penalties",
            "min_tokens",
        }
    )

    def __init__(self, name: str = "echo") -> None:
        self.name = name

    async def load(self) -> None:
        return None

    def generate(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        options = EchoOptions.of(params.extra)
        check_prompt_scores(sum(len(m.content) for m in messages), params)
        prompt = next((m.content for m in reversed(messages) if m.role == "user"), "")
        # As many repeats as max_tokens takes, not all of them: `repeat` goes to a million.
        sent = min(_length(prompt, options, params), params.max_tokens)
        repeats = -(-sent // max(len(prompt), 1))
        echo = (prompt * repeats)[:sent] if params.constraint or params.tools else ""
        if params.constraint is not None and not _satisfies(echo, params.constraint):
            what = "constrain output (its echo does not satisfy the constraint)"
            raise UnsupportedError("echo", params.constraint.field, what)
        if params.tools is not None and not _calls_valid(echo, params.tools):
            raise UnsupportedError("echo", "text.tools", "call tools (its echo is no valid call)")
        return self._echo(messages, prompt, options, params)

    async def _echo(
        self, messages: list[ChatMessage], prompt: str, options: EchoOptions, params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        whole = "".join(m.content for m in messages)
        prompt_tokens = len(whole)
        # Every character of the prompt is certain to the echo; nothing predicts the first.
        scored = () if params.prompt_logprobs is None else _scored(whole, params.prompt_logprobs)
        length = _length(prompt, options, params)  # never built beyond what is sent
        if not length:
            yield GenerationChunk(
                "",
                tokens=0,
                finish_reason="stop",
                prompt_tokens=prompt_tokens,
                prompt_logprobs=scored,
            )
            return
        sent = min(length, params.max_tokens)
        for index in range(sent):
            if options.fail_after is not None and index >= options.fail_after:
                raise RuntimeError(f"echo failure injected after {index} tokens")
            if options.delay_ms:
                await asyncio.sleep(options.delay_ms / 1000)
            reason: Literal["stop", "length"] | None = None
            if index + 1 == sent:
                ended = length <= params.max_tokens and params.min_tokens < params.max_tokens
                reason = "stop" if ended else "length"
            char = prompt[index % len(prompt)]
            yield GenerationChunk(
                char,
                finish_reason=reason,
                prompt_tokens=prompt_tokens if index == 0 else 0,
                prompt_logprobs=scored if index == 0 else (),
                logprobs=()
                if params.top_logprobs is None
                else (_certain(char, params.top_logprobs),),
            )

    def tokenize(self, text: str, add_special_tokens: bool) -> list[tuple[int, str]]:
        return [(ord(char), char) for char in text]

    def count_tokens(self, text: str, add_special_tokens: bool) -> int:
        return len(text)

    def detokenize(self, tokens: list[int]) -> str:
        """Tokens are code points; surrogates are none of the echo's (its tokens are characters,
        and a lone surrogate is not one)."""
        for token in tokens:
            if 0xD800 <= token <= 0xDFFF:
                raise ValueError(f"token {token} is a surrogate code point, not a character")
        return "".join(chr(token) for token in tokens)

    def info(self) -> EngineModelInfo:
        return EngineModelInfo(
            name=self.name,
            engine="echo",
            context_size=CONTEXT_SIZE,
            max_output_tokens=CONTEXT_SIZE,
            details={"description": "deterministic echo of the last user message"},
        )


def _scored(prompt: str, top: int) -> tuple[TokenLogprob, ...]:
    if not prompt:
        return ()
    first = TokenLogprob(ord(prompt[0]), prompt[0].encode(), 0.0)
    return (first, *(_certain(c, top) for c in prompt[1:]))


def _certain(char: str, top: int) -> TokenLogprob:
    """A character the echo was sure of: probability 1, no alternative."""
    token = TokenLogprob(ord(char), char.encode(), 0.0)
    return TokenLogprob(token.token_id, token.text, 0.0, (token,)[:top])
