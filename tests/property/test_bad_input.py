"""No input ends INTERNAL: requests built from the descriptors of every public RPC, sent to a real
mesh, each get a coded status (INVALID_ARGUMENT with field violations naming what is wrong,
NOT_FOUND, ...) or an answer, and every process keeps serving.

Examples are derived from a fixed seed and nothing is saved between runs, so CI sees the same
requests every time; the cases that found bugs stay below as plain regression tests.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import genmesh.v1
from genmesh.router.validation import MAX_JSON_DEPTH
from genmesh.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    catalog_pb2,
    common_pb2,
    generation_pb2,
    program_pb2,
    tokenizer_pb2,
)
from tests.property.conftest import Mesh
from tests.property.strategies import messages, nested, prompt, to_struct
from tests.support import API_KEY

KEY = (("x-api-key", API_KEY),)
# Served by the modality services and the sandbox to the router only.
INTERNAL_SERVICES = {"genmesh.v1.InferenceService", "genmesh.v1.SandboxService"}
BACKEND_SERVICES = {
    "ttt": INTERNAL_SERVICES - {"genmesh.v1.SandboxService"},
    "tti": INTERNAL_SERVICES - {"genmesh.v1.SandboxService"},
    "audio": INTERNAL_SERVICES - {"genmesh.v1.SandboxService"},
    "sandbox": {"genmesh.v1.SandboxService"},
}
CALL_TIMEOUT_S = 20.0
MESSAGE_LIMIT = 64 << 20
# Examples per RPC: more where a request has more fields and reaches more code.
EXAMPLES = {"Generate": 300, "GenerateStream": 150, "Converse": 150, "Run": 100, "Execute": 100}
OTHER_EXAMPLES = 40


def public_methods() -> list[descriptor.MethodDescriptor]:
    """Every method of every genmesh.v1 service but the internal ones."""
    found: dict[str, descriptor.MethodDescriptor] = {}
    for module_info in pkgutil.iter_modules(genmesh.v1.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"genmesh.v1.{module_info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name not in INTERNAL_SERVICES:
                found.update({m.full_name: m for m in service.methods})
    return [found[name] for name in sorted(found)]


METHODS = public_methods()


def requests(method: descriptor.MethodDescriptor) -> st.SearchStrategy[list[Message]]:
    """One request, or for a client stream several, usually led by the message a stream
    opens with."""
    if not method.client_streaming:
        return st.lists(messages(method.input_type), min_size=1, max_size=1)
    any_message = messages(method.input_type)
    return st.one_of(
        st.lists(any_message, max_size=4),
        st.tuples(messages(method.input_type, opening=True), st.lists(any_message, max_size=3)).map(
            lambda pair: [pair[0], *pair[1]]
        ),
    )


def serialize(message: Message) -> bytes:
    return message.SerializeToString()


def invoke(
    channel: grpc.Channel, method: descriptor.MethodDescriptor, sent: Sequence[Message]
) -> grpc.RpcError | None:
    """Sends the request(s), reads every response; the error the call ended with, if any."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    options: dict[str, Any] = {"metadata": KEY, "timeout": CALL_TIMEOUT_S}
    responses: Iterable[Any]
    try:
        if method.client_streaming:
            responses = channel.stream_stream(path, serialize)(iter(sent), **options)
        elif method.server_streaming:
            responses = channel.unary_stream(path, serialize)(sent[0], **options)
        else:
            channel.unary_unary(path, serialize)(sent[0], **options)
            return None
        for _ in responses:
            pass
    except grpc.RpcError as error:
        return error
    return None


def violations(error: grpc.Call) -> list[str]:
    """The fields the status's BadRequest details name."""
    status = rpc_status.from_call(error)
    fields: list[str] = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.extend(v.field for v in bad_request.field_violations)
    return fields


def assert_clear(error: grpc.RpcError | None) -> None:
    """A coded status, never INTERNAL or UNKNOWN; INVALID_ARGUMENT names the fields."""
    if error is None:
        return
    assert isinstance(error, grpc.Call)
    code = error.code()
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.details()
    if code != grpc.StatusCode.INVALID_ARGUMENT:
        return
    assert violations(error), f"INVALID_ARGUMENT without field violations: {error.details()}"


