"""Size limits, against an edge with tiny ones in front of the real media services: a request
too large for the edge or the router is the client's 413 (before it is read whole), an answer
too large for the channel is a 502, and neither reads as an overload (429, which clients retry).
"""

from __future__ import annotations

import http.client
import io
import json
import random
from collections.abc import Iterator

from PIL import Image

from tests.edge.conftest import SMALL_LIMIT, SMALL_UPLOAD, Raw, multipart, raw
from tests.support import API_KEY, ServiceProcess


def post_form(edge: ServiceProcess, path: str, body: bytes, kind: str) -> Raw:
    return raw(edge, "POST", path, body, {"Content-Type": kind})


def test_a_body_over_the_limit_is_413_before_it_is_read(small_edge: ServiceProcess) -> None:
    prompt = "x" * SMALL_LIMIT
    body = json.dumps({"model": "any", "messages": [{"role": "user", "content": prompt}]})
    answer = raw(small_edge, "POST", "/v1/chat/completions", body.encode())
    assert answer.status == 413
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert raw(small_edge, "GET", "/health").json() == {"status": "ok"}


def test_a_chunked_body_over_the_limit_is_413(small_edge: ServiceProcess) -> None:
    """No Content-Length to refuse it by: the edge counts what arrives."""

    def pieces() -> Iterator[bytes]:
        yield b'{"model": "any", "prompt": "'
        for _ in range(2 * SMALL_LIMIT // 1024):
            yield b"y" * 1024
        yield b'"}'

    connection = http.client.HTTPConnection(small_edge.address, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        connection.request(
            "POST", "/v1/completions", body=pieces(), headers=headers, encode_chunked=True
        )
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"]["type"] == "invalid_request_error"
    finally:
        connection.close()


def test_an_upload_over_its_limit_is_413_naming_it(small_edge: ServiceProcess) -> None:
    audio = b"RIFF" + bytes(SMALL_UPLOAD + 1024)
    body, kind = multipart({"model": "whisper-1"}, {"file": ("big.wav", audio, "audio/wav")})
    assert len(body) < SMALL_LIMIT
    answer = post_form(small_edge, "/v1/audio/transcriptions", body, kind)
    assert answer.status == 413
    assert answer.json()["error"]["param"] == "file"


def test_a_request_too_large_for_the_router_is_413_not_429(small_edge: ServiceProcess) -> None:
    """A small JPEG of noise is sent on as a PNG several times its size, over the message
    limit: refused before the call, naming the image."""
    noise = random.Random(7).randbytes(160 * 160 * 3)
    picture = Image.frombytes("RGB", (160, 160), noise)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=20)
    assert len(out.getvalue()) < SMALL_UPLOAD
    body, kind = multipart(
        {"prompt": "a circle", "model": "shapes"},
        {"image": ("in.jpg", out.getvalue(), "image/jpeg")},
    )
    answer = post_form(small_edge, "/v1/images/edits", body, kind)
    assert answer.status == 413, answer.body
    assert answer.json()["error"]["param"] == "image"


def test_an_answer_too_large_for_the_channel_is_502_not_429(small_edge: ServiceProcess) -> None:
    """A few seconds of WAV are more than the small edge takes from the router."""
    text = "This sentence, spoken slowly, makes more audio than the edge will take."
    body = json.dumps({"model": "piper", "input": text, "voice": "alloy", "response_format": "wav"})
    answer = raw(small_edge, "POST", "/v1/audio/speech", body.encode())
    assert answer.status == 502, answer.body
    assert "retry-after" not in answer.headers
    assert answer.json()["error"]["type"] == "upstream_error"
