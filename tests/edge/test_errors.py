"""Every error the edge answers is in OpenAI's shape with the status OpenAI's clients act on;
bad input never gets a 500 and never stops the edge; a client that leaves cancels the work."""

from __future__ import annotations

import http.client
import json
import math
import time
import uuid
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from genmesh.cli.up import edge_env
from tests.edge.conftest import AGENT_ONLY_KEY, edge_process, raw, sdk
from tests.support import API_KEY, ServiceProcess

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
SHORT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ok"}]
LONG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * 1000}]


def error_of(caught: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body = caught.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=USER)
    assert error_of(caught)["code"] == "model_not_found"
    assert error_of(caught)["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_bad_or_missing_key_is_401(edge: ServiceProcess) -> None:
    with sdk(edge, key="gm-wrong") as client, pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="echo", messages=USER)
    assert error_of(caught)["code"] == "invalid_api_key"
    answer = raw(edge, "GET", "/v1/models", headers={"Authorization": ""})
    assert answer.status == 401
    assert answer.json()["error"]["type"] == "authentication_error"


def test_key_without_the_scope_is_403(edge: ServiceProcess) -> None:
    with sdk(edge, key=AGENT_ONLY_KEY) as client:
        assert client.models.list().data
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model="echo", messages=USER)
    assert error_of(caught)["type"] == "permission_error"


def test_router_validation_names_the_openai_parameter(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="echo", messages=USER, max_tokens=10_000_000)
    assert error_of(caught)["param"] == "max_tokens"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "echo"}, "messages"),
        ({"model": "echo", "messages": []}, "messages"),
        ({"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "echo", "messages": USER, "temperature": 3}, "temperature"),
        ({"model": "echo", "messages": USER, "n": 0}, "n"),
        ({"model": "echo", "messages": USER, "stop": 5}, "stop"),
        ({"model": "echo", "messages": USER, "stop": ["a", 5]}, "stop[1]"),
        ({"model": "echo", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"model": "echo", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        ({"messages": USER}, "model"),
        ({"model": "echo", "messages": USER, "max_tokens": 2**31}, "max_tokens"),
        (
            {"model": "echo", "messages": USER, "max_completion_tokens": 2**40},
            "max_completion_tokens",
        ),
        ({"model": "echo", "messages": USER, "top_k": 2**40}, "top_k"),
        ({"model": "echo", "messages": USER, "seed": 2**63, "n": 2}, "seed"),
        ({"model": "echo", "messages": USER, "n": 17}, "n"),
        (
            {"model": "echo", "messages": USER, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
    ],
)
def test_invalid_bodies_are_400_naming_the_parameter(
    edge: ServiceProcess, body: dict[str, Any], param: str
) -> None:
    answer = raw(edge, "POST", "/v1/chat/completions", json.dumps(body).encode())
    assert answer.status == 400, answer.body
    error = answer.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_a_body_that_is_not_json_names_no_parameter(edge: ServiceProcess) -> None:
    answer = raw(edge, "POST", "/v1/chat/completions", b'{"model": "echo", "messages": [}')
    assert answer.status == 400
    assert answer.json()["error"]["param"] is None


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "hi", "max_tokens": 2**31}, "max_tokens"),
        ("/v1/completions", {"prompt": ["a", "b", "c", "d", "e"], "n": 4}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "n": 17}, "n"),
        ("/v1/images/generations", {"prompt": "x", "steps": 2**31}, "steps"),
        ("/v1/images/generations", {"prompt": "x", "seed": 2**63}, "seed"),
    ],
)
def test_out_of_range_numbers_are_400_naming_them(
    edge: ServiceProcess, path: str, body: dict[str, Any], param: str
) -> None:
    answer = raw(edge, "POST", path, json.dumps({"model": "echo", **body}).encode())
    assert answer.status == 400, answer.body
    assert answer.json()["error"]["param"] == param


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def tool(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


LONE = "hi \ud83d"  # half of an emoji: JSON carries it, UTF-8 and protobuf cannot
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": LONE}}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONE}]}, "messages[0]"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]},
            "messages[0]",
        ),
        (
            "/v1/chat/completions",
            {"messages": [*USER, {"role": "assistant", "tool_calls": [CALL]}]},
            "messages[1]",
        ),
        (
            "/v1/chat/completions",
            {"messages": [*USER, {"role": "tool", "tool_call_id": LONE, "content": "x"}]},
            "messages[1]",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": LONE}}]}
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        ("/v1/chat/completions", {"messages": USER, "personality": LONE}, "personality"),
        ("/v1/completions", {"prompt": LONE}, "prompt"),
        ("/v1/completions", {"prompt": ["ok", LONE]}, "prompt"),
        ("/v1/images/generations", {"prompt": LONE}, "prompt"),
        # Nested deeper than a protobuf message may be, a number JSON has no room for, and the
        # literals Python's JSON reads but JSON has not.
        (
            "/v1/chat/completions",
            {"messages": USER, "response_format": schema_format(nested(40))},
            "response_format",
        ),
        (
            "/v1/chat/completions",
            {"messages": USER, "tools": [tool(nested(40))]},
            "tools[0].function.parameters",
        ),
        (
            "/v1/chat/completions",
            {"messages": USER, "response_format": schema_format({"maximum": 10**400})},
            "response_format",
        ),
        (
            "/v1/chat/completions",
            {"messages": USER, "response_format": schema_format({"maximum": math.nan})},
            "response_format",
        ),
        (
            "/v1/chat/completions",
            {"messages": USER, "tools": [tool({"type": "object", "maximum": math.inf})]},
            "tools[0].function.parameters",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}, ""),
        ("/v1/images/generations", {"prompt": "x", "size": "0x0"}, "size"),
    ],
)
def test_values_protobuf_cannot_carry_are_400_naming_them(
    edge: ServiceProcess, path: str, body: dict[str, Any], param: str
) -> None:
    """Each of these was a 500 or a 502 (which SDKs retry), or, for a user message with no
    content, a 200 OpenAI does not give."""
    answer = raw(edge, "POST", path, json.dumps({"model": "echo", **body}).encode())
    assert answer.status == 400, answer.body
    error = answer.json()["error"]
    assert error["param"] == (param or "messages[0].content"), error
    assert error["type"] == "invalid_request_error"


