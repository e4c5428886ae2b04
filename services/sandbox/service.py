"""SandboxService.Execute: one bidi stream per run; host calls travel on the same stream.

The caller (the router) sends the program first, then a FunctionResult for every FunctionCall the
sandbox streams out; logs stream as they are printed and the ProgramResult ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from genmesh.runtime import errors
from genmesh.sandbox.executor import Executor, error
from genmesh.v1 import common_pb2, program_pb2, sandbox_pb2, sandbox_pb2_grpc

Response = sandbox_pb2.SandboxServiceExecuteResponse


class StreamHost:
    """Answers a run's host calls through the caller on the other end of the stream."""

    def __init__(self, out: asyncio.Queue[Response | None]) -> None:
        self.out = out
        self.waiting: dict[int, asyncio.Future[program_pb2.FunctionResult]] = {}
        self.closed = False

    async def call(self, call: program_pb2.FunctionCall) -> program_pb2.FunctionResult:
        if self.closed:
            return program_pb2.FunctionResult(error="the caller closed the stream")
        answer: asyncio.Future[program_pb2.FunctionResult] = (
            asyncio.get_running_loop().create_future()
        )
        self.waiting[call.call_id] = answer
        await self.out.put(Response(call=call))
        return await answer

    def deliver(self, result: program_pb2.FunctionResult) -> None:
        answer = self.waiting.pop(result.call_id, None)
        if answer is not None and not answer.done():
            answer.set_result(result)

    def close(self) -> None:
        self.closed = True
        for answer in self.waiting.values():
            if not answer.done():
                answer.set_result(program_pb2.FunctionResult(error="the caller closed the stream"))
        self.waiting.clear()


class SandboxService(sandbox_pb2_grpc.SandboxServiceServicer):
    """Runs each program in a fresh jailed child."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    async def Execute(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[sandbox_pb2.SandboxServiceExecuteRequest],
        context: grpc.aio.ServicerContext[
            sandbox_pb2.SandboxServiceExecuteRequest, sandbox_pb2.SandboxServiceExecuteResponse
        ],
    ) -> AsyncIterator[Response]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "start":
            raise errors.invalid_argument(
                "the first message must be `start`",
                errors.FieldViolation("start", "required as the first message"),
            )
        start = first.start
        out: asyncio.Queue[Response | None] = asyncio.Queue()
        host = StreamHost(out)

        async def on_log(line: program_pb2.LogLine) -> None:
            await out.put(Response(log=line))

        async def execute() -> None:
            try:
                result = await self.executor.run(
                    start.program, host, server_functions=start.server_functions, on_log=on_log
                )
            except asyncio.CancelledError:
                result = program_pb2.ProgramResult(
                    error=error("cancelled", "the run was cancelled")
                )
            await out.put(Response(result=result))
            await out.put(None)

        async def read() -> None:
            async for request in request_iterator:
                kind = request.WhichOneof("message")
                if kind == "result":
                    host.deliver(request.result)
                elif (
                    kind == "control" and request.control.action == common_pb2.Control.ACTION_CANCEL
                ):
                    runner.cancel()
            host.close()

        runner = asyncio.create_task(execute())
        reader = asyncio.create_task(read())
        try:
            while (response := await out.get()) is not None:
                yield response
        finally:
            runner.cancel()
            reader.cancel()
            host.close()
            for task in (runner, reader):
                with contextlib.suppress(BaseException):
                    await task
