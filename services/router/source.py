"""What a generation request becomes once resolved: a stream of events ending in a final result.

A Relay (a binding's backend stream) and a ScriptRun (a scripted personality's workflow in the
sandbox) are both sources, so every public RPC serves either alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from genmesh.runtime import errors
from genmesh.runtime.timing import Stopwatch
from genmesh.v1 import common_pb2


class EventSource(ABC):
    def __init__(self, request: common_pb2.GenerateRequest) -> None:
        self.request = request
        self.clock = Stopwatch()

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[common_pb2.StreamEvent]:
        """The events; the last one is the final result, stamped by `finish`."""

    @abstractmethod
    def finish(self, final: common_pb2.GenerateResponse) -> None:
        """Stamps the router's view on a result: ids and client-side timings."""

    async def result(self) -> common_pb2.GenerateResponse:
        """Consumes the stream; the final event's result."""
        final: common_pb2.GenerateResponse | None = None
        async for event in self:
            if event.HasField("final"):
                final = event.final
        if final is None:
            raise errors.unavailable("the generation ended without a result")
        return final

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", self.request.request_id), *self.clock.metadata())