def test_a_request_over_the_routers_limit_is_413_as_over_the_edges(edge: ServiceProcess) -> None:
    """9 MiB: within the edge's body limit (16 MiB), over the router's request limit (8 MiB),
    which it answered with a 400 where a larger body got a 413."""
    huge = [{"role": "user", "content": "x" * (9 << 20)}]
    answer = raw(
        edge,
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": "echo", "messages": huge}).encode(),
    )
    assert answer.status == 413, answer.body
    assert answer.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("model", ["/", "/echo", "//echo"])
def test_a_model_name_without_a_binding_is_404_not_the_default(
    edge: ServiceProcess, model: str
) -> None:
    body = json.dumps({"model": model, "messages": USER}).encode()
    answer = raw(edge, "POST", "/v1/chat/completions", body)
    assert answer.status == 404, answer.body
    assert answer.json()["error"]["param"] == "model"
    assert raw(edge, "GET", f"/v1/models/{model}").status == 404


def test_seeds_of_every_choice_must_fit(client: OpenAI) -> None:
    """Choice i samples with seed + i: the largest seed takes one choice, the next one two."""
    completion = client.chat.completions.create(model="echo", messages=USER, seed=2**63 - 1)
    assert completion.choices[0].message.content == "hello"
    completion = client.chat.completions.create(model="echo", messages=USER, n=2, seed=2**63 - 2)
    assert [c.index for c in completion.choices] == [0, 1]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="echo", messages=USER, n=2, seed=2**63 - 1)
    assert error_of(caught)["param"] == "seed"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer gm-bad\tkey"},
        {"Authorization": "Bearer gm-bad\xe9key"},
        {"Authorization": "", "x-api-key": "gm-bad\tkey"},
        # Too long to travel as gRPC metadata: the router's refusal read as a 429 to retry.
        {"Authorization": "Bearer gm-" + "k" * 20_000},
    ],
)
def test_a_key_with_control_or_non_ascii_characters_is_401(
    edge: ServiceProcess, headers: dict[str, str]
) -> None:
    body = json.dumps({"model": "echo", "messages": USER}).encode()
    answer = raw(edge, "POST", "/v1/chat/completions", body, headers)
    assert answer.status == 401, answer.body
    assert answer.json()["error"]["code"] == "invalid_api_key"


