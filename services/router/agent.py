"""AgentService: runs LLM-written programs in the sandbox service, bridging their host calls.

Each run is one SandboxService.Execute stream. Calls to server-side functions (the mesh's own
generate_text, generate_image, speak, transcribe and the router's function registry) are answered
here, concurrently; calls to functions the client declared are relayed to the client on Run's
stream and its answers relayed back. Execute is the unary form for programs that call only
server-side functions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from genmesh.router import validation
from genmesh.runtime import errors, telemetry, values
from genmesh.runtime.channel import stream_end
from genmesh.runtime.errors import FieldViolation
from genmesh.sandbox import dialect
from genmesh.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    program_pb2,
    sandbox_pb2,
    sandbox_pb2_grpc,
)

ServerFunction = Callable[..., Awaitable[Any]]
Generate = Callable[[common_pb2.GenerateRequest], Awaitable[common_pb2.GenerateResponse]]
Context = grpc.aio.ServicerContext[Any, Any]
SandboxRequest = sandbox_pb2.SandboxServiceExecuteRequest

# Client function declarations up to this size are parsed on the event loop (about a millisecond
# at most); a thread's round trip would cost more than that. Larger ones go to a thread.
INLINE_STUB_BYTES = 1 << 10
# How long a sandbox stream that has delivered its result may take to end by itself before it is
# cancelled (it ends at once unless the sandbox service is stuck).
RESULT_GRACE_SECONDS = 5.0
CLIENT_CLOSED = "the client ended its stream without answering"


class ServerFunctions:
    """The functions a program may call that the router answers itself."""

    def __init__(self, functions: Mapping[str, ServerFunction]) -> None:
        self.functions = dict(functions)
        self.source = dialect.stub_source(
            [dialect.stub_from_function(n, f) for n, f in self.functions.items()]
        )

    def __contains__(self, name: str) -> bool:
        return name in self.functions

    async def call(self, call: program_pb2.FunctionCall) -> program_pb2.FunctionResult:
        """The function's answer, or the error the program sees; never raises."""
        with telemetry.span(f"callback {call.name}", **{"genmesh.function": call.name}):
            try:
                kwargs = values.py_from_struct(call.arguments, "arguments")
                value = await self.functions[call.name](**kwargs)
                return program_pb2.FunctionResult(
                    call_id=call.call_id, value=values.value_from_py(value, "result")
                )
            except grpc.aio.AioRpcError as exc:
                message = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:  # the program sees the failure where it uses the value
                message = f"{type(exc).__name__}: {exc}"
        return program_pb2.FunctionResult(call_id=call.call_id, error=message)


