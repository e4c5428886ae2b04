"""`/v1/chat/completions` and `/v1/completions` over GenerationService.

An OpenAI request becomes one GenerateRequest per prompt, carrying the request's `n`: the
engine runs the choices and numbers them (OutputItem.index, TextDelta.index), so each choice's
deltas, tool calls and logprobs arrive under its own index, the prompt's tokens are counted
once, the request waits at one admission point (all its choices are admitted or none), and one
cancellation stops every choice. `response_format` becomes an output constraint, `tools` tool
definitions; tool calls and logprobs come back in OpenAI's shapes, and reasoning inside `<think>`
as `reasoning_content`. genmesh has no raw-prompt mode yet, so a legacy completion's prompt is a
user message, templated by the model's chat template like a chat.
"""

from __future__ import annotations

import codecs
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, cast

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field, StrictFloat, StrictInt

from genmesh.edge import errors
from genmesh.edge.mesh import Caller, Indexed, Mesh, Prefetched, prefetch, unless_disconnected
from genmesh.edge.openai.common import (
    INT32_MAX,
    INT64_MAX,
    CallerDep,
    Count,
    MeshDep,
    Natural,
    OpenAIRequest,
    Seed,
    SettingsDep,
    binding_and_model,
    dumps,
    event_stream,
    fit,
    now,
    reject_unsupported,
    routed_id,
)
from genmesh.runtime import values
from genmesh.v1 import common_pb2, tokenizer_pb2, tokenizer_pb2_grpc

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
    "tool": common_pb2.INPUT_ROLE_TOOL_RESULT,
}
FINISH = {
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
}
Mode = common_pb2.ToolChoice.Mode
TOOL_MODES = {"none": Mode.MODE_NONE, "auto": Mode.MODE_AUTO, "required": Mode.MODE_REQUIRED}
# The most alternatives per token the engines return.
MAX_TOP_LOGPROBS = 20
# The logprobs of generated tokens, in order.
Logprobs = Sequence[common_pb2.TokenLogprob]
UTF8 = codecs.getincrementaldecoder("utf-8")


class StreamOptions(OpenAIRequest):
    include_usage: bool = False


class TextRequest(OpenAIRequest):
    """What chat and legacy completions share: sampling, stops, choices, streaming."""

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    max_tokens: Count | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: Seed | None = None
    n: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    # Strict: true is no bias.
    logit_bias: dict[str, StrictFloat] | None = None
    # genmesh's own, sent with the OpenAI SDK's `extra_body`.
    personality: str = ""
    top_k: Natural | None = None
    repetition_penalty: float | None = Field(default=None, gt=0)
    # vLLM's: no end of text before min_tokens, or none at all.
    min_tokens: Natural | None = None
    ignore_eos: bool | None = None

    def unsupported(self) -> dict[str, Any]:
        return {}

    def bias(self) -> dict[int, float]:
        """`logit_bias` by token id (OpenAI's keys are the ids as strings)."""
        bias = {}
        for key, value in (self.logit_bias or {}).items():
            # One spelling per id, so that "007" and "7" cannot both bias token 7.
            canonical = key.isascii() and key.isdigit() and key == str(int(key[:11]))
            if not canonical or int(key) > INT32_MAX:
                raise errors.invalid("logit_bias", f"logit_bias: {key[:40]!r} is no token id")
            bias[int(key)] = value
        return bias

    def budget(self) -> int | None:
        return self.max_tokens

    def choices(self) -> int:
        return self.n or 1

    def requests(
        self,
        prompts: Sequence[list[common_pb2.InputItem]],
        request_id: str,
        aliases: Mapping[str, str],
        max_choices: int,
    ) -> list[common_pb2.GenerateRequest]:
        """One request per prompt, each asking for `n` choices, at most `max_choices` in all."""
        if len(prompts) * self.choices() > max_choices:
            param = "n" if len(prompts) == 1 else "prompt"
            limit = f"at most {max_choices} choices in all (prompts times n)"
            raise errors.invalid(param, f"{param}: {limit}")
        if self.stream_options is not None and not self.stream:
            raise errors.invalid("stream_options", "stream_options: only allowed with stream")
        if self.seed is not None and self.seed + self.choices() - 1 > INT64_MAX:
            # Choice i samples with seed + i, which must stay a 64-bit integer.
            raise errors.invalid("seed", f"seed: at most {INT64_MAX - self.choices() + 1} with n")
        binding, model = binding_and_model(self.model, aliases)
        with errors.out_of_range():
            parameters = self.parameters()
        with errors.out_of_range("model"):
            shared = common_pb2.GenerateRequest(
                task=common_pb2.TASK_TEXT, binding=binding, model=model, text=parameters
            )
        with errors.out_of_range("personality"):
            shared.personality = self.personality
        requests = []
        for index, inputs in enumerate(prompts):
            request = common_pb2.GenerateRequest()
            request.CopyFrom(shared)
            request.inputs.extend(inputs)
            request.request_id = routed_id(request_id, index, len(prompts))
            requests.append(request)
        return requests

    def parameters(self) -> common_pb2.TextParameters:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        return common_pb2.TextParameters(
            max_tokens=self.budget(),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repeat_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=self.bias(),
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            seed=self.seed,
            stop=stop,
            n=self.n,
        )