def test_a_header_http_does_not_allow_is_400(edge: ServiceProcess) -> None:
    """DEL is not a header value character: the HTTP parser refuses the request itself."""
    body = json.dumps({"model": "echo", "messages": USER}).encode()
    answer = raw(edge, "POST", "/v1/chat/completions", body, {"Authorization": "Bearer a\x7fb"})
    assert answer.status == 400, answer.body


def test_an_unusable_request_id_is_replaced(edge: ServiceProcess) -> None:
    body = json.dumps({"model": "echo", "messages": USER}).encode()
    answer = raw(edge, "POST", "/v1/chat/completions", body, {"X-Request-Id": "bad\tid"})
    assert answer.status == 200, answer.body
    assert answer.headers["x-request-id"] != "bad\tid"
    assert answer.headers["x-request-id"].isprintable()


def test_the_longest_request_id_works_with_several_choices(edge: ServiceProcess) -> None:
    request_id = "r" * 128
    body = json.dumps({"model": "echo", "messages": USER, "n": 3}).encode()
    answer = raw(edge, "POST", "/v1/chat/completions", body, {"X-Request-Id": request_id})
    assert answer.status == 200, answer.body
    assert answer.headers["x-request-id"] == request_id
    assert len(answer.json()["choices"]) == 3


def test_an_openai_model_name_of_another_task_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="whisper-1", messages=USER)
    assert error_of(caught)["param"] == "model"


