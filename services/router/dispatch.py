"""Resolving public requests to a binding and relaying the backend's Infer stream.

The relay forwards deadlines (as the backend call's timeout) and cancellation (closing the relay
cancels the backend call, which stops the engine), and retries once on another replica when a
replica is unavailable before it produced anything.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from genmesh.router import validation
from genmesh.router.backends import Backends, BindingRoute, Replica
from genmesh.runtime import errors
from genmesh.runtime.errors import FieldViolation, ServiceError
from genmesh.runtime.timing import Stopwatch, duration
from genmesh.v1 import common_pb2, inference_pb2

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass
class Routed:
    route: BindingRoute
    request: common_pb2.GenerateRequest


def translate(error: grpc.aio.AioRpcError, route: BindingRoute) -> ServiceError:
    """A backend failure as the client should see it."""
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return errors.unavailable(
            f"binding '{route.name}' is unavailable: {error.details()}", binding=route.name
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.deadline_exceeded("the deadline passed before generation finished")
    return errors.from_rpc_error(error)


class Dispatcher:
    def __init__(self, backends: Backends, max_request_bytes: int) -> None:
        self.backends = backends
        self.max_request_bytes = max_request_bytes

    def resolve(self, request: common_pb2.GenerateRequest, needs_inputs: bool = True) -> Routed:
        resolved = common_pb2.GenerateRequest()
        resolved.CopyFrom(request)
        resolved.request_id = validation.request_id(request.request_id)
        if resolved.binding:
            route = self.backends.get(resolved.binding)
        else:
            route = self.backends.default_for(resolved.task or common_pb2.TASK_TEXT)
        if resolved.task == common_pb2.TASK_UNSPECIFIED:
            resolved.task = route.tasks[0]
        elif resolved.task not in route.tasks:
            served = ", ".join(common_pb2.Task.Name(t) for t in route.tasks)
            raise errors.invalid_argument(
                f"binding '{route.name}' does not serve {common_pb2.Task.Name(resolved.task)}",
                FieldViolation("task", f"binding '{route.name}' serves {served}"),
            )
        if resolved.personality:
            raise errors.not_found(
                f"unknown personality '{resolved.personality}'",
                "personality",
                resolved.personality,
                "personality",
            )
        resolved.binding = route.name
        resolved.model = resolved.model or route.config.model
        validation.check_request(resolved, self.max_request_bytes, needs_inputs)
        return Routed(route, resolved)

    def relay(self, routed: Routed, context: Context) -> Relay:
        return Relay(routed, context.time_remaining())

    async def generate(
        self, request: common_pb2.GenerateRequest, timeout: float | None = None
    ) -> common_pb2.GenerateResponse:
        """A whole generation in-process (for sandbox programs' mesh functions)."""
        return await Relay(self.resolve(request), timeout).result()


class Relay:
    """One request's backend stream; iterate it for events, then read `trailing_metadata`."""

    def __init__(self, routed: Routed, timeout: float | None) -> None:
        self.routed = routed
        self.timeout = timeout
        self.clock = Stopwatch()

    def open(self, replica: Replica) -> grpc.aio.StreamStreamCall[Any, Any]:
        return replica.stub.Infer(timeout=self.timeout)

    async def result(self) -> common_pb2.GenerateResponse:
        """Consumes the stream; the final event's result."""
        final: common_pb2.GenerateResponse | None = None
        async for event in self:
            if event.HasField("final"):
                final = event.final
        if final is None:
            raise errors.unavailable("the backend ended without a result")
        return final

    async def __aiter__(self) -> AsyncIterator[common_pb2.StreamEvent]:
        route = self.routed.route
        exclude: Replica | None = None
        for attempt in range(2):
            replica = route.pick(exclude)
            call = self.open(replica)
            started = False
            try:
                await call.write(inference_pb2.InferRequest(request=self.routed.request))
                await call.done_writing()
                async for response in call:
                    started = True
                    event = response.event
                    if event.HasField("final"):
                        self.finish(event.final)
                    else:
                        self.clock.first_output()
                    yield event
                return
            except grpc.aio.AioRpcError as error:
                retry = (
                    error.code() == grpc.StatusCode.UNAVAILABLE
                    and not started
                    and attempt == 0
                    and len(route.replicas) > 1
                )
                if not retry:
                    raise translate(error, route) from None
                replica.mark_down()
                exclude = replica
            finally:
                call.cancel()

    def finish(self, final: common_pb2.GenerateResponse) -> None:
        """Stamps the router's view on the backend's result: ids and client-side timings."""
        final.request_id = self.routed.request.request_id
        final.binding = self.routed.route.name
        backend_queue = final.timings.queue.ToTimedelta().total_seconds()
        final.timings.CopyFrom(self.clock.timings(extra_queue_s=backend_queue))
        if self.clock.first_token_s is None:
            final.timings.first_token.CopyFrom(duration(self.clock.elapsed()))

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", self.routed.request.request_id), *self.clock.metadata())


def new_turn_id(value: str) -> str:
    return value or uuid.uuid4().hex[:12]