class TextPart(OpenAIRequest):
    type: Literal["text"]
    text: str


class ImageUrl(OpenAIRequest):
    url: str = Field(min_length=1)


class ImagePart(OpenAIRequest):
    type: Literal["image_url"]
    image_url: ImageUrl


class RefusalPart(OpenAIRequest):
    type: Literal["refusal"]
    refusal: str


Part = Annotated[TextPart | ImagePart | RefusalPart, Field(discriminator="type")]


class FunctionCall(OpenAIRequest):
    name: str = Field(min_length=1)
    arguments: str


class ToolCallParam(OpenAIRequest):
    """A call an earlier assistant reply made, as the client sends it back."""

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Part] | None = None
    tool_calls: list[ToolCallParam] | None = None
    tool_call_id: str | None = None
    function_call: Any = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = self.content or []
        texts = [
            p.text if isinstance(p, TextPart) else p.refusal
            for p in parts
            if not isinstance(p, ImagePart)
        ]
        return "\n".join(texts)

    def images(self) -> list[ImagePart]:
        parts = self.content if isinstance(self.content, list) else []
        return [p for p in parts if isinstance(p, ImagePart)]

    def item(self) -> common_pb2.InputItem:
        """The message's text and tool calls as one input (raises ValueError for a string
        protobuf cannot carry)."""
        item = common_pb2.InputItem(kind=common_pb2.CONTENT_KIND_TEXT, role=ROLES[self.role])
        if self.role == "tool":
            item.tool_call_id = self.tool_call_id or ""
        calls = [
            common_pb2.ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
            for c in self.tool_calls or ()
        ]
        item.tool_calls.extend(calls)
        text = self.text()
        if text or not calls:
            item.text = text
        return item


class JsonSchemaFormat(OpenAIRequest):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    # The output always satisfies the schema, strict or not.
    strict: bool | None = None


class ResponseFormat(OpenAIRequest):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(OpenAIRequest):
    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] | None = None
    # Arguments always satisfy the parameters' schema, strict or not.
    strict: bool | None = None


class ToolDefinition(OpenAIRequest):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(OpenAIRequest):
    name: str = Field(min_length=1)


class NamedToolChoice(OpenAIRequest):
    type: Literal["function"]
    function: NamedFunction


