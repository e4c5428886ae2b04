"""The interceptors every server runs, in order, on a real grpc.aio server in this process: errors
end as statuses with details (a crash as an opaque INTERNAL, logged) and keep the handler's
trailers, every RPC but health needs a key (checked before anything else is said about the call),
the gate refuses new calls once the server drains and lets open ones finish, a stream cancelled
while the server writes ends as CANCELLED on the call's own task, telemetry never changes a call's
outcome, and each method's handler is wrapped once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from genmesh.client import ErrorDetails, error_details
from genmesh.runtime import errors
from genmesh.runtime.auth import KeyStore, digest
from genmesh.runtime.interceptors import Around, CallGate, Continuation, Handler, Interceptor
from genmesh.runtime.server import server_interceptors
from genmesh.runtime.settings import ApiKey

KEY = "interceptors-test-key"
INTERNAL_KEY = "interceptors-internal-key"
SECRET = "a detail of the server's internals"
PROBE = "test.Probe"
# Methods of the mesh's services, served by the probe: their names decide scopes and telemetry.
GENERATE_STREAM = "/genmesh.v1.GenerationService/GenerateStream"
INTERNAL = "/genmesh.v1.InferenceService/Probe"
SANDBOX_EXECUTE = "/genmesh.v1.SandboxService/Execute"
# Under health's path, but of another service: it is not health.
NOT_HEALTH = "/grpc.health.v1.Health/Extra/Probe"
# Not a protobuf message: a field tag with wire type 7, which does not exist.
MALFORMED = b"\x0f\xff\xff"
BIG = "x" * 16384


class Probe:
    """The handlers, and what they let a test see and steer."""

    def __init__(self) -> None:
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.streaming = asyncio.Event()
        self.stream_closed = asyncio.Event()

    async def answer(self, request: StringValue, context: Any) -> StringValue:
        """Answers `ok`, refuses `refuse` as bad input (after setting its request id trailer
        for `refuse with trailer`), waits for the test on `hold`, and crashes otherwise."""
        if request.value == "ok":
            return StringValue(value="ok")
        if request.value == "hold":
            self.held.set()
            await self.release.wait()
            return StringValue(value="released")
        if request.value.startswith("refuse"):
            if request.value.endswith("trailer"):
                context.set_trailing_metadata((("x-request-id", "rid-unary"),))
            raise errors.invalid_argument("refused", errors.FieldViolation("value", "not wanted"))
        raise RuntimeError(SECRET)

    async def words(self, request: StringValue, context: Any) -> AsyncIterator[StringValue]:
        """Streams the request's words, then crashes if one was `crash` or refuses if one was
        `refuse` (after setting its request id trailer)."""
        words = request.value.split()
        for word in words:
            yield StringValue(value=word)
        if "refuse" in words:
            context.set_trailing_metadata((("x-request-id", "rid-stream"),))
            raise errors.invalid_argument("refused")
        if "crash" in words:
            raise RuntimeError(SECRET)

    async def echo(
        self, requests: AsyncIterator[StringValue], context: Any
    ) -> AsyncIterator[StringValue]:
        async for request in requests:
            yield request

    async def endless(self, request: StringValue, context: Any) -> AsyncIterator[StringValue]:
        """Big messages as fast as grpc takes them: once the client stops reading, the server
        waits in a write, never in here."""
        try:
            while True:
                yield StringValue(value=BIG)
                self.streaming.set()
        finally:
            self.stream_closed.set()


class Asked(Interceptor):
    """Innermost: records each time grpc's chain of interceptors reaches it for a handler."""

    def __init__(self) -> None:
        super().__init__()
        self.methods: list[str] = []

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        self.methods.append(handler_call_details.method)
        return await super().intercept_service(continuation, handler_call_details)

    def around(self, method: str, handler: Handler) -> Around | None:
        return None


