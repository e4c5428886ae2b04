"""`/v1/chat/completions` and `/v1/completions` over GenerationService.

An OpenAI request becomes one GenerateRequest per choice (`n`, with consecutive seeds) and per
prompt; their results and stream events come back in OpenAI's shapes, with reasoning inside
`<think>` as `reasoning_content`. genmesh has no raw-prompt mode yet, so a legacy completion's
prompt is a user message, templated by the model's chat template like a chat.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from genmesh.edge import errors
from genmesh.edge.mesh import Caller, Indexed, Mesh, Prefetched, prefetch, unless_disconnected
from genmesh.edge.openai.common import (
    INT32_MAX,
    INT64_MAX,
    INT64_MIN,
    CallerDep,
    MeshDep,
    OpenAIRequest,
    SettingsDep,
    binding_and_model,
    dumps,
    event_stream,
    fit,
    now,
    reject_unsupported,
    routed_id,
)
from genmesh.v1 import common_pb2

router = APIRouter()
# How long a stream's HTTP response waits for the first event: a refusal by then (a bad
# parameter, an unknown model, a full queue) is an HTTP status; after it the SSE headers and
# pings go out, so a long queue or prompt neither looks dead to a proxy nor hides a client
# that left, and a later failure is an error event.
FIRST_EVENT_GRACE_SECONDS = 1.0
ROLES = {
    "system": common_pb2.INPUT_ROLE_SYSTEM_CONTEXT,
    "developer": common_pb2.INPUT_ROLE_SYSTEM_CONTEXT,
    "user": common_pb2.INPUT_ROLE_USER_PROMPT,
    "assistant": common_pb2.INPUT_ROLE_ASSISTANT_REPLY,
}
FINISH = {common_pb2.FINISH_REASON_LENGTH: "length"}


class StreamOptions(OpenAIRequest):
    include_usage: bool = False


class TextRequest(OpenAIRequest):
    """What chat and legacy completions share: sampling, stops, choices, streaming."""

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    n: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | int | None = None
    # genmesh's own, sent with the OpenAI SDK's `extra_body`.
    personality: str = ""
    top_k: int | None = Field(default=None, ge=0, le=INT32_MAX)
    repetition_penalty: float | None = Field(default=None, gt=0)

    def unsupported(self) -> dict[str, Any]:
        return {
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "logit_bias": self.logit_bias,
            "logprobs": self.logprobs,
        }

    def budget(self) -> int | None:
        return self.max_tokens

    def seeds(self) -> list[int | None]:
        """One seed per choice: distinct, so that several choices differ."""
        count = self.n or 1
        if count == 1:
            return [self.seed]
        base = self.seed if self.seed is not None else secrets.randbelow(1 << 31)
        # Wrapped within int64, so that a seed near the top still gives distinct seeds.
        return [(base + i - INT64_MIN) % 2**64 + INT64_MIN for i in range(count)]

    def requests(
        self,
        prompts: Sequence[list[common_pb2.InputItem]],
        request_id: str,
        aliases: Mapping[str, str],
        max_choices: int,
    ) -> list[common_pb2.GenerateRequest]:
        """One request per prompt and choice, at most `max_choices` of them."""
        if len(prompts) * (self.n or 1) > max_choices:
            param = "n" if len(prompts) == 1 else "prompt"
            limit = f"at most {max_choices} choices in all (prompts times n)"
            raise errors.invalid(param, f"{param}: {limit}")
        if self.stream_options is not None and not self.stream:
            raise errors.invalid("stream_options", "stream_options: only allowed with stream")
        binding, model = binding_and_model(self.model, aliases)
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        with errors.out_of_range():
            requests = self._build(prompts, binding, model, stop)
        for index, request in enumerate(requests):
            request.request_id = routed_id(request_id, index, len(requests))
        return requests

    def _build(
        self,
        prompts: Sequence[list[common_pb2.InputItem]],
        binding: str,
        model: str,
        stop: list[str],
    ) -> list[common_pb2.GenerateRequest]:
        return [
            common_pb2.GenerateRequest(
                task=common_pb2.TASK_TEXT,
                binding=binding,
                model=model,
                personality=self.personality,
                inputs=inputs,
                text=common_pb2.TextParameters(
                    max_tokens=self.budget(),
                    temperature=self.temperature,
                    top_p=self.top_p,
                    top_k=self.top_k,
                    repeat_penalty=self.repetition_penalty,
                    seed=seed,
                    stop=stop,
                ),
            )
            for inputs in prompts
            for seed in self.seeds()
        ]


class TextPart(OpenAIRequest):
    type: Literal["text"]
    text: str


class ImageUrl(OpenAIRequest):
    url: str = Field(min_length=1)


class ImagePart(OpenAIRequest):
    type: Literal["image_url"]
    image_url: ImageUrl


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Part] | None = None
    tool_calls: list[Any] | None = None
    function_call: Any = None


class ResponseFormat(OpenAIRequest):
    type: str


class ChatRequest(TextRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    top_logprobs: int | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None

    def unsupported(self) -> dict[str, Any]:
        text_only = self.response_format is None or self.response_format.type == "text"
        return {
            **super().unsupported(),
            "tools": self.tools,
            "tool_choice": None if self.tool_choice == "none" else self.tool_choice,
            "functions": self.functions,
            "function_call": None if self.function_call == "none" else self.function_call,
            "top_logprobs": self.top_logprobs,
            "response_format": None if text_only else self.response_format,
            "modalities": None if self.modalities in (None, ["text"]) else self.modalities,
            "audio": self.audio,
            "prediction": self.prediction,
        }

    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def inputs(self) -> tuple[list[common_pb2.InputItem], list[str]]:
        """The messages as typed inputs, with the message each input came from."""
        inputs: list[common_pb2.InputItem] = []
        params: list[str] = []
        for index, message in enumerate(self.messages):
            at = f"messages[{index}]"
            if message.role not in ROLES:
                raise errors.unsupported(f"{at}.role", f"'{message.role}' is not supported yet")
            if message.tool_calls or message.function_call:
                raise errors.unsupported(f"{at}.tool_calls")
            parts = message.content if isinstance(message.content, list) else []
            texts = [p.text for p in parts if isinstance(p, TextPart)]
            text = message.content if isinstance(message.content, str) else "\n".join(texts)
            inputs.append(
                common_pb2.InputItem(
                    kind=common_pb2.CONTENT_KIND_TEXT, role=ROLES[message.role], text=text
                )
            )
            params.append(at)
            for part in parts:
                if isinstance(part, ImagePart):
                    inputs.append(
                        common_pb2.InputItem(
                            kind=common_pb2.CONTENT_KIND_IMAGE,
                            role=common_pb2.INPUT_ROLE_INPUT_IMAGE,
                            uri=part.image_url.url,
                        )
                    )
                    params.append(f"{at}.content")
        return inputs, params


class CompletionRequest(TextRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def unsupported(self) -> dict[str, Any]:
        return {
            **super().unsupported(),
            "suffix": self.suffix,
            "best_of": None if self.best_of == 1 else self.best_of,
        }

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise errors.unsupported("prompt", "must be a string or a list of strings for now")
        return [p for p in prompts if isinstance(p, str)]


def finish_reason(response: common_pb2.GenerateResponse) -> str:
    """stop, length, or the error a generation that did not finish stands for."""
    failed = errors.unfinished(response)
    if failed:
        raise failed
    return FINISH.get(response.finish_reason, "stop")


@dataclass
class Reply(ABC):
    """One OpenAI response to requests[i] (choice i), whole or as stream chunks."""

    obj: ClassVar[str]
    chunk_obj: ClassVar[str]
    id: str
    model: str
    # The prompt each choice answers (its tokens are counted once however many choices).
    prompt_of: list[int]
    created: int = field(default_factory=now)

    def envelope(
        self, choices: list[dict[str, Any]], obj: str, usage: dict[str, int] | None = None
    ) -> dict[str, Any]:
        body = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        return {**body, "usage": usage} if usage is not None else body

    def usage(self, responses: dict[int, common_pb2.GenerateResponse]) -> dict[str, int]:
        prompts = {self.prompt_of[i]: r.usage.prompt_tokens for i, r in responses.items()}
        prompt = sum(prompts.values())
        completion = sum(r.usage.completion_tokens for r in responses.values())
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def result(self, responses: list[common_pb2.GenerateResponse]) -> dict[str, Any]:
        choices = [
            self.choice(i, r.outputs[0] if r.outputs else common_pb2.OutputItem(), finish_reason(r))
            for i, r in enumerate(responses)
        ]
        return self.envelope(choices, self.obj, self.usage(dict(enumerate(responses))))

    async def chunks(
        self, events: Prefetched[Indexed], include_usage: bool, params: errors.Params
    ) -> AsyncGenerator[str, None]:
        """Stream chunks, a final one per choice with its finish_reason, the usage if asked,
        then `[DONE]`; a failure mid-stream is an error event, as OpenAI sends it."""
        finals: dict[int, common_pb2.GenerateResponse] = {}
        try:
            for index in range(len(self.prompt_of)):
                opening = self.opening(index)
                if opening:
                    yield dumps(self.envelope([opening], self.chunk_obj))
            async for index, event in events:
                kind = event.WhichOneof("event")
                if kind == "text_delta" and (event.text_delta.text or event.text_delta.thoughts):
                    delta = self.delta(index, event.text_delta.text, event.text_delta.thoughts)
                    yield dumps(self.envelope([delta], self.chunk_obj))
                elif kind == "final":
                    finals[index] = event.final
                    done = self.finish(index, finish_reason(event.final))
                    yield dumps(self.envelope([done], self.chunk_obj))
            if include_usage:
                yield dumps(self.envelope([], self.chunk_obj, self.usage(finals)))
            yield "[DONE]"
        except grpc.aio.AioRpcError as error:
            yield dumps(errors.from_rpc(error, params).body())
        except errors.OpenAIError as error:
            yield dumps(error.body())
        finally:
            await events.aclose()

    @abstractmethod
    def choice(self, index: int, output: common_pb2.OutputItem, reason: str) -> dict[str, Any]:
        """A whole choice."""

    @abstractmethod
    def opening(self, index: int) -> dict[str, Any] | None:
        """The chunk a streamed choice starts with, if any."""

    @abstractmethod
    def delta(self, index: int, text: str, thoughts: str) -> dict[str, Any]:
        """A chunk of new text."""

    @abstractmethod
    def finish(self, index: int, reason: str) -> dict[str, Any]:
        """The chunk that ends a streamed choice."""


def _with_thoughts(message: dict[str, Any], thoughts: str) -> dict[str, Any]:
    return {**message, "reasoning_content": thoughts} if thoughts else message


class ChatReply(Reply):
    obj = "chat.completion"
    chunk_obj = "chat.completion.chunk"

    def choice(self, index: int, output: common_pb2.OutputItem, reason: str) -> dict[str, Any]:
        message = _with_thoughts({"role": "assistant", "content": output.text}, output.thoughts)
        return {"index": index, "message": message, "finish_reason": reason, "logprobs": None}

    def opening(self, index: int) -> dict[str, Any] | None:
        delta = {"role": "assistant", "content": ""}
        return {"index": index, "delta": delta, "finish_reason": None, "logprobs": None}

    def delta(self, index: int, text: str, thoughts: str) -> dict[str, Any]:
        delta = _with_thoughts({"content": text}, thoughts)
        return {"index": index, "delta": delta, "finish_reason": None, "logprobs": None}

    def finish(self, index: int, reason: str) -> dict[str, Any]:
        return {"index": index, "delta": {}, "finish_reason": reason, "logprobs": None}


@dataclass
class CompletionReply(Reply):
    obj = "text_completion"
    chunk_obj = "text_completion"
    # The prompt each choice starts with when the request asked for an echo.
    echoes: list[str] = field(default_factory=list)

    def _choice(self, index: int, text: str, reason: str | None) -> dict[str, Any]:
        return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}

    def choice(self, index: int, output: common_pb2.OutputItem, reason: str) -> dict[str, Any]:
        echo = self.echoes[index] if self.echoes else ""
        return self._choice(index, echo + output.text, reason)

    def opening(self, index: int) -> dict[str, Any] | None:
        return self._choice(index, self.echoes[index], None) if self.echoes else None

    def delta(self, index: int, text: str, thoughts: str) -> dict[str, Any]:
        return self._choice(index, text, None)

    def finish(self, index: int, reason: str) -> dict[str, Any]:
        return self._choice(index, "", reason)


async def respond(
    reply: Reply,
    body: TextRequest,
    requests: list[common_pb2.GenerateRequest],
    params: errors.Params,
    http: Request,
    mesh: Mesh,
    caller: Caller,
) -> Response:
    fit(requests, mesh, params)
    with errors.translated(params):
        if body.stream:
            opened = mesh.open_streams(requests, caller)
            events = await prefetch(http, opened, FIRST_EVENT_GRACE_SECONDS)
            usage = body.stream_options is not None and body.stream_options.include_usage
            return event_stream(reply.chunks(events, usage, params), events)
        responses = await unless_disconnected(http, mesh.generate_all(requests, caller))
    return JSONResponse(reply.result(responses))


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatRequest, http: Request, mesh: MeshDep, caller: CallerDep, settings: SettingsDep
) -> Response:
    reject_unsupported(body.unsupported())
    inputs, fields = body.inputs()
    requests = body.requests(
        [inputs], caller.request_id, settings.aliases("chat"), settings.max_choices
    )
    params = errors.Params(fields, "messages", errors.TEXT_PARAMS.renames)
    reply = ChatReply(f"chatcmpl-{caller.request_id}", body.model, [0] * len(requests))
    return await respond(reply, body, requests, params, http, mesh, caller)


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest, http: Request, mesh: MeshDep, caller: CallerDep, settings: SettingsDep
) -> Response:
    reject_unsupported(body.unsupported())
    prompts = body.prompts()
    user = common_pb2.INPUT_ROLE_USER_PROMPT
    items = [
        [common_pb2.InputItem(kind=common_pb2.CONTENT_KIND_TEXT, role=user, text=p)]
        for p in prompts
    ]
    requests = body.requests(
        items, caller.request_id, settings.aliases("chat"), settings.max_choices
    )
    choices = len(requests) // len(prompts)
    prompt_of = [i // choices for i in range(len(requests))]
    echoes = [prompts[p] for p in prompt_of] if body.echo else []
    params = errors.Params((), "prompt", errors.TEXT_PARAMS.renames)
    reply = CompletionReply(f"cmpl-{caller.request_id}", body.model, prompt_of, echoes=echoes)
    return await respond(reply, body, requests, params, http, mesh, caller)
