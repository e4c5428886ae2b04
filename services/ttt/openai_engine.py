"""A remote OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp's server, ...).

Streaming chat completions through the official `openai` client. Closing the iterator closes the
HTTP response, which is how every compatible server learns that the client went away. Sampling
parameters outside the OpenAI schema (top_k, repeat_penalty) travel in the request body, where
llama.cpp and vLLM read them and others ignore them.

The endpoint's key is a provider secret (Vault's `<path>/providers`, the secrets file or
`GENMESH_SECRET_<NAME>`), looked up for every request. When the endpoint refuses it, the secret is
re-read at once and the request retried once if it changed: after a rotation the first request
already succeeds, where waiting for the periodic refresh would fail requests for up to
`refresh_seconds`. Upstream failures become coded statuses that never quote the upstream's answer
(which may echo the key).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import grpc
import httpx2
import openai
from openai import AsyncOpenAI
from openai.types import Completion, CompletionChoice

from genmesh.runtime.errors import ServiceError
from genmesh.runtime.secrets import ProviderSecrets
from genmesh.runtime.settings import ConfigError
from genmesh.ttt.engine import (
    ChatMessage,
    EngineModelInfo,
    GenerationChunk,
    SamplingParams,
    TextEngine,
)

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

_FINISH: dict[str | None, Any] = {"stop": "stop", "length": "length"}
# How an upstream HTTP status reaches the client (anything else, 5xx included: UNAVAILABLE).
_STATUS: dict[int, tuple[grpc.StatusCode, str]] = {
    400: (grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_REJECTED_REQUEST"),
    401: (grpc.StatusCode.PERMISSION_DENIED, "UPSTREAM_KEY_REFUSED"),
    403: (grpc.StatusCode.PERMISSION_DENIED, "UPSTREAM_KEY_REFUSED"),
    404: (grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_NOT_FOUND"),
    413: (grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_REJECTED_REQUEST"),
    422: (grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_REJECTED_REQUEST"),
    429: (grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED"),
}


def upstream_error(model: str, exc: openai.APIError | httpx2.HTTPError) -> ServiceError:
    """An upstream failure as a coded status, from its HTTP status alone."""
    if not isinstance(exc, openai.APIStatusError):
        return ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            f"the upstream endpoint of model '{model}' cannot be reached",
            "UPSTREAM_UNAVAILABLE",
            metadata={"model": model},
            retry_after=1.0,
        )
    code, reason = _STATUS.get(exc.status_code, (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_FAILED"))
    what = "refused its API key" if reason == "UPSTREAM_KEY_REFUSED" else "failed"
    retry = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    return ServiceError(
        code,
        f"the upstream endpoint of model '{model}' {what} (HTTP {exc.status_code})",
        reason,
        metadata={"model": model, "http_status": str(exc.status_code)},
        retry_after=1.0 if retry else None,
    )


class OpenAIEngine(TextEngine):
    """Forwards generations to `base_url`; `remote_model` names the model there, and
    `api_key_secret` the provider secret holding its key (none: a server without keys)."""

    engine = "openai"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        secrets: ProviderSecrets,
        api_key_secret: str = "",
        remote_model: str = "",
        context_size: int = 0,
        max_output_tokens: int = 4096,
        timeout: float = 600.0,
    ) -> None:
        self.name = name
        self._base_url = base_url
        self._secrets = secrets
        self._secret = api_key_secret
        self._remote_model = remote_model or name
        self._context_size = context_size
        self._max_output_tokens = max_output_tokens
        self._timeout = timeout
        self._client: AsyncOpenAI | None = None

    def _key(self) -> str:
        try:
            return self._secrets.get(self._secret)
        except KeyError:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model '{self.name}' needs the provider secret '{self._secret}', which is gone",
                "PROVIDER_SECRET_MISSING",
                metadata={"model": self.name, "secret": self._secret},
            ) from None

    async def _current_key(self) -> str:
        return self._key()

    async def load(self) -> None:
        if self._secret:
            try:
                self._secrets.get(self._secret)
            except KeyError:
                raise ConfigError(
                    f"ttt.models[{self.name}]: no provider secret '{self._secret}': put it in "
                    "Vault's <path>/providers, "
                    f"'providers:' of the secrets file or GENMESH_SECRET_{self._secret.upper()}"
                ) from None
        # A server without keys still needs a value for the client.
        self._client = AsyncOpenAI(
            base_url=self._base_url,
            api_key=self._current_key if self._secret else "unused",
            timeout=self._timeout,
            max_retries=0,
        )

    async def unload(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # A JSON schema passes through as OpenAI's response_format; the upstream enforces it. A raw
    # prompt goes to the upstream's legacy completions.
    features = frozenset({"json_schema", "raw_prompt", "penalties"})

    @property
    def client(self) -> AsyncOpenAI:
        if self._client is None:
            raise RuntimeError(f"model {self.name} is not loaded")
        return self._client

    async def _open(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> openai.AsyncStream[ChatCompletionChunk] | openai.AsyncStream[Completion]:
        """The upstream stream, tried again as long as a refused key turns out to have rotated."""
        sampling: dict[str, Any] = {
            "model": self._remote_model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
            "extra_body": {"top_k": params.top_k, "repeat_penalty": params.repeat_penalty},
        }
        # Sent only when asked for, so an upstream that has them not is not refused for zeros.
        if params.presence_penalty:
            sampling["presence_penalty"] = params.presence_penalty
        if params.frequency_penalty:
            sampling["frequency_penalty"] = params.frequency_penalty
        if params.logit_bias:
            sampling["logit_bias"] = {str(t): bias for t, bias in params.logit_bias.items()}
        while True:
            used = self._key() if self._secret else ""
            try:
                if params.raw_prompt:
                    completions: openai.AsyncStream[
                        Completion
                    ] = await self.client.completions.create(prompt=messages[0].content, **sampling)
                    return completions
                chat: openai.AsyncStream[
                    ChatCompletionChunk
                ] = await self.client.chat.completions.create(
                    messages=cast(
                        "list[ChatCompletionMessageParam]",
                        [{"role": m.role, "content": m.content} for m in messages],
                    ),
                    response_format=response_format(params),
                    **sampling,
                )
                return chat
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                if not (used and await self._secrets.rotated(self._secret, used)):
                    raise upstream_error(self.name, exc) from None
            except openai.APIError as exc:
                raise upstream_error(self.name, exc) from None

    async def generate(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        stream = await self._open(messages, params)
        finish: Any = None
        prompt_tokens = deltas = completion_tokens = 0
        try:
            async for event in stream:
                if event.usage is not None:
                    prompt_tokens = event.usage.prompt_tokens
                    completion_tokens = event.usage.completion_tokens
                for choice in event.choices:
                    text = (
                        choice.text
                        if isinstance(choice, CompletionChoice)
                        else choice.delta.content or ""
                    )
                    if choice.finish_reason is not None:
                        finish = _FINISH.get(choice.finish_reason, "stop")
                    if text:
                        deltas += 1
                        yield GenerationChunk(text=text)
        except (openai.APIError, httpx2.HTTPError) as exc:
            raise upstream_error(self.name, exc) from None
        finally:
            await stream.close()
        # Each delta counted as one token; the server's usage, when sent, corrects the total.
        yield GenerationChunk(
            text="",
            tokens=max(0, completion_tokens - deltas),
            finish_reason=finish or "stop",
            prompt_tokens=prompt_tokens,
        )

    def tokenize(self, text: str, add_special_tokens: bool) -> list[tuple[int, str]]:
        raise NotImplementedError("an OpenAI-compatible endpoint has no tokenizer API")

    def detokenize(self, tokens: list[int]) -> str:
        raise NotImplementedError("an OpenAI-compatible endpoint has no tokenizer API")

    def info(self) -> EngineModelInfo:
        return EngineModelInfo(
            name=self.name,
            engine=self.engine,
            context_size=self._context_size,
            max_output_tokens=self._max_output_tokens,
            details={"base_url": self._base_url, "remote_model": self._remote_model},
        )


def response_format(params: SamplingParams) -> Any:
    """The constraint's JSON schema as a strict `response_format`, or nothing."""
    if params.constraint is None or params.constraint.json_schema is None:
        return openai.NOT_GIVEN
    schema = {"name": "output", "schema": params.constraint.json_schema, "strict": True}
    return {"type": "json_schema", "json_schema": schema}