class ChatRequest(TextRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Count | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None

    def unsupported(self) -> dict[str, Any]:
        return {
            **super().unsupported(),
            "functions": self.functions,
            "function_call": None if self.function_call == "none" else self.function_call,
            "modalities": None if self.modalities in (None, ["text"]) else self.modalities,
            "audio": self.audio,
            "prediction": self.prediction,
        }

    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def parameters(self) -> common_pb2.TextParameters:
        parameters = super().parameters()
        parameters.logprobs = bool(self.logprobs)
        parameters.top_logprobs = self.top_logprobs or 0
        constraint = self.constraint()
        if constraint is not None:
            parameters.constraint.CopyFrom(constraint)
        if self.tools:
            parameters.tools.extend(self.tool_definitions())
            parameters.tool_choice.CopyFrom(self.choice_of_tool())
            if self.parallel_tool_calls is not None:
                parameters.parallel_tool_calls = self.parallel_tool_calls
        elif self.tool_choice not in (None, "none", "auto"):
            raise errors.invalid("tool_choice", "tool_choice: only allowed with tools")
        return parameters

    def constraint(self) -> common_pb2.OutputConstraint | None:
        """json_object: any JSON object; json_schema: its schema (an object when it has none)."""
        form = self.response_format
        if form is None or form.type == "text":
            return None
        schema: dict[str, Any] = {"type": "object"}
        if form.type == "json_schema":
            if form.json_schema is None:
                message = "response_format.json_schema: required with type json_schema"
                raise errors.invalid("response_format.json_schema", message)
            if form.json_schema.schema_ is not None:
                schema = form.json_schema.schema_
        constraint = common_pb2.OutputConstraint()
        with errors.out_of_range("response_format"):
            where = "response_format.json_schema.schema"
            constraint.json_schema.CopyFrom(values.struct_from_py(schema, where))
        constraint.json_schema.SetInParent()
        return constraint

    def tool_definitions(self) -> list[common_pb2.Tool]:
        definitions = []
        for index, tool in enumerate(self.tools or ()):
            function = tool.function
            definition = common_pb2.Tool(name=function.name, description=function.description)
            if function.parameters:
                where = f"tools[{index}].function.parameters"
                with errors.out_of_range(where):
                    definition.parameters.CopyFrom(
                        values.struct_from_py(function.parameters, where)
                    )
            definitions.append(definition)
        return definitions

    def choice_of_tool(self) -> common_pb2.ToolChoice:
        if isinstance(self.tool_choice, NamedToolChoice):
            return common_pb2.ToolChoice(mode=Mode.MODE_NAMED, name=self.tool_choice.function.name)
        return common_pb2.ToolChoice(mode=TOOL_MODES[self.tool_choice or "auto"])

    def inputs(self) -> tuple[list[common_pb2.InputItem], list[str]]:
        """The messages as typed inputs, with the message each input came from."""
        inputs: list[common_pb2.InputItem] = []
        params: list[str] = []
        for index, message in enumerate(self.messages):
            at = f"messages[{index}]"
            if message.role not in ROLES:
                raise errors.unsupported(f"{at}.role", f"'{message.role}' is not supported")
            if message.function_call:
                raise errors.unsupported(f"{at}.function_call", "is not supported: use tool_calls")
            if message.tool_calls and message.role != "assistant":
                raise errors.invalid(f"{at}.tool_calls", "only assistant messages make tool calls")
            if message.role == "tool" and not message.tool_call_id:
                raise errors.invalid(f"{at}.tool_call_id", "tool messages name their call")
            if message.content is None and message.role != "assistant":
                raise errors.invalid(f"{at}.content", f"{at}.content: required for this role")
            with errors.out_of_range(at):
                inputs.append(message.item())
            params.append(at)
            images = message.images()
            if images and message.role == "tool":
                raise errors.unsupported(f"{at}.content", "holds no images in tool results")
            for part in images:
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
    # Strict: JSON's true and false are no token ids.
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)
    # The number of alternatives to return per token (0: the sampled token's logprob alone).
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def unsupported(self) -> dict[str, Any]:
        return {
            **super().unsupported(),
            "suffix": self.suffix,
            "best_of": None if self.best_of == 1 else self.best_of,
        }

    def parameters(self) -> common_pb2.TextParameters:
        """A legacy completion continues its prompt as written, as vLLM's and llama.cpp's do:
        no chat template around it."""
        parameters = super().parameters()
        parameters.logprobs = self.logprobs is not None
        parameters.top_logprobs = self.logprobs or 0
        parameters.raw_prompt = True
        # An echoed prompt's logprobs are the prompt's scores.
        parameters.prompt_logprobs = self.echo and self.logprobs is not None
        return parameters

    def prompts(self) -> list[str | list[int]]:
        """Strings, or token arrays (ids of the model's own vocabulary, as lm-eval sends)."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and all(isinstance(t, int) for t in prompt)):
            return [cast("str | list[int]", prompt)]
        if not prompt or any(isinstance(p, list) and not p for p in prompt):
            raise errors.unsupported("prompt", "must not be empty")
        return cast("list[str | list[int]]", list(prompt))


def check_finished(response: common_pb2.GenerateResponse) -> None:
    """The error a generation that did not finish stands for, raised."""
    failed = errors.unfinished(response)
    if failed:
        raise failed


def finish_reason(output: common_pb2.OutputItem, response: common_pb2.GenerateResponse) -> str:
    """stop, length or tool_calls: the choice's own reason (else the response's)."""
    return FINISH.get(output.finish_reason or response.finish_reason, "stop")


def alternative(entry: common_pb2.TokenAlternative | common_pb2.TokenLogprob) -> dict[str, Any]:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes)}


def chat_logprobs(entries: Iterable[common_pb2.TokenLogprob]) -> dict[str, Any]:
    """OpenAI's `logprobs` of a chat choice or chunk."""
    content = [
        {**alternative(e), "top_logprobs": [alternative(a) for a in e.top_logprobs]}
        for e in entries
    ]
    return {"content": content, "refusal": None}


