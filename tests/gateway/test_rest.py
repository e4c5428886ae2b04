"""The REST surface a gateway user sees: bindings, streaming, errors, the OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

from tests.gateway.conftest import CORS_ORIGIN, MAX_BODY_BYTES, Rest


def text_request(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"task": "TASK_TEXT", "inputs": [{"text": prompt}], **fields}


def test_unary_generate(rest: Rest) -> None:
    response = rest.call("POST", "/v1/generate", text_request("hello gateway", request_id="rest-1"))
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Request-Id"] == "rest-1"
    assert float(response.headers["X-Timing-Total-Ms"]) > 0
    body = response.body
    assert body["request_id"] == "rest-1"
    assert body["binding"] == "echo"
    assert [o["text"] for o in body["outputs"]] == ["hello gateway"]
    assert body["finish_reason"] == "FINISH_REASON_STOP"
    assert body["usage"]["completion_tokens"] == len("hello gateway")


def test_authorization_bearer_is_accepted(rest: Rest) -> None:
    response = rest.call(
        "POST",
        "/v1/generate",
        text_request("hi"),
        key=None,
        headers={"Authorization": f"Bearer {rest.api_key}"},
    )
    assert response.status == 200
    assert response.body["outputs"][0]["text"] == "hi"


def test_stream_is_ndjson_read_line_by_line(rest: Rest) -> None:
    with rest.stream("/v1/generate:stream", {"request": text_request("abc")}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        events = [json.loads(line)["result"]["event"] for line in response]
    deltas = [e["text_delta"]["text"] for e in events if "text_delta" in e]
    assert deltas and "".join(deltas) == "abc"  # deltas may arrive merged when the reader lags
    assert events[-1]["final"]["outputs"][0]["text"] == "abc"


def test_stream_lines_arrive_before_generation_ends(rest: Rest) -> None:
    """The echo engine takes over 15 minutes for this; the first line must not wait for the end."""
    request = text_request("x" * 1000, extra={"delay_ms": 1000}, text={"max_tokens": 1000})
    with rest.stream("/v1/generate:stream", {"request": request}) as response:
        first = json.loads(response.readline())
    assert first["result"]["event"]["text_delta"]["text"] == "x"


def test_stream_error_before_first_event_sets_the_status(rest: Rest) -> None:
    request = text_request("abc", binding="no-such-binding")
    with rest.stream("/v1/generate:stream", {"request": request}) as response:
        assert response.status == 404
        error = json.loads(response.readline())["error"]
    assert error["code"] == 5
    assert "no-such-binding" in error["message"]


def test_catalog_endpoints(rest: Rest) -> None:
    bindings = rest.call("GET", "/v1/bindings")
    assert bindings.status == 200
    assert [b["name"] for b in bindings.body["bindings"]] == ["echo"]
    assert bindings.body["bindings"][0]["tasks"] == ["TASK_TEXT"]

    filtered = rest.call("GET", "/v1/bindings?task=TASK_IMAGE")
    assert filtered.status == 200
    assert filtered.body["bindings"] == []

    models = rest.call("GET", "/v1/models")
    assert models.status == 200
    assert "echo" in [m["name"] for m in models.body["models"]]

    info = rest.call("GET", "/v1/models/echo/info")
    assert info.status == 200
    assert info.body["model"]["engine"] == "echo"
    assert info.body["model"]["context_size"] > 0

    for path, field in (("/v1/personalities", "personalities"), ("/v1/functions", "functions")):
        listed = rest.call("GET", path)
        assert listed.status == 200
        assert isinstance(listed.body[field], list)


def test_tokenizer_endpoints(rest: Rest) -> None:
    tokens = rest.call("POST", "/v1/tokenize", {"binding": "echo", "text": "hi"})
    assert tokens.status == 200
    assert tokens.body["pieces"] == ["h", "i"]
    text = rest.call("POST", "/v1/detokenize", {"binding": "echo", "tokens": tokens.body["tokens"]})
    assert text.body["text"] == "hi"
    count = rest.call("POST", "/v1/count_tokens", {"binding": "echo", "text": "hello"})
    assert count.body["count"] == 5


def test_missing_key_is_401(rest: Rest) -> None:
    response = rest.call("POST", "/v1/generate", text_request("hi"), key=None)
    assert response.status == 401
    assert response.body["code"] == 16
    assert "API key" in response.body["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_invalid_key_is_401(rest: Rest) -> None:
    for path in ("/v1/bindings", "/v1/models/echo/info"):
        response = rest.call("GET", path, key="not-a-key")
        assert response.status == 401
        assert response.body["code"] == 16


def test_bad_json_is_400_with_status_body(rest: Rest) -> None:
    response = rest.call("POST", "/v1/generate", raw=b'{"inputs": [')
    assert response.status == 400
    assert response.body["code"] == 3
    assert response.body["message"]
    assert response.body["details"] == []


def test_unknown_field_is_400(rest: Rest) -> None:
    response = rest.call("POST", "/v1/generate", {**text_request("hi"), "promt": "typo"})
    assert response.status == 400
    assert "promt" in response.body["message"]


def test_invalid_request_is_400_with_field_violations(rest: Rest) -> None:
    response = rest.call("POST", "/v1/generate", text_request("hi", text={"temperature": -1}))
    assert response.status == 400
    assert response.body["code"] == 3
    details = {d["@type"].rsplit("/", 1)[-1]: d for d in response.body["details"]}
    violations = details["google.rpc.BadRequest"]["field_violations"]
    assert any("temperature" in v["field"] for v in violations)


def test_unknown_binding_is_404_with_details(rest: Rest) -> None:
    response = rest.call("POST", "/v1/generate", text_request("hi", binding="no-such-binding"))
    assert response.status == 404
    assert response.body["code"] == 5
    types = [d["@type"] for d in response.body["details"]]
    assert "type.googleapis.com/google.rpc.ErrorInfo" in types

    info = rest.call("GET", "/v1/models/no-such-binding/info")
    assert info.status == 404


def test_unknown_path_is_404(rest: Rest) -> None:
    response = rest.call("GET", "/v1/nothing-here")
    assert response.status == 404
    assert response.body["code"] == 5


def test_oversized_body_is_413(rest: Rest) -> None:
    response = rest.call("POST", "/v1/generate", text_request("x" * MAX_BODY_BYTES))
    assert response.status == 413
    assert response.body["code"] == 3
    assert str(MAX_BODY_BYTES) in response.body["message"]


def test_openapi_document_is_served(rest: Rest) -> None:
    response = rest.call("GET", "/openapi.json", key=None)
    assert response.status == 200
    document = response.body
    assert document["info"]["title"] == "genmesh"
    assert set(document["paths"]) == {
        "/v1/generate",
        "/v1/generate:stream",
        "/v1/agent:execute",
        "/v1/bindings",
        "/v1/personalities",
        "/v1/functions",
        "/v1/models",
        "/v1/models/{binding}/info",
        "/v1/tokenize",
        "/v1/detokenize",
        "/v1/count_tokens",
        "/v1/embed",
    }
    assert document["securityDefinitions"]["ApiKey"]["name"] == "X-API-Key"


def test_health_needs_no_key(rest: Rest) -> None:
    response = rest.call("GET", "/healthz", key=None)
    assert response.status == 200
    assert response.body["status"] == "SERVING"


def test_cors_preflight_allows_the_configured_origin_only(rest: Rest) -> None:
    preflight = {
        "Origin": CORS_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key",
    }  # as browsers send it
    allowed = rest.call("OPTIONS", "/v1/generate", key=None, headers=preflight)
    assert allowed.headers["Access-Control-Allow-Origin"] == CORS_ORIGIN
    assert "x-api-key" in allowed.headers["Access-Control-Allow-Headers"].lower()

    other = {**preflight, "Origin": "http://elsewhere.example"}
    refused = rest.call("OPTIONS", "/v1/generate", key=None, headers=other)
    assert "Access-Control-Allow-Origin" not in refused.headers
