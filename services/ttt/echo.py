"""A deterministic echo engine: the last user message comes back one character per token.

Like Triton's identity model it isolates the mesh's own overhead (routing, relaying, queueing)
for load tests and benchmarks. `extra` may set `delay_ms` (per token) and `repeat`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Literal

from genmesh.ttt.engine import (
    ChatMessage,
    EngineModelInfo,
    GenerationChunk,
    SamplingParams,
    TextEngine,
)

CONTEXT_SIZE = 1 << 20


class EchoEngine(TextEngine):
    def __init__(self, name: str = "echo") -> None:
        self.name = name

    async def load(self) -> None:
        return None

    async def generate(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        prompt = next((m.content for m in reversed(messages) if m.role == "user"), "")
        prompt_tokens = sum(len(m.content) for m in messages)
        text = prompt * max(1, int(params.extra.get("repeat", 1)))
        delay = float(params.extra.get("delay_ms", 0)) / 1000
        if not text:
            yield GenerationChunk("", tokens=0, finish_reason="stop", prompt_tokens=prompt_tokens)
            return
        for index, char in enumerate(text[: params.max_tokens]):
            if delay:
                await asyncio.sleep(delay)
            last = index + 1 == min(len(text), params.max_tokens)
            reason: Literal["stop", "length"] | None = None
            if last:
                reason = "stop" if len(text) <= params.max_tokens else "length"
            yield GenerationChunk(
                char, finish_reason=reason, prompt_tokens=prompt_tokens if index == 0 else 0
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