@dataclass
class Reply(ABC):
    """One OpenAI response to `calls` requests of `per_call` choices each (choice j of request
    i is choice i * per_call + j), whole or as stream chunks."""

    obj: ClassVar[str]
    chunk_obj: ClassVar[str]
    id: str
    model: str
    calls: int
    per_call: int
    logprobs: bool = False
    created: int = field(default_factory=now)

    def index(self, call: int, choice: int) -> int:
        return call * self.per_call + choice

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

    def usage(self, responses: Iterable[common_pb2.GenerateResponse]) -> dict[str, int]:
        answered = list(responses)
        prompt = sum(r.usage.prompt_tokens for r in answered)
        completion = sum(r.usage.completion_tokens for r in answered)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def result(self, responses: list[common_pb2.GenerateResponse]) -> dict[str, Any]:
        choices = []
        for call, response in enumerate(responses):
            check_finished(response)
            for output in response.outputs:
                index = self.index(call, output.index)
                choices.append(self.choice(index, output, finish_reason(output, response)))
        choices.sort(key=lambda c: int(c["index"]))
        return self.envelope(choices, self.obj, self.usage(responses))

    async def chunks(
        self, events: Prefetched[Indexed], include_usage: bool, params: errors.Params
    ) -> AsyncGenerator[str, None]:
        """Stream chunks, a final one per choice with its finish_reason, the usage if asked,
        then `[DONE]`; a failure mid-stream is an error event, as OpenAI sends it."""
        finals: list[common_pb2.GenerateResponse] = []
        try:
            for index in range(self.calls * self.per_call):
                opening = self.opening(index)
                if opening:
                    yield dumps(self.envelope([opening], self.chunk_obj))
            async for call, event in events:
                for chunk in self.translate(call, event):
                    yield dumps(self.envelope([chunk], self.chunk_obj))
                if event.WhichOneof("event") == "final":
                    finals.append(event.final)
            if include_usage:
                yield dumps(self.envelope([], self.chunk_obj, self.usage(finals)))
            yield "[DONE]"
        except grpc.aio.AioRpcError as error:
            yield dumps(errors.from_rpc(error, params).body())
        except errors.OpenAIError as error:
            yield dumps(error.body())
        finally:
            await events.aclose()

    def translate(self, call: int, event: common_pb2.StreamEvent) -> list[dict[str, Any]]:
        """The chunks one event of request `call` makes."""
        kind = event.WhichOneof("event")
        if kind == "text_delta":
            delta = event.text_delta
            chunks = self.scored(call, delta.prompt_logprobs)
            if delta.text or delta.thoughts or delta.logprobs:
                index = self.index(call, delta.index)
                chunks.append(self.delta(index, delta.text, delta.thoughts, delta.logprobs))
            return chunks
        elif kind == "tool_call_delta":
            piece = event.tool_call_delta
            made = self.tool_call(self.index(call, piece.index), piece)
            return [made] if made else []
        elif kind == "final":
            final = event.final
            check_finished(final)
            scores = final.outputs[0].prompt_logprobs if final.outputs else ()
            return self.scored(call, scores) + [
                self.finish(self.index(call, o.index), finish_reason(o, final))
                for o in final.outputs
            ]
        return []

    def scored(self, call: int, scores: Logprobs) -> list[dict[str, Any]]:
        """The chunks a stream opens request `call`'s choices with once its prompt is scored
        (a final event of a request whose scores came on no delta opens them too)."""
        return []

    @abstractmethod
    def choice(self, index: int, output: common_pb2.OutputItem, reason: str) -> dict[str, Any]:
        """A whole choice."""

    @abstractmethod
    def opening(self, index: int) -> dict[str, Any] | None:
        """The chunk a streamed choice starts with, if any."""

    @abstractmethod
    def delta(self, index: int, text: str, thoughts: str, logprobs: Logprobs) -> dict[str, Any]:
        """A chunk of new text, with its tokens' logprobs."""

    @abstractmethod
    def tool_call(self, index: int, piece: common_pb2.ToolCallDelta) -> dict[str, Any] | None:
        """A chunk of a tool call, if the endpoint has them."""

    @abstractmethod
    def finish(self, index: int, reason: str) -> dict[str, Any]:
        """The chunk that ends a streamed choice."""


