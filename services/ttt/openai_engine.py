"""A remote OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp's server, ...).

Streaming chat completions through the official `openai` client. Closing the iterator closes the
HTTP response, which is how every compatible server learns that the client went away. Sampling
parameters outside the OpenAI schema (top_k, repeat_penalty) travel in the request body, where
llama.cpp and vLLM read them and others ignore them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from genmesh.ttt.engine import (
    ChatMessage,
    EngineModelInfo,
    GenerationChunk,
    SamplingParams,
    TextEngine,
)

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types.chat import ChatCompletionMessageParam

_FINISH: dict[str | None, Any] = {"stop": "stop", "length": "length"}


class OpenAIEngine(TextEngine):
    """Forwards generations to `base_url`; `remote_model` names the model there."""

    engine = "openai"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str,
        remote_model: str = "",
        context_size: int = 0,
        max_output_tokens: int = 4096,
        timeout: float = 600.0,
    ) -> None:
        self.name = name
        self._base_url = base_url
        self._api_key = api_key
        self._remote_model = remote_model or name
        self._context_size = context_size
        self._max_output_tokens = max_output_tokens
        self._timeout = timeout
        self._client: AsyncOpenAI | None = None

    async def load(self) -> None:
        from openai import AsyncOpenAI

        # The key may be empty for local servers, but the client insists on a value.
        self._client = AsyncOpenAI(
            base_url=self._base_url,
            api_key=self._api_key or "unused",
            timeout=self._timeout,
            max_retries=0,
        )

    async def unload(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    @property
    def client(self) -> AsyncOpenAI:
        if self._client is None:
            raise RuntimeError(f"model {self.name} is not loaded")
        return self._client

    async def generate(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        extra: dict[str, Any] = {"top_k": params.top_k, "repeat_penalty": params.repeat_penalty}
        stream = await self.client.chat.completions.create(
            model=self._remote_model,
            messages=cast(
                "list[ChatCompletionMessageParam]",
                [{"role": m.role, "content": m.content} for m in messages],
            ),
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra,
        )
        finish: Any = None
        prompt_tokens = deltas = completion_tokens = 0
        try:
            async for event in stream:
                if event.usage is not None:
                    prompt_tokens = event.usage.prompt_tokens
                    completion_tokens = event.usage.completion_tokens
                for choice in event.choices:
                    text = choice.delta.content or ""
                    if choice.finish_reason is not None:
                        finish = _FINISH.get(choice.finish_reason, "stop")
                    if text:
                        deltas += 1
                        yield GenerationChunk(text=text)
        finally:
            await stream.close()
        # Each delta counted as one token; the server's usage, when sent, corrects the total.
        yield GenerationChunk(
            text="",
            tokens=max(0, completion_tokens - deltas),
            finish_reason=finish or "stop",
            prompt_tokens=prompt_tokens,
        )

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[tuple[int, str]]:
        raise NotImplementedError("an OpenAI-compatible endpoint has no tokenizer API")

    async def detokenize(self, tokens: list[int]) -> str:
        raise NotImplementedError("an OpenAI-compatible endpoint has no tokenizer API")

    def info(self) -> EngineModelInfo:
        return EngineModelInfo(
            name=self.name,
            engine=self.engine,
            context_size=self._context_size,
            max_output_tokens=self._max_output_tokens,
            details={"base_url": self._base_url, "remote_model": self._remote_model},
        )