def mesh_functions(generate: Generate) -> dict[str, ServerFunction]:
    """generate_text, generate_image, speak and transcribe through the mesh's GenerationService."""

    def request(task: common_pb2.Task.ValueType, binding: str, **fields: Any) -> Any:
        return common_pb2.GenerateRequest(
            request_id=f"agent-{uuid.uuid4().hex[:12]}", task=task, binding=binding, **fields
        )

    def prompt(text: str, role: common_pb2.InputRole.ValueType) -> common_pb2.InputItem:
        return common_pb2.InputItem(kind=common_pb2.CONTENT_KIND_TEXT, role=role, text=text)

    def media(response: common_pb2.GenerateResponse) -> list[dict[str, str]]:
        return [
            {"mime_type": o.mime_type, "data": base64.b64encode(o.data).decode()}
            for o in response.outputs
            if o.data
        ]

    async def generate_text(
        prompt_text: str, system: str = "", max_tokens: int = 256, binding: str = ""
    ) -> str:
        """Generates text for a prompt with the mesh's text model."""
        inputs = [prompt(prompt_text, common_pb2.INPUT_ROLE_USER_PROMPT)]
        if system:
            inputs.insert(0, prompt(system, common_pb2.INPUT_ROLE_SYSTEM_CONTEXT))
        response = await generate(
            request(
                common_pb2.TASK_TEXT,
                binding,
                inputs=inputs,
                text=common_pb2.TextParameters(max_tokens=max_tokens),
            )
        )
        return "".join(o.text for o in response.outputs)

    async def generate_image(
        prompt_text: str, steps: int = 0, seed: int = 0, binding: str = ""
    ) -> list[dict[str, str]]:
        """Generates images (base64 with their mime type) for a prompt."""
        params = common_pb2.ImageParameters()
        if steps:
            params.steps = steps
        if seed:
            params.seed = seed
        response = await generate(
            request(
                common_pb2.TASK_IMAGE,
                binding,
                inputs=[prompt(prompt_text, common_pb2.INPUT_ROLE_USER_PROMPT)],
                image=params,
            )
        )
        return media(response)

    async def speak(text: str, voice: str = "", binding: str = "") -> list[dict[str, str]]:
        """Synthesises speech (base64 audio with its mime type)."""
        response = await generate(
            request(
                common_pb2.TASK_SPEECH,
                binding,
                inputs=[prompt(text, common_pb2.INPUT_ROLE_USER_PROMPT)],
                speech=common_pb2.SpeechParameters(voice=voice),
            )
        )
        return media(response)

    async def transcribe(audio: str, mime_type: str = "audio/wav", binding: str = "") -> str:
        """Transcribes base64-encoded audio."""
        item = common_pb2.InputItem(
            kind=common_pb2.CONTENT_KIND_AUDIO,
            role=common_pb2.INPUT_ROLE_INPUT_AUDIO,
            data=base64.b64decode(audio),
            mime_type=mime_type,
        )
        response = await generate(request(common_pb2.TASK_TRANSCRIPTION, binding, inputs=[item]))
        return "".join(o.text for o in response.outputs)

    return {
        "generate_text": generate_text,
        "generate_image": generate_image,
        "speak": speak,
        "transcribe": transcribe,
    }


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    """Runs programs through the sandbox service; see the module docstring."""

    def __init__(self, sandbox: grpc.aio.Channel, functions: ServerFunctions) -> None:
        self.sandbox = sandbox_pb2_grpc.SandboxServiceStub(sandbox)
        self.functions = functions

    def _check(self, program: program_pb2.Program, *, unary: bool) -> None:
        if not program.code.strip():
            raise errors.invalid_argument(
                "the program is empty", FieldViolation("program.code", "required")
            )
        violations = validation.json_violations("program.globals", program.globals)
        if violations:
            raise errors.invalid_argument("invalid program globals", *violations)
        if unary and program.client_functions.strip():
            raise errors.invalid_argument(
                "Execute runs server-side functions only; use Run for client functions",
                FieldViolation("program.client_functions", "must be empty for Execute"),
            )

    @staticmethod
    async def _client_names(program: program_pb2.Program) -> set[str]:
        """The functions the client answers itself. Their declarations are parsed in a thread
        when large, beside the router's other streams, and refused when oversized; the sandbox
        checks the rest of the program."""
        if not program.client_functions.strip():
            return set()
        size = len(program.client_functions.encode("utf-8"))
        if size > dialect.MAX_SOURCE_BYTES:
            raise errors.invalid_argument(
                "the client functions are too large",
                FieldViolation(
                    "program.client_functions",
                    f"{size} bytes is more than the limit of {dialect.MAX_SOURCE_BYTES}",
                ),
            )
        try:
            if size <= INLINE_STUB_BYTES:
                stubs = dialect.parse_stubs(program.client_functions, "<client_functions>")
            else:
                stubs = await asyncio.to_thread(
                    dialect.parse_stubs, program.client_functions, "<client_functions>"
                )
        except dialect.DialectError as exc:
            raise errors.invalid_argument(
                f"the client functions cannot be declared: {exc}",
                FieldViolation("program.client_functions", str(exc)),
            ) from None
        return {stub.name for stub in stubs}

    async def _bridge(
        self,
        request_id: str,
        program: program_pb2.Program,
        client: AsyncIterator[SandboxRequest] | None,
    ) -> AsyncIterator[sandbox_pb2.SandboxServiceExecuteResponse]:
        """Streams the sandbox's messages, answering server-side calls itself; client calls are
        passed through when there is a client to answer them (its results and controls come
        from `client`, read only once the start has gone: a result sent ahead of any call must
        not overtake it), and refused otherwise.

        Requests are written on the call itself, one at a time (grpc takes one write at once),
        rather than fed from a queue through grpc's own consumer task: a run that makes no host
        call costs one write and no task switch beside its read."""
        first = SandboxRequest()
        first.start.request_id = request_id
        first.start.program.CopyFrom(program)
        first.start.server_functions = self.functions.source
        client_names = await self._client_names(program)
        stream = self.sandbox.Execute()
        writing = asyncio.Lock()

        async def send(request: SandboxRequest) -> None:
            """Writes `request`; a stream that has ended takes nothing more, and its status comes
            from reading it."""
            async with writing:
                with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
                    await stream.write(request)

        async def answer(call: program_pb2.FunctionCall) -> None:
            await send(SandboxRequest(result=await self.functions.call(call)))

        relayed: set[int] = set()  # calls the client was asked to answer and has not yet
        closed = False  # the client ended its stream: it answers nothing more
        refused: list[errors.ServiceError] = []

        def refusal(call_id: int, error: str) -> SandboxRequest:
            return SandboxRequest(result=program_pb2.FunctionResult(call_id=call_id, error=error))

        async def forward(requests: AsyncIterator[SandboxRequest]) -> None:
            """The client's controls, and its results for calls relayed to it, once each: a
            result for any other call (a server function's, one not made yet, one answered
            already) would put words in the mouth of whoever else answers it. Once the client
            has ended its stream, the calls it left unanswered fail instead of waiting; a message
            of its that is refused (one that does not parse) ends the run with that refusal."""
            nonlocal closed
            try:
                async for request in requests:
                    if request.HasField("result"):
                        if request.result.call_id not in relayed:
                            continue
                        relayed.discard(request.result.call_id)
                    await send(request)
            except errors.ServiceError as exc:
                refused.append(exc)
                stream.cancel()
                return
            closed = True
            for call_id in sorted(relayed):
                await send(refusal(call_id, CLIENT_CLOSED))
            relayed.clear()

        tasks: set[asyncio.Task[None]] = set()
        ended = False  # the result came: the sandbox ends the stream itself
        try:
            await send(first)
            if client is not None:
                tasks.add(asyncio.create_task(forward(client)))
            async for response in stream:
                kind = response.WhichOneof("message")
                ended = kind == "result"
                if kind == "call":
                    call = response.call
                    if call.name in self.functions and call.name not in client_names:
                        task = asyncio.create_task(answer(call))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        continue
                    if client is None or closed:
                        error = CLIENT_CLOSED if closed else f"unknown function {call.name!r}"
                        await send(refusal(call.call_id, error))
                        continue
                    relayed.add(call.call_id)
                yield response
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            failed = await stream_end(stream, exc, refused)
            if failed is not None:
                raise errors.from_rpc_error(failed) from None
        finally:
            for task in tasks:
                task.cancel()
            # Cancelling a stream that is ending anyway would race its last status (an
            # RST_STREAM to the sandbox service); one that is not ending is cancelled now.
            if ended:
                asyncio.get_running_loop().call_later(RESULT_GRACE_SECONDS, stream.cancel)
            else:
                stream.cancel()

    async def Run(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[agent_pb2.RunRequest], context: Context
    ) -> AsyncIterator[agent_pb2.RunResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "start":
            raise errors.invalid_argument(
                "a run starts with a start message", FieldViolation("start", "must come first")
            )
        program = first.start.program
        self._check(program, unary=False)
        request_id = validation.request_id(first.start.request_id)
        context.set_trailing_metadata((("x-request-id", request_id),))

        async def client() -> AsyncIterator[SandboxRequest]:
            async for request in request_iterator:
                kind = request.WhichOneof("message")
                if kind == "result":
                    yield SandboxRequest(result=request.result)
                elif kind == "control":
                    yield SandboxRequest(control=request.control)

        async for response in self._bridge(request_id, program, client()):
            kind = response.WhichOneof("message")
            if kind == "call":
                yield agent_pb2.RunResponse(request_id=request_id, call=response.call)
            elif kind == "log":
                yield agent_pb2.RunResponse(request_id=request_id, log=response.log)
            elif kind == "result":
                yield agent_pb2.RunResponse(request_id=request_id, result=response.result)
                return

    async def run_server_program(
        self, request_id: str, program: program_pb2.Program
    ) -> AsyncIterator[sandbox_pb2.SandboxServiceExecuteResponse]:
        """A program that calls only server-side functions: its logs, then its result.

        Also how the router runs scripted personalities' workflows."""
        self._check(program, unary=True)
        async for response in self._bridge(request_id, program, None):
            yield response

    async def Execute(  # noqa: N802 - gRPC method name
        self, request: agent_pb2.ExecuteRequest, context: Context
    ) -> agent_pb2.ExecuteResponse:
        request_id = validation.request_id(request.request_id)
        context.set_trailing_metadata((("x-request-id", request_id),))
        async for response in self.run_server_program(request_id, request.program):
            if response.WhichOneof("message") == "result":
                return agent_pb2.ExecuteResponse(request_id=request_id, result=response.result)
        raise errors.unavailable("the sandbox ended the run without a result")
