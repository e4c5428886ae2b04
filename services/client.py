"""The typed Python clients for genmesh's public API: `Client` (asyncio, used by the CLI) and
`SyncClient` (blocking, for scripts and threads), with the same methods over the same stubs."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, ClassVar, Literal

import grpc
from google.rpc import error_details_pb2, status_pb2

from genmesh.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    program_pb2,
    tokenizer_pb2_grpc,
)

DEFAULT_ADDRESS = "127.0.0.1:50051"
# The largest answer the client takes: grpc's default of 4 MiB is less than the router may send
# (16 MiB by default), such as a long speech's audio or the tokens of a long text.
MAX_RECEIVE_BYTES = 64 * 1024 * 1024
# The content kind and input role of each kind of media a request takes as a file's bytes.
_MEDIA = {
    "audio": (common_pb2.CONTENT_KIND_AUDIO, common_pb2.INPUT_ROLE_INPUT_AUDIO),
    "image": (common_pb2.CONTENT_KIND_IMAGE, common_pb2.INPUT_ROLE_INPUT_IMAGE),
}


def key_file() -> Path:
    """Where `genmesh up` saves the local key, so the CLI finds it without configuration."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "genmesh" / "api_key"


def default_api_key() -> str | None:
    key = os.environ.get("GENMESH_API_KEY")
    if key:
        return key
    path = key_file()
    return path.read_text().strip() if path.is_file() else None


def text_request(
    prompt: str,
    *,
    binding: str = "",
    personality: str = "",
    model: str = "",
    system: str = "",
    parameters: common_pb2.TextParameters | None = None,
    request_id: str = "",
) -> common_pb2.GenerateRequest:
    inputs = []
    if system:
        inputs.append(
            common_pb2.InputItem(
                kind=common_pb2.CONTENT_KIND_TEXT,
                role=common_pb2.INPUT_ROLE_SYSTEM_CONTEXT,
                text=system,
            )
        )
    inputs.append(
        common_pb2.InputItem(
            kind=common_pb2.CONTENT_KIND_TEXT, role=common_pb2.INPUT_ROLE_USER_PROMPT, text=prompt
        )
    )
    return common_pb2.GenerateRequest(
        request_id=request_id,
        task=common_pb2.TASK_TEXT,
        binding=binding,
        personality=personality,
        model=model,
        inputs=inputs,
        text=parameters or common_pb2.TextParameters(),
    )


def json_schema(schema: dict[str, Any]) -> common_pb2.OutputConstraint:
    """A constraint: the output is JSON valid against `schema`."""
    constraint = common_pb2.OutputConstraint()
    constraint.json_schema.update(schema)
    return constraint


def tool(name: str, description: str, parameters: dict[str, Any]) -> common_pb2.Tool:
    """A function the model may call; `parameters` is the JSON schema of its arguments."""
    definition = common_pb2.Tool(name=name, description=description)
    definition.parameters.update(parameters)
    return definition


def tool_calls_item(calls: Iterable[common_pb2.ToolCall]) -> common_pb2.InputItem:
    """The history item of an assistant reply that called tools."""
    return common_pb2.InputItem(
        kind=common_pb2.CONTENT_KIND_TEXT,
        role=common_pb2.INPUT_ROLE_ASSISTANT_REPLY,
        tool_calls=calls,
    )


def tool_result(call_id: str, content: str) -> common_pb2.InputItem:
    """The answer to tool call `call_id`, for the next request's inputs."""
    return common_pb2.InputItem(
        kind=common_pb2.CONTENT_KIND_TEXT,
        role=common_pb2.INPUT_ROLE_TOOL_RESULT,
        text=content,
        tool_call_id=call_id,
    )


def with_tool_results(
    request: common_pb2.GenerateRequest,
    calls: Sequence[common_pb2.ToolCall],
    results: Sequence[str],
) -> common_pb2.GenerateRequest:
    """The next turn of a tool loop: `request` again, then the reply that made `calls` and each
    call's result, with the tool choice back to auto so that the model may answer from them."""
    follow_up = common_pb2.GenerateRequest()
    follow_up.CopyFrom(request)
    follow_up.text.tool_choice.mode = common_pb2.ToolChoice.MODE_AUTO
    follow_up.inputs.append(tool_calls_item(calls))
    follow_up.inputs.extend(
        tool_result(call.id, result) for call, result in zip(calls, results, strict=True)
    )
    return follow_up