def test_a_wrong_method_is_405_with_allow(edge: ServiceProcess) -> None:
    answer = raw(edge, "GET", "/v1/chat/completions")
    assert answer.status == 405
    assert answer.headers["allow"] == "POST"
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"messages": [*USER, {"role": "function", "content": "x", "name": "f"}]}, ""),
    ],
)
def test_what_genmesh_does_not_serve_yet_is_400_naming_it(
    client: OpenAI, options: dict[str, Any], param: str
) -> None:
    request: dict[str, Any] = {"model": "echo", "messages": USER, **options}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**request)
    error = error_of(caught)
    assert error["code"] == "unsupported_parameter"
    assert error["param"] == (param or "messages[1].role")


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"logit_bias": {"cat": 1}}, "logit_bias"),
        ({"logit_bias": {"1" * 5000: 1}}, "logit_bias"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"logit_bias": {"104": 101}}, "logit_bias[104]"),
        ({"logit_bias": {str(0x110000): 1}}, "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
        ({"logit_bias": {"007": 1, "7": -1}}, "logit_bias"),
        ({"logit_bias": {"7": True}}, "logit_bias.7"),
    ],
)
def test_penalties_and_bias_out_of_range_are_400_naming_them(
    client: OpenAI, options: dict[str, Any], param: str
) -> None:
    """The echo model's token ids are code points: 0x110000 is none."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="echo", messages=USER, **options)
    assert error_of(caught)["param"] == param


def test_malformed_requests_are_400_and_the_edge_keeps_serving(edge: ServiceProcess) -> None:
    for path, body in [
        ("/v1/chat/completions", b"{not json"),
        ("/v1/chat/completions", b"[1, 2]"),
        ("/v1/chat/completions", json.dumps({"model": "echo", "messages": USER}).encode()),
        ("/v1/completions", json.dumps({"model": "echo", "prompt": [[1, 2], []]}).encode()),
        ("/v1/completions", json.dumps({"model": "echo", "prompt": [-1, 2]}).encode()),
        ("/v1/completions", json.dumps({"model": "echo", "prompt": [0xD800]}).encode()),
        ("/v1/completions", json.dumps({"model": "echo", "prompt": [True, False]}).encode()),
        ("/v1/completions", json.dumps({"model": "echo", "prompt": "a", "best_of": 0}).encode()),
        ("/v1/completions", json.dumps({"model": "echo", "prompt": []}).encode()),
        ("/v1/images/generations", b"\xff\xfe"),
        ("/v1/audio/transcriptions", b"--no-boundary--"),
    ]:
        # The chat with a valid body names no media type: a body is JSON only when it says so.
        kind = "" if b'"messages"' in body else "application/json"
        answer = raw(edge, "POST", path, body, {"Content-Type": kind})
        assert answer.status == 400, (path, body, answer.body)
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert raw(edge, "GET", "/v1/no/such/path").status == 404
    assert raw(edge, "GET", "/v1/no/such/path").json()["error"]["type"] == "not_found_error"
    assert raw(edge, "GET", "/health").json() == {"status": "ok"}


def test_down_backend_is_503_retry_later(client: OpenAI) -> None:
    """Retry-After even though the router sent no delay; nothing of gRPC in the message."""
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="down", messages=USER)
    assert caught.value.status_code == 503
    assert int(caught.value.response.headers["retry-after"]) >= 1
    message = error_of(caught)["message"]
    assert "127.0.0.1" not in message
    assert "ipv4" not in message


def test_full_binding_is_429_with_retry_after(client: OpenAI) -> None:
    """`busy` runs one generation and queues none."""
    holder = client.chat.completions.create(model="busy", messages=LONG, stream=True)
    try:
        next(iter(holder))
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="busy", messages=USER)
        assert int(caught.value.response.headers["retry-after"]) >= 1
        assert error_of(caught)["code"] == "rate_limit_exceeded"
    finally:
        holder.close()


@pytest.mark.parametrize("stream", [False, True])
def test_more_prompts_than_the_binding_admits_are_served_in_waves(
    client: OpenAI, stream: bool
) -> None:
    """`busy` admits one generation: a list of three prompts was refused by its own first
    prompt (429 with Retry-After, every time, on an idle mesh)."""
    prompts = ["ab", "cd", "ef"]
    if stream:
        chunks = list(client.completions.create(model="busy", prompt=prompts, stream=True))
        texts = {
            i: "".join(c.choices[0].text for c in chunks if c.choices[0].index == i)
            for i in range(3)
        }
    else:
        completion = client.completions.create(model="busy", prompt=prompts)
        texts = {c.index: c.text for c in completion.choices}
    assert texts == dict(enumerate(prompts))
    # Held by another client, the binding still refuses the batch rather than making it wait.
    holder = client.chat.completions.create(model="busy", messages=LONG, stream=True)
    try:
        next(iter(holder))
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="busy", prompt=prompts, stream=stream)
    finally:
        holder.close()


def test_deadline_from_the_client_timeout_is_504(edge: ServiceProcess) -> None:
    """The SDK says how long it waits; the generation stops a little before, so the client
    hears why instead of timing out."""
    with sdk(edge, timeout=8.0) as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="slow", messages=LONG, max_tokens=1000)
    assert caught.value.status_code == 504
    assert error_of(caught)["type"] == "timeout_error"


def test_a_client_timeout_of_centuries_is_no_deadline(edge: ServiceProcess) -> None:
    """It overflowed gRPC's deadline, which then had already passed: an instant 504."""
    body = json.dumps({"model": "echo", "messages": USER}).encode()
    headers = {"x-stainless-read-timeout": "1e10"}
    answer = raw(edge, "POST", "/v1/chat/completions", body, headers)
    assert answer.status == 200, answer.body


def test_a_stream_outlasts_the_sdk_read_timeout(edge: ServiceProcess) -> None:
    """The SDK's timeout bounds each read, not the stream: 240 characters at 20 ms each stream
    for longer than the 3 s the client names, and all of them arrive."""
    prompt = "y" * 240
    with sdk(edge, timeout=3.0) as client:
        stream = client.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": prompt}], stream=True
        )
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == prompt
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]


