"""SandboxService.Execute: one bidi stream per run; host calls travel on the same stream.

The caller (the router) sends the program first, then a FunctionResult for every FunctionCall the
sandbox streams out; printed output streams as it arrives and the ProgramResult ends the stream.
The stream always ends with a result: the executor turns every failure of a run into one, and a
cancelled or broken run still gets its coded result here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator

import grpc

from genmesh.runtime import errors
from genmesh.sandbox.executor import Executor, Kind, error, program_violations
from genmesh.v1 import common_pb2, program_pb2, sandbox_pb2, sandbox_pb2_grpc

log = logging.getLogger(__name__)

Response = sandbox_pb2.SandboxServiceExecuteResponse

# Largest log message made by merging printed batches that queued up behind one another.
MERGED_LOG_CHARS = 64 << 10


class Outbox:
    """A run's messages on their way to the caller. A printed batch that queues behind another
    one merges into it, so a slow reader gets fewer, larger messages rather than a backlog."""

    def __init__(self) -> None:
        self._items: deque[Response] = deque()
        self._more = asyncio.Event()
        self._closed = False

    def put(self, response: Response) -> None:
        self._items.append(response)
        self._more.set()

    def log(self, line: program_pb2.LogLine) -> None:
        last = self._items[-1] if self._items else None
        if (
            last is not None
            and last.WhichOneof("message") == "log"
            and len(last.log.text) + len(line.text) < MERGED_LOG_CHARS
        ):
            last.log.text += "\n" + line.text
        else:
            self.put(Response(log=line))

    def close(self) -> None:
        """No more messages: `get` returns None once the queued ones are taken."""
        self._closed = True
        self._more.set()

    async def get(self) -> Response | None:
        while not self._items:
            if self._closed:
                return None
            self._more.clear()
            await self._more.wait()
        return self._items.popleft()


class StreamHost:
    """Answers a run's host calls through the caller on the other end of the stream."""

    def __init__(self, out: Outbox) -> None:
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
        self.out.put(Response(call=call))
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
        violations = program_violations(start.program)
        if violations:
            details = "; ".join(f"{v.field}: {v.description}" for v in violations)
            raise errors.invalid_argument(f"the program cannot run: {details}", *violations)
        out = Outbox()
        host = StreamHost(out)

        async def on_log(line: program_pb2.LogLine) -> None:
            out.log(line)

        async def execute() -> None:
            try:
                result = await self.executor.run(
                    start.program, host, server_functions=start.server_functions, on_log=on_log
                )
            except asyncio.CancelledError:
                result = program_pb2.ProgramResult(
                    error=error(Kind.KIND_CANCELLED, "the run was cancelled")
                )
            except Exception:  # the executor reports failures as results: this is a bug
                log.exception("a sandbox run failed unexpectedly")
                result = program_pb2.ProgramResult(
                    error=error(Kind.KIND_CRASHED, "the sandbox failed (the service logged why)")
                )
            out.put(Response(result=result))
            out.close()

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
