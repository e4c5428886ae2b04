"""The playground's JSON routes (/api): the mesh's messages in protobuf's JSON mapping, errors
with their gRPC status and details, and a client that leaves cancelling the generation."""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Any

from tests.edge.conftest import raw
from tests.support import API_KEY, ServiceProcess

# Long enough for the slow echo to still be streaming when the client leaves.
LONG_PROMPT = "word " * 400


def post(edge: ServiceProcess, path: str, body: Any) -> Any:
    return raw(edge, "POST", path, json.dumps(body).encode())


def text_request(binding: str, text: str) -> dict[str, Any]:
    prompt = {"kind": "CONTENT_KIND_TEXT", "role": "INPUT_ROLE_USER_PROMPT", "text": text}
    return {"task": "TASK_TEXT", "binding": binding, "inputs": [prompt]}


def test_generate_answers_the_response_message(playground: ServiceProcess) -> None:
    answer = post(playground, "/api/generate", text_request("echo", "hello api"))
    assert answer.status == 200, answer.body
    body = answer.json()
    assert body["binding"] == "echo"
    assert "hello api" in body["outputs"][0]["text"]
    assert body["finish_reason"] == "FINISH_REASON_STOP"


def test_a_mesh_error_carries_its_status_and_details(playground: ServiceProcess) -> None:
    answer = post(playground, "/api/generate", text_request("no-such-binding", "hi"))
    assert answer.status == 404
    error = answer.json()["error"]
    assert error["code"] == "NOT_FOUND"
    assert error["reason"] == "BINDING_NOT_FOUND"
    assert "no-such-binding" in error["message"]


def test_a_body_that_is_not_the_message_is_a_400(playground: ServiceProcess) -> None:
    answer = post(playground, "/api/generate", {"task": "TASK_NONE"})
    assert answer.status == 400
    assert "GenerateRequest" in answer.json()["error"]["message"]


def test_catalog_lists_every_kind(playground: ServiceProcess) -> None:
    answer = raw(playground, "GET", "/api/catalog")
    assert answer.status == 200, answer.body
    catalog = answer.json()
    tasks = {task for binding in catalog["bindings"] for task in binding["tasks"]}
    assert {"TASK_TEXT", "TASK_IMAGE", "TASK_SPEECH", "TASK_TRANSCRIPTION"} <= tasks
    assert any(m["voices"] for m in catalog["models"])
    assert {f["name"] for f in catalog["functions"]} >= {"generate_text", "speak"}


def test_status_reads_the_router_metrics(playground: ServiceProcess) -> None:
    post(playground, "/api/generate", text_request("echo", "counted"))
    status = raw(playground, "GET", "/api/status").json()
    assert status["router"]["serving"]
    [router] = status["services"]
    assert router["up"], router
    assert router["requests"] >= 1
    # One admission queue per binding, each empty now.
    assert router["queues"]["echo"] == 0
    assert set(router["queues"]) >= {"smollm2", "shapes", "piper", "whisper"}


def test_leaving_a_stream_cancels_the_generation(
    playground: ServiceProcess, ttt: ServiceProcess
) -> None:
    request_id = f"playground-leave-{uuid.uuid4().hex[:8]}"
    connection = http.client.HTTPConnection(playground.address, timeout=60)
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": "application/json",
        "X-Request-Id": request_id,
    }
    body = json.dumps(text_request("echo", LONG_PROMPT))
    connection.request("POST", "/api/generate:stream", body, headers)
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")
    connection.close()
    ended = ttt.wait_for_event("generation ended", request_id=request_id)
    assert "cancel" in ended["outcome"]


def test_a_path_no_route_serves_is_a_json_404(playground: ServiceProcess) -> None:
    for method in ("GET", "POST"):
        answer = raw(playground, method, "/v1/no-such-route", b"{}")
        assert answer.status == 404
        assert answer.json()["error"]["type"] == "not_found_error"