class Plain(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        return await continuation(handler_call_details)


class Server:
    """A grpc.aio server with every interceptor (and `Asked` innermost), the probe and health."""

    def __init__(self) -> None:
        self.gate = CallGate()
        self.asked = Asked()
        self.probe = Probe()
        keys = KeyStore(
            [
                ApiKey(name="test", sha256=digest(KEY)),
                ApiKey(
                    name="internal", sha256=digest(INTERNAL_KEY), scopes=frozenset({"internal"})
                ),
            ]
        )
        self.server = grpc.aio.server(interceptors=server_interceptors(keys, self.gate, self.asked))
        parse, serialize = StringValue.FromString, StringValue.SerializeToString
        unary = grpc.unary_unary_rpc_method_handler(self.probe.answer, parse, serialize)
        handlers = {
            f"/{PROBE}/Answer": unary,
            f"/{PROBE}/Words": grpc.unary_stream_rpc_method_handler(
                self.probe.words, parse, serialize
            ),
            f"/{PROBE}/Echo": grpc.stream_stream_rpc_method_handler(
                self.probe.echo, parse, serialize
            ),
            GENERATE_STREAM: grpc.unary_stream_rpc_method_handler(
                self.probe.endless, parse, serialize
            ),
            INTERNAL: unary,
            SANDBOX_EXECUTE: unary,
            NOT_HEALTH: unary,
        }
        for path, handler in handlers.items():
            service, _, method = path[1:].rpartition("/")
            self.server.add_generic_rpc_handlers(
                [grpc.method_handlers_generic_handler(service, {method: handler})]
            )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    running = Server()
    await running.server.start()
    await running.health.set("", health_pb2.HealthCheckResponse.SERVING)
    yield running
    await running.server.stop(None)


@pytest.fixture
async def channel(server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans this process ends, on the tracer provider the interceptors use."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def metadata(key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),) if key else ()


def call(channel: grpc.aio.Channel, method: str, value: str, key: str = KEY) -> Any:
    """`method` (of the probe service unless a path) with `value`, and `key` unless empty."""
    path = method if method.startswith("/") else f"/{PROBE}/{method}"
    serialize, parse = StringValue.SerializeToString, StringValue.FromString
    multicallable: Any = (
        channel.unary_stream(path, serialize, parse)
        if method in ("Words", GENERATE_STREAM)
        else channel.unary_unary(path, serialize, parse)
    )
    return multicallable(StringValue(value=value), metadata=metadata(key))


def bidi(channel: grpc.aio.Channel, key: str = KEY, path: str = f"/{PROBE}/Echo") -> Any:
    serialize, parse = StringValue.SerializeToString, StringValue.FromString
    return channel.stream_stream(path, serialize, parse)(metadata=metadata(key))


async def failure(answer: Any) -> grpc.aio.AioRpcError:
    """How a call ends, awaited or read to its end; it must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        if hasattr(answer, "__aiter__"):
            async for _ in answer:
                pass
        else:
            await answer
    return failed.value


async def refusal(answer: Any) -> ErrorDetails:
    """The status, with its details, that a call ends with; it must fail."""
    return error_details(await failure(answer))


async def test_service_errors_keep_their_code_and_details(channel: grpc.aio.Channel) -> None:
    details = await refusal(call(channel, "Answer", "refuse"))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.violations == {"value": "not wanted"}


async def test_an_error_keeps_the_handlers_trailers(channel: grpc.aio.Channel) -> None:
    for method, value, request_id in (
        ("Answer", "refuse with trailer", "rid-unary"),
        ("Words", "one refuse", "rid-stream"),
    ):
        refused = await failure(call(channel, method, value))
        assert ("x-request-id", request_id) in tuple(refused.trailing_metadata() or ())
        assert error_details(refused).code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_crash_is_an_opaque_internal_and_logged(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="genmesh.runtime.interceptors"):
        crashed = await failure(call(channel, "Answer", "crash"))
        received: list[str] = []
        with pytest.raises(grpc.aio.AioRpcError) as crashed_stream:
            async for response in call(channel, "Words", "two then crash"):
                received.append(response.value)
    assert received == ["two", "then", "crash"]
    for failed, method in ((crashed, "Answer"), (crashed_stream.value, "Words")):
        details = error_details(failed)
        assert details.code == grpc.StatusCode.INTERNAL
        assert details.message == f"internal error in /{PROBE}/{method}"
        assert details.reason == "INTERNAL"
        assert SECRET not in str(failed.trailing_metadata())
    logged = [r for r in caplog.records if r.name == "genmesh.runtime.interceptors"]
    assert [str(r.exc_info[1]) for r in logged if r.exc_info] == [SECRET, SECRET]


async def test_a_malformed_request_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    raw: Any = channel.unary_unary(f"/{PROBE}/Answer")
    details = await refusal(raw(MALFORMED, metadata=metadata(KEY)))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_MESSAGE")
    echo: Any = channel.stream_stream(f"/{PROBE}/Echo")
    details = await refusal(echo(iter([MALFORMED]), metadata=metadata(KEY)))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_MESSAGE")


async def test_a_caller_without_a_key_learns_nothing_of_messages_or_methods(
    channel: grpc.aio.Channel,
) -> None:
    raw: Any = channel.unary_unary(f"/{PROBE}/Answer")
    for key in ("", "wrong"):
        details = await refusal(raw(MALFORMED, metadata=metadata(key)))
        assert details.code == grpc.StatusCode.UNAUTHENTICATED
        assert "parse" not in str(details)
        details = await refusal(call(channel, "Missing", "ok", key=key))
        assert details.code == grpc.StatusCode.UNAUTHENTICATED
        missing_bidi = bidi(channel, key, f"/{PROBE}/MissingToo")
        assert (await refusal(missing_bidi.read())).code == grpc.StatusCode.UNAUTHENTICATED
    assert (await failure(call(channel, "Missing", "ok"))).code() == grpc.StatusCode.UNIMPLEMENTED


async def test_every_rpc_but_health_needs_a_key(channel: grpc.aio.Channel) -> None:
    for key in ("", "wrong"):
        details = await refusal(call(channel, "Answer", "ok", key=key))
        assert details.code == grpc.StatusCode.UNAUTHENTICATED
        details = await refusal(call(channel, "Words", "never streamed", key=key))
        assert details.code == grpc.StatusCode.UNAUTHENTICATED
        assert (await refusal(bidi(channel, key).read())).code == grpc.StatusCode.UNAUTHENTICATED
    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert (await refusal(call(channel, NOT_HEALTH, "ok", key=""))).code == (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_each_call_is_checked_though_its_handler_is_kept(
    channel: grpc.aio.Channel,
) -> None:
    """The wrapped handler is kept per method: the key is still read from every call."""
    for _ in range(2):
        assert (await call(channel, "Answer", "ok")).value == "ok"
        assert [r.value async for r in call(channel, "Words", "a b")] == ["a", "b"]
        for method in ("Answer", "Words"):
            details = await refusal(call(channel, method, "ok", key="wrong"))
            assert details.code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_key_without_the_services_scope_is_refused(channel: grpc.aio.Channel) -> None:
    details = await refusal(call(channel, INTERNAL, "ok"))
    assert details.code == grpc.StatusCode.PERMISSION_DENIED
    assert "internal" in details.message
    assert (await call(channel, INTERNAL, "ok", key=INTERNAL_KEY)).value == "ok"


async def test_draining_refuses_new_calls_but_not_health(
    server: Server, channel: grpc.aio.Channel
) -> None:
    assert (await call(channel, "Answer", "ok")).value == "ok"
    echo = bidi(channel)
    await echo.write(StringValue(value="before"))
    assert (await echo.read()).value == "before"
    await echo.done_writing()
    await server.gate.drain(0)
    details = await refusal(call(channel, "Answer", "ok"))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    details = await refusal(bidi(channel).read())
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    details = await refusal(call(channel, NOT_HEALTH, "ok"))
    assert details.code == grpc.StatusCode.UNAVAILABLE
    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_call_in_flight_finishes_while_the_server_drains(
    server: Server, channel: grpc.aio.Channel
) -> None:
    held = asyncio.ensure_future(call(channel, "Answer", "hold"))
    await server.probe.held.wait()
    assert server.gate.active == 1
    draining = asyncio.create_task(server.gate.drain(60))
    await asyncio.sleep(0)
    assert server.gate.closed and not draining.done()
    assert (await refusal(call(channel, "Answer", "ok"))).code == grpc.StatusCode.UNAVAILABLE
    server.probe.release.set()
    assert (await held).value == "released"
    await draining
    assert server.gate.active == 0


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_stream_cancelled_while_the_server_writes_ends_as_cancelled(
    server: Server,
    channel: grpc.aio.Channel,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client stops reading, so the server waits in a write when the client cancels: the
    handler, the gate, the span and the metrics all see the cancellation, on the call's task."""
    spans.clear()
    duration = "gen_ai_server_request_duration_seconds_count"
    labels = {"gen_ai_operation_name": "generate_content", "gen_ai_request_model": ""}
    cancelled_before = _sample(duration, **labels, error_type="CANCELLED")
    unknown_before = _sample(duration, **labels, error_type="UNKNOWN")
    with caplog.at_level(logging.ERROR):
        stream = call(channel, GENERATE_STREAM, "go")
        assert (await stream.read()).value == BIG
        await server.probe.streaming.wait()
        stream.cancel()
        # The chain unwinds in one step, from the handler's finally out to the span's end.
        await server.probe.stream_closed.wait()
    assert server.gate.active == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert _sample(duration, **labels, error_type="CANCELLED") == cancelled_before + 1
    assert _sample(duration, **labels, error_type="UNKNOWN") == unknown_before
    assert _sample("genmesh_active_streams", method=GENERATE_STREAM[1:]) == 0
    ended: list[ReadableSpan] = [
        s for s in spans.get_finished_spans() if s.name == GENERATE_STREAM[1:]
    ]
    assert len(ended) == 1
    assert ended[0].attributes is not None
    assert ended[0].attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


async def test_a_failure_of_telemetry_never_changes_the_outcome(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    """Telemetry reads a sandbox run's result from its response; this one is not one."""
    with caplog.at_level(logging.ERROR, logger="genmesh.runtime.telemetry"):
        assert (await call(channel, SANDBOX_EXECUTE, "ok", key=INTERNAL_KEY)).value == "ok"
    (logged,) = [r for r in caplog.records if r.name == "genmesh.runtime.telemetry"]
    assert "observe a response" in logged.getMessage() and logged.exc_info


def test_only_interceptors_that_run_per_call_are_taken() -> None:
    keys = KeyStore()
    with pytest.raises(TypeError, match="once per method, not once per call"):
        server_interceptors(keys, None, Plain())  # type: ignore[arg-type]
    assert server_interceptors(keys, None, Asked())[-1].__class__ is Asked


async def test_each_method_is_wrapped_once(server: Server, channel: grpc.aio.Channel) -> None:
    for _ in range(3):
        assert (await call(channel, "Answer", "ok")).value == "ok"
        assert [r.value async for r in call(channel, "Words", "x")] == ["x"]
    # The outermost interceptor keeps the wrapped handler: later calls skip the whole chain.
    assert sorted(server.asked.methods) == [f"/{PROBE}/Answer", f"/{PROBE}/Words"]