def media_input(
    media: Literal["audio", "image"], data: bytes, mime_type: str
) -> common_pb2.InputItem:
    """Audio to transcribe or answer, or an image to edit or read: the bytes of its file."""
    kind, role = _MEDIA[media]
    return common_pb2.InputItem(kind=kind, role=role, data=data, mime_type=mime_type)


def embed_request(
    inputs: Iterable[str | Iterable[int]],
    *,
    binding: str = "",
    model: str = "",
    encoding: embedding_pb2.EmbeddingEncoding.ValueType = embedding_pb2.EMBEDDING_ENCODING_FLOAT,
    truncation: embedding_pb2.Truncation.ValueType = embedding_pb2.TRUNCATION_END,
    request_id: str = "",
) -> embedding_pb2.EmbedRequest:
    """Texts (or token id lists in the embedding model's vocabulary) to embed, in order."""
    items = [
        embedding_pb2.EmbedInput(text=i)
        if isinstance(i, str)
        else embedding_pb2.EmbedInput(tokens=embedding_pb2.TokenIds(ids=list(i)))
        for i in inputs
    ]
    return embedding_pb2.EmbedRequest(
        request_id=request_id,
        binding=binding,
        model=model,
        inputs=items,
        encoding=encoding,
        truncation=truncation,
    )


def key_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata every call carries: the given key, else the default one, if any."""
    key = api_key or default_api_key()
    return (("x-api-key", key),) if key else ()


def execute_request(code: str, library: str) -> agent_pb2.ExecuteRequest:
    return agent_pb2.ExecuteRequest(program=program_pb2.Program(code=code, library=library))


class _Connection:
    """An authenticated channel to the router with a stub per public service. Each client says
    which grpc it runs on (`grpc.aio` or the blocking one) and declares its stubs' types."""

    _grpc: ClassVar[ModuleType]

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.metadata = key_metadata(api_key)
        options = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]
        self.channel = (
            self._grpc.secure_channel(address, credentials, options)
            if credentials
            else self._grpc.insecure_channel(address, options)
        )
        self.generation = generation_pb2_grpc.GenerationServiceStub(self.channel)
        self.embedding = embedding_pb2_grpc.EmbeddingServiceStub(self.channel)
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(self.channel)
        self.tokenizer = tokenizer_pb2_grpc.TokenizerServiceStub(self.channel)
        self.agent = agent_pb2_grpc.AgentServiceStub(self.channel)


class Client(_Connection):
    """An authenticated asyncio channel to the router with a stub per public service."""

    _grpc: ClassVar[ModuleType] = grpc.aio
    channel: grpc.aio.Channel
    generation: generation_pb2_grpc.GenerationServiceAsyncStub
    embedding: embedding_pb2_grpc.EmbeddingServiceAsyncStub
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub
    tokenizer: tokenizer_pb2_grpc.TokenizerServiceAsyncStub
    agent: agent_pb2_grpc.AgentServiceAsyncStub

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def generate(
        self, request: common_pb2.GenerateRequest, timeout: float | None = None
    ) -> common_pb2.GenerateResponse:
        response: common_pb2.GenerateResponse = await self.generation.Generate(
            request, metadata=self.metadata, timeout=timeout
        )
        return response

    async def generate_stream(
        self, request: common_pb2.GenerateRequest, timeout: float | None = None
    ) -> AsyncIterator[common_pb2.StreamEvent]:
        call = self.generation.GenerateStream(
            generation_pb2.GenerateStreamRequest(request=request),
            metadata=self.metadata,
            timeout=timeout,
        )
        async for response in call:
            yield response.event

    async def embed(
        self, request: embedding_pb2.EmbedRequest, timeout: float | None = None
    ) -> embedding_pb2.EmbedResponse:
        """Embeddings of the request's inputs (see `embed_request`)."""
        response: embedding_pb2.EmbedResponse = await self.embedding.Embed(
            request, metadata=self.metadata, timeout=timeout
        )
        return response

    async def execute(
        self, code: str, library: str = "", timeout: float | None = None
    ) -> program_pb2.ProgramResult:
        """Runs a sandbox program that calls only server-side functions."""
        response = await self.agent.Execute(
            execute_request(code, library), metadata=self.metadata, timeout=timeout
        )
        return response.result

    async def list_bindings(self) -> list[catalog_pb2.Binding]:
        response = await self.catalog.ListBindings(
            catalog_pb2.ListBindingsRequest(), metadata=self.metadata
        )
        return list(response.bindings)

    async def list_personalities(self) -> list[catalog_pb2.Personality]:
        response = await self.catalog.ListPersonalities(
            catalog_pb2.ListPersonalitiesRequest(), metadata=self.metadata
        )
        return list(response.personalities)

    async def list_functions(self) -> list[catalog_pb2.FunctionInfo]:
        response = await self.catalog.ListFunctions(
            catalog_pb2.ListFunctionsRequest(), metadata=self.metadata
        )
        return list(response.functions)