def test_a_queued_stream_starts_at_once_and_notices_its_client_leaving(
    client: OpenAI, edge: ServiceProcess, ttt: ServiceProcess
) -> None:
    """`queued` runs one generation at a time: a stream waiting behind a long one gets its SSE
    headers while it waits, and when its client leaves it never runs."""
    holder_id = f"edge-holder-{uuid.uuid4().hex[:8]}"
    waiter_id = f"edge-waiter-{uuid.uuid4().hex[:8]}"
    holder = client.chat.completions.create(
        model="queued", messages=LONG, stream=True, extra_headers={"X-Request-Id": holder_id}
    )
    try:
        next(iter(holder))
        connection = http.client.HTTPConnection(edge.address, timeout=60)
        body = json.dumps({"model": "queued", "messages": LONG, "stream": True}).encode()
        headers = {
            "Authorization": f"Bearer {API_KEY}",
            "Content-Type": "application/json",
            "X-Request-Id": waiter_id,
        }
        connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("content-type", "").startswith("text/event-stream")
        # The holder is still generating: the headers did not wait for the queue.
        assert all(e.get("request_id") != holder_id for e in ttt.events("generation ended"))
        connection.close()
    finally:
        holder.close()
    assert_cancelled(ttt, holder_id)
    assert client.chat.completions.create(model="queued", messages=SHORT).choices
    assert all(e.get("request_id") != waiter_id for e in ttt.events("generation ended"))


@pytest.mark.parametrize("n", [1, 2])
def test_closing_a_stream_cancels_the_generation(
    client: OpenAI, edge: ServiceProcess, ttt: ServiceProcess, n: int
) -> None:
    """Several choices are one generation: closing the stream cancels it, whichever choice
    it is on."""
    request_id = f"edge-cancel-{uuid.uuid4().hex[:8]}"
    stream = client.chat.completions.create(
        model="slow",
        messages=LONG,
        max_tokens=100_000,
        n=n,
        stream=True,
        extra_headers={"X-Request-Id": request_id},
    )
    chunks = iter(stream)
    for _ in range(3 + n):
        next(chunks)
    stream.close()
    assert_cancelled(ttt, request_id)
    assert client.chat.completions.create(model="echo", messages=USER).choices


def test_leaving_before_a_whole_answer_cancels_the_generation(
    client: OpenAI, edge: ServiceProcess, ttt: ServiceProcess
) -> None:
    """A plain HTTP client sends a non-streamed request to the one-slot binding and leaves
    once the slot is seen taken: the slot frees and the engine never finishes the answer."""
    request_id = f"edge-leave-{uuid.uuid4().hex[:8]}"
    connection = http.client.HTTPConnection(edge.address, timeout=60)
    body = json.dumps({"model": "busy", "messages": LONG}).encode()
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": "application/json",
        "X-Request-Id": request_id,
    }
    connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
    wait_until_busy(client)
    connection.close()
    assert wait_until_free(client).choices
    # The engine runs one generation at a time and has just run another: this one was cancelled,
    # or never started when the client left before the engine read it.
    ended = [e for e in ttt.events("generation ended") if e.get("request_id") == request_id]
    assert all("cancel" in e["outcome"] for e in ended)
    # The handler ended by the edge's own rule for a client that left, not with an exception.
    assert "Exception in ASGI application" not in edge.logs()
    assert "CancelledError" not in edge.logs()


def test_sigterm_stops_the_edge_cleanly(echo_router: ServiceProcess) -> None:
    process = edge_process(echo_router)
    assert raw(process, "GET", "/health").status == 200
    assert process.terminate() == 0
    assert "Traceback" not in process.logs()


def test_genmesh_up_gives_the_edge_no_mesh_keys() -> None:
    env = edge_env({"GENMESH_API_KEY": "a", "GENMESH_INTERNAL_KEY": "b", "GENMESH_CONFIG": "c"})
    assert env == {"GENMESH_CONFIG": "c"}


def assert_cancelled(ttt: ServiceProcess, request_id: str) -> None:
    """The engine logs that the generation was cancelled, well before its 1000 tokens."""
    ended = ttt.wait_for_event("generation ended", request_id=request_id)
    assert "cancel" in ended["outcome"]
    assert ended["completion_tokens"] < 1000


def wait_until_busy(client: OpenAI, attempts: int = 400) -> None:
    for _ in range(attempts):
        try:
            client.chat.completions.create(model="busy", messages=SHORT)
        except openai.RateLimitError:
            return
        time.sleep(0.05)
    raise AssertionError("the busy binding never filled")


def wait_until_free(client: OpenAI, attempts: int = 400) -> ChatCompletion:
    for _ in range(attempts):
        try:
            return client.chat.completions.create(model="busy", messages=SHORT)
        except openai.RateLimitError:
            time.sleep(0.05)
    raise AssertionError("the busy binding never freed")