def _with_thoughts(message: dict[str, Any], thoughts: str) -> dict[str, Any]:
    return {**message, "reasoning_content": thoughts} if thoughts else message


class ChatReply(Reply):
    obj = "chat.completion"
    chunk_obj = "chat.completion.chunk"

    def _logprobs(self, entries: Iterable[common_pb2.TokenLogprob]) -> dict[str, Any] | None:
        return chat_logprobs(entries) if self.logprobs else None

    def choice(self, index: int, output: common_pb2.OutputItem, reason: str) -> dict[str, Any]:
        calls = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in output.tool_calls
        ]
        # A reply that only calls tools has no content, as OpenAI's.
        content = output.text if output.text or not calls else None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return {
            "index": index,
            "message": _with_thoughts(message, output.thoughts),
            "finish_reason": reason,
            "logprobs": self._logprobs(output.logprobs),
        }

    def opening(self, index: int) -> dict[str, Any] | None:
        delta = {"role": "assistant", "content": ""}
        return {"index": index, "delta": delta, "finish_reason": None, "logprobs": None}

    def delta(self, index: int, text: str, thoughts: str, logprobs: Logprobs) -> dict[str, Any]:
        delta = _with_thoughts({"content": text}, thoughts)
        return {
            "index": index,
            "delta": delta,
            "finish_reason": None,
            "logprobs": self._logprobs(logprobs),
        }

    def tool_call(self, index: int, piece: common_pb2.ToolCallDelta) -> dict[str, Any] | None:
        """OpenAI's shape: a call's first delta has its index, id, type and name (and any
        arguments so far), the next ones its index and argument fragments."""
        call: dict[str, Any] = {"index": piece.call_index}
        if piece.id:
            call["id"] = piece.id
            call["type"] = "function"
            call["function"] = {"name": piece.name, "arguments": piece.arguments}
        else:
            call["function"] = {"arguments": piece.arguments}
        delta = {"tool_calls": [call]}
        return {"index": index, "delta": delta, "finish_reason": None, "logprobs": None}

    def finish(self, index: int, reason: str) -> dict[str, Any]:
        return {"index": index, "delta": {}, "finish_reason": reason, "logprobs": None}