class SyncClient(_Connection):
    """The blocking counterpart of `Client`."""

    _grpc: ClassVar[ModuleType] = grpc
    channel: grpc.Channel
    generation: generation_pb2_grpc.GenerationServiceStub
    embedding: embedding_pb2_grpc.EmbeddingServiceStub
    catalog: catalog_pb2_grpc.CatalogServiceStub
    tokenizer: tokenizer_pb2_grpc.TokenizerServiceStub
    agent: agent_pb2_grpc.AgentServiceStub

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def generate(
        self, request: common_pb2.GenerateRequest, timeout: float | None = None
    ) -> common_pb2.GenerateResponse:
        return self.generation.Generate(request, metadata=self.metadata, timeout=timeout)

    def generate_stream(
        self, request: common_pb2.GenerateRequest, timeout: float | None = None
    ) -> Iterator[common_pb2.StreamEvent]:
        """The events as they arrive; closing the iterator early cancels the call."""
        call = self.generation.GenerateStream(
            generation_pb2.GenerateStreamRequest(request=request),
            metadata=self.metadata,
            timeout=timeout,
        )
        try:
            for response in call:
                yield response.event
        finally:
            call.cancel()

    def embed(
        self, request: embedding_pb2.EmbedRequest, timeout: float | None = None
    ) -> embedding_pb2.EmbedResponse:
        """Embeddings of the request's inputs (see `embed_request`)."""
        return self.embedding.Embed(request, metadata=self.metadata, timeout=timeout)

    def execute(
        self, code: str, library: str = "", timeout: float | None = None
    ) -> program_pb2.ProgramResult:
        """Runs a sandbox program that calls only server-side functions."""
        response = self.agent.Execute(
            execute_request(code, library), metadata=self.metadata, timeout=timeout
        )
        return response.result

    def list_bindings(self) -> list[catalog_pb2.Binding]:
        response = self.catalog.ListBindings(
            catalog_pb2.ListBindingsRequest(), metadata=self.metadata
        )
        return list(response.bindings)

    def list_personalities(self) -> list[catalog_pb2.Personality]:
        response = self.catalog.ListPersonalities(
            catalog_pb2.ListPersonalitiesRequest(), metadata=self.metadata
        )
        return list(response.personalities)

    def list_functions(self) -> list[catalog_pb2.FunctionInfo]:
        response = self.catalog.ListFunctions(
            catalog_pb2.ListFunctionsRequest(), metadata=self.metadata
        )
        return list(response.functions)


@dataclass(frozen=True)
class ErrorDetails:
    """The google.rpc details of a failed call, decoded."""

    code: grpc.StatusCode
    message: str
    violations: dict[str, str]
    reason: str
    metadata: dict[str, str]
    retry_after: float | None


def error_details(error: grpc.aio.AioRpcError) -> ErrorDetails:
    """Decodes BadRequest, ErrorInfo and RetryInfo from a failed call's trailing metadata."""
    violations: dict[str, str] = {}
    reason = ""
    metadata: dict[str, str] = {}
    retry_after: float | None = None
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.update({v.field: v.description for v in bad_request.field_violations})
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    return ErrorDetails(
        error.code(), error.details() or "", violations, reason, metadata, retry_after
    )
