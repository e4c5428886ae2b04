"""A deterministic echo engine: the last user message comes back one character per token.

Like Triton's identity model it isolates the mesh's own overhead (routing, relaying, queueing)
for load tests and benchmarks. `extra` may set `delay_ms` (per token), `repeat`, and `fail_after`
(tokens after which the engine fails, as a real one might mid-stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genmesh.runtime import errors
from genmesh.runtime.errors import FieldViolation
from genmesh.ttt.engine import (
    ChatMessage,
    EngineModelInfo,
    GenerationChunk,
    SamplingParams,
    TextEngine,
)

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


class EchoEngine(TextEngine):
    def __init__(self, name: str = "echo") -> None:
        self.name = name

    async def load(self) -> None:
        return None

    async def generate(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        options = EchoOptions.of(params.extra)
        prompt = next((m.content for m in reversed(messages) if m.role == "user"), "")
        prompt_tokens = sum(len(m.content) for m in messages)
        length = len(prompt) * options.repeat  # the echo, never built beyond what is sent
        if not length:
            yield GenerationChunk("", tokens=0, finish_reason="stop", prompt_tokens=prompt_tokens)
            return
        sent = min(length, params.max_tokens)
        for index in range(sent):
            if options.fail_after is not None and index >= options.fail_after:
                raise RuntimeError(f"echo failure injected after {index} tokens")
            if options.delay_ms:
                await asyncio.sleep(options.delay_ms / 1000)
            reason: Literal["stop", "length"] | None = None
            if index + 1 == sent:
                reason = "stop" if length <= params.max_tokens else "length"
            yield GenerationChunk(
                prompt[index % len(prompt)],
                finish_reason=reason,
                prompt_tokens=prompt_tokens if index == 0 else 0,
            )

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[tuple[int, str]]:
        return [(ord(char), char) for char in text]

    async def detokenize(self, tokens: list[int]) -> str:
        return "".join(chr(token) for token in tokens)

    def info(self) -> EngineModelInfo:
        return EngineModelInfo(
            name=self.name,
            engine="echo",
            context_size=CONTEXT_SIZE,
            max_output_tokens=CONTEXT_SIZE,
            details={"description": "deterministic echo of the last user message"},
        )