@dataclass
class CompletionReply(Reply):
    obj = "text_completion"
    chunk_obj = "text_completion"
    # The prompt each choice starts with when the request asked for an echo.
    echoes: list[str] = field(default_factory=list)
    # Where each choice's next token starts in its text (legacy `text_offset`), and the bytes
    # of a character its tokens so far have only begun.
    offsets: dict[int, int] = field(default_factory=dict)
    begun: dict[int, codecs.IncrementalDecoder] = field(default_factory=dict)
    # Each request's prompt scores, which its first choice carries for all of them.
    scores: dict[int, Logprobs] = field(default_factory=dict)
    # The requests whose streamed choices have opened with their scored prompt.
    opened: set[int] = field(default_factory=set)

    def _choice(
        self, index: int, text: str, reason: str | None, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {"index": index, "text": text, "finish_reason": reason, "logprobs": logprobs}

    def _echo(self, index: int) -> str:
        return self.echoes[index] if self.echoes else ""

    def _logprobs(
        self, index: int, entries: Logprobs, prompt: Logprobs = ()
    ) -> dict[str, Any] | None:
        """The legacy shape: tokens, their logprobs, their alternatives by token, and where
        each starts in the choice's text (after an echoed prompt, or from its start with the
        prompt's own tokens first: the first has no logprob, as nothing predicts it). Offsets
        count characters of the text, which a token may begin or end mid-way: byte-level
        tokens of an emoji are each shown as U+FFFD."""
        if not self.logprobs:
            return None
        offset = self.offsets.get(index, 0 if prompt else len(self._echo(index)))
        starts = []
        # The prompt's text and the output's were decoded apart (a character the prompt's ids
        # leave unfinished shows as U+FFFD in both): so are their tokens here.
        echoed = UTF8(errors="replace")
        for entry in prompt:
            starts.append(offset)
            offset += len(echoed.decode(entry.bytes))
        offset += len(echoed.decode(b"", final=True))
        decoder = self.begun.setdefault(index, UTF8(errors="replace"))
        for entry in entries:
            starts.append(offset)
            offset += len(decoder.decode(entry.bytes))
        self.offsets[index] = offset
        every = [*prompt, *entries]
        unpredicted = 1 if prompt else 0
        return {
            "tokens": [e.token for e in every],
            "token_logprobs": [None] * unpredicted + [e.logprob for e in every[unpredicted:]],
            "top_logprobs": [None] * unpredicted
            + [{a.token: a.logprob for a in e.top_logprobs} for e in every[unpredicted:]],
            "text_offset": starts,
        }

    def choice(self, index: int, output: common_pb2.OutputItem, reason: str) -> dict[str, Any]:
        call = index // self.per_call
        if output.prompt_logprobs:
            self.scores[call] = output.prompt_logprobs
        prompt = self.scores.get(call, ()) if self.echoes else ()
        logprobs = self._logprobs(index, output.logprobs, prompt)
        return self._choice(index, self._echo(index) + output.text, reason, logprobs)

    def opening(self, index: int) -> dict[str, Any] | None:
        """An echo opens with the prompt; with logprobs, once the prompt is scored (`scored`),
        as vLLM's stream does."""
        if not self.echoes or self.logprobs:
            return None
        return self._choice(index, self.echoes[index], None)

    def scored(self, call: int, scores: Logprobs) -> list[dict[str, Any]]:
        if not (self.echoes and self.logprobs) or call in self.opened:
            return []
        self.opened.add(call)
        return [
            self._choice(index, self.echoes[index], None, self._logprobs(index, (), scores))
            for index in range(self.index(call, 0), self.index(call + 1, 0))
        ]

    def delta(self, index: int, text: str, thoughts: str, logprobs: Logprobs) -> dict[str, Any]:
        return self._choice(index, text, None, self._logprobs(index, logprobs))

    def tool_call(self, index: int, piece: common_pb2.ToolCallDelta) -> dict[str, Any] | None:
        return None

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
    params = errors.Params(
        fields, "messages", errors.TEXT_PARAMS.renames, errors.TEXT_PARAMS.patterns
    )
    reply = ChatReply(
        f"chatcmpl-{caller.request_id}", body.model, 1, body.choices(), bool(body.logprobs)
    )
    return await respond(reply, body, requests, params, http, mesh, caller)


def prompt_item(prompt: str | list[int]) -> common_pb2.InputItem:
    item = common_pb2.InputItem(
        kind=common_pb2.CONTENT_KIND_TEXT, role=common_pb2.INPUT_ROLE_USER_PROMPT
    )
    if isinstance(prompt, str):
        item.text = prompt
    else:
        item.tokens.ids.extend(prompt)
    return item


async def prompt_text(
    prompt: str | list[int], request: common_pb2.GenerateRequest, mesh: Mesh, caller: Caller
) -> str:
    """What an echo shows of a prompt: its text, or the text of its token ids."""
    if isinstance(prompt, str):
        return prompt
    detokenize = tokenizer_pb2.DetokenizeRequest(
        binding=request.binding, model=request.model, tokens=prompt
    )
    stub = tokenizer_pb2_grpc.TokenizerServiceStub(mesh.channel)
    with errors.translated(errors.COMPLETION_PARAMS):
        answer = await stub.Detokenize(detokenize, metadata=caller.metadata)
    return answer.text


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest, http: Request, mesh: MeshDep, caller: CallerDep, settings: SettingsDep
) -> Response:
    reject_unsupported(body.unsupported())
    prompts = body.prompts()
    with errors.out_of_range("prompt"):
        items = [[prompt_item(p)] for p in prompts]
    requests = body.requests(
        items, caller.request_id, settings.aliases("chat"), settings.max_choices
    )
    per_call = body.choices()
    echoes = []
    if body.echo:
        texts = [await prompt_text(p, requests[0], mesh, caller) for p in prompts]
        echoes = [text for text in texts for _ in range(per_call)]
    reply = CompletionReply(
        f"cmpl-{caller.request_id}",
        body.model,
        len(prompts),
        per_call,
        body.logprobs is not None,
        echoes=echoes,
    )
    params = errors.COMPLETION_PARAMS
    return await respond(reply, body, requests, params, http, mesh, caller)