def assert_serving(mesh: Mesh) -> None:
    """Every process is alive and reports SERVING, overall and for each of its services."""
    public = {m.containing_service.full_name for m in METHODS}
    for name, process in mesh.processes().items():
        assert process.popen.poll() is None, f"{name} exited:\n{process.logs()}"
        with grpc.insecure_channel(process.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ["", *BACKEND_SERVICES.get(name, public)]:
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, (name, service)


@pytest.fixture(scope="module")
def channel(mesh: Mesh) -> Iterator[grpc.Channel]:
    limits = [
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ]
    with grpc.insecure_channel(mesh.router.address, options=limits) as opened:
        yield opened


def test_every_public_service_is_covered() -> None:
    services = {m.containing_service.name for m in METHODS}
    assert services == {
        "GenerationService",
        "AgentService",
        "CatalogService",
        "TokenizerService",
        "EmbeddingService",
    }


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name.removeprefix("genmesh.v1."))
def test_no_input_ends_internal(
    mesh: Mesh, channel: grpc.Channel, method: descriptor.MethodDescriptor
) -> None:
    @settings(
        max_examples=EXAMPLES.get(method.name, OTHER_EXAMPLES),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(requests(method))
    def check(sent: list[Message]) -> None:
        assert_clear(invoke(channel, method, sent))
        assert mesh.router.popen.poll() is None, mesh.router.logs()

    check()
    assert_serving(mesh)


def generate(**fields: Any) -> common_pb2.GenerateRequest:
    return common_pb2.GenerateRequest(inputs=[prompt("hello")], **fields)


def extra(values: dict[str, Any]) -> common_pb2.GenerateRequest:
    request = generate()
    request.extra.update(values)
    return request


def undecodable_config() -> generation_pb2.ConverseRequest:
    """A message nested too deep to decode (built in place: copying it would decode it)."""
    message = generation_pb2.ConverseRequest()
    message.config.extra.update({"k": nested(36)})
    return message


def converse(*messages: generation_pb2.ConverseRequest) -> list[Message]:
    first = generation_pb2.ConverseRequest(config=generate(personality="illustrator"))
    return [first, *messages]


CLIENT_CALL = agent_pb2.RunRequest(
    start=agent_pb2.RunStart(
        program=program_pb2.Program(
            code="search(q='x')", client_functions="def search(q: str = None): ..."
        )
    )
)


def undecodable_result() -> agent_pb2.RunRequest:
    message = agent_pb2.RunRequest()
    message.result.call_id = 1
    message.result.value.struct_value.update({"k": nested(36)})
    return message


# What the property test found, each as it was found: the RPC, the request, and the status and
# field it now gets (in brackets, what it got before).
FOUND: dict[str, tuple[str, Message | list[Message], grpc.StatusCode, str]] = {
    # [INTERNAL in the echo engine] a NaN where the engine reads a number
    "NaN in extra": (
        "GenerationService.Generate",
        extra({"delay_ms": math.nan}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "extra",
    ),
    # [INVALID_ARGUMENT without field violations, from ttt] deep enough for the router to
    # decode, a level too deep for the backend, which gets it wrapped in its own request
    "deep extra": (
        "GenerationService.Generate",
        extra({"": nested(33)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "extra",
    ),
    # [INVALID_ARGUMENT without field violations] too deep to decode at all
    "undecodable extra": (
        "GenerationService.Generate",
        extra({"delay_ms": nested(36)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "(request)",
    ),
    # [RESOURCE_EXHAUSTED "metadata size exceeds hard limit", no details] the name came back in
    # the status message and details, larger than trailing metadata may be
    "huge binding": (
        "GenerationService.Generate",
        generate(binding="y" * 20_000),
        grpc.StatusCode.INVALID_ARGUMENT,
        "binding",
    ),
    "huge binding to list models of": (
        "CatalogService.ListModels",
        catalog_pb2.ListModelsRequest(binding="y" * 20_000),
        grpc.StatusCode.INVALID_ARGUMENT,
        "binding",
    ),
    "huge model": (
        "TokenizerService.Tokenize",
        tokenizer_pb2.TokenizeRequest(model="y" * 20_000, text="hi"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model",
    ),
    "huge mime type": (
        "GenerationService.Generate",
        common_pb2.GenerateRequest(
            inputs=[common_pb2.InputItem(text="x", mime_type="text/" + "y" * 20_000)]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].mime_type",
    ),
    "huge voice": (
        "GenerationService.Generate",
        generate(
            task=common_pb2.TASK_SPEECH, speech=common_pb2.SpeechParameters(voice="y" * 30_000)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "speech.voice",
    ),
    "huge media type of streamed audio": (
        "GenerationService.Converse",
        [
            generation_pb2.ConverseRequest(
                config=common_pb2.GenerateRequest(task=common_pb2.TASK_TRANSCRIPTION)
            ),
            generation_pb2.ConverseRequest(
                audio=common_pb2.AudioChunk(data=b"\0\0", mime_type="y" * 30_000)
            ),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "audio.mime_type",
    ),
    "thousands of invalid inputs": (
        "GenerationService.Generate",
        common_pb2.GenerateRequest(
            inputs=[common_pb2.InputItem(mime_type="text/" + "\u00e9" * 200)] * 5000
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].mime_type",
    ),
    # [NOT_FOUND "no model '\x01' on this service", from the backend]
    "control character in a model name": (
        "CatalogService.GetModelInfo",
        catalog_pb2.GetModelInfoRequest(binding="echo", model="\x01"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model",
    ),
    # [UNIMPLEMENTED "audio models have no tokenizer"]
    "tokenizer of a speech binding": (
        "TokenizerService.Detokenize",
        tokenizer_pb2.DetokenizeRequest(binding="piper", tokens=[104]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "binding",
    ),
    # [OK with no bindings: a filter no binding can match]
    "task outside the enum in a filter": (
        "CatalogService.ListBindings",
        catalog_pb2.ListBindingsRequest(task=38),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
        "task",
    ),
    # [DEADLINE_EXCEEDED, the stream held open for ever] a message after the first that did not
    # parse ended the reading of the stream but not the conversation or the run
    "undecodable message in a conversation": (
        "GenerationService.Converse",
        converse(undecodable_config()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "(request)",
    ),
    "undecodable message in a transcription": (
        "GenerationService.Converse",
        [
            generation_pb2.ConverseRequest(
                config=common_pb2.GenerateRequest(task=common_pb2.TASK_TRANSCRIPTION)
            ),
            undecodable_config(),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "(request)",
    ),
    "undecodable result in a run": (
        "AgentService.Run",
        [CLIENT_CALL, undecodable_result()],
        grpc.StatusCode.INVALID_ARGUMENT,
        "(request)",
    ),
    "infinite program global": (
        "AgentService.Execute",
        agent_pb2.ExecuteRequest(
            program=program_pb2.Program(code="x", globals=to_struct({"x": math.inf}))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "program.globals",
    ),
}
BY_NAME = {m.full_name.removeprefix("genmesh.v1."): m for m in METHODS}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_what_the_property_test_found(mesh: Mesh, channel: grpc.Channel, case: str) -> None:
    method, sent, code, field = FOUND[case]
    error = invoke(channel, BY_NAME[method], sent if isinstance(sent, list) else [sent])
    assert isinstance(error, grpc.Call), "the request was served"
    assert error.code() == code, error.details()
    assert field in violations(error), error.details()
    assert_serving(mesh)


def test_extras_as_deep_as_allowed_are_served(channel: grpc.Channel) -> None:
    request = extra({"": nested(MAX_JSON_DEPTH)})
    assert invoke(channel, BY_NAME["GenerationService.Generate"], [request]) is None


def test_a_call_left_unanswered_when_the_client_ends_its_stream_fails_in_the_program(
    channel: grpc.Channel,
) -> None:
    """[DEADLINE_EXCEEDED, or a run held open for ever] the client declared a function and
    ended its stream without answering the call."""
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    responses = list(stub.Run(iter([CLIENT_CALL]), metadata=KEY, timeout=CALL_TIMEOUT_S))
    assert responses[-1].WhichOneof("message") == "result"
    assert "ended its stream" in responses[-1].result.error.message
