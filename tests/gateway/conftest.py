"""The REST gateway in front of the session's router (tests/conftest.py), and a small
JSON-over-HTTP helper on the standard library.
"""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.gateway.process import GatewayProcess
from tests.support import API_KEY, ServiceProcess

CORS_ORIGIN = "http://app.example"
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: Any


class Rest:
    """JSON requests to the gateway, each on a fresh connection."""

    def __init__(self, port: int, api_key: str) -> None:
        self.port = port
        self.api_key = api_key

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def headers(self, key: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **(extra or {})}
        if key is not None:
            headers["X-API-Key"] = key
        return headers

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        raw: bytes | None = None,
        key: str | None = "",
        headers: dict[str, str] | None = None,
    ) -> Response:
        """`key=""` sends the mesh's key, `None` sends none; `raw` sends bytes as they are."""
        payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
        conn = self.connection()
        try:
            conn.request(
                method, path, payload, self.headers(self.api_key if key == "" else key, headers)
            )
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        parsed = json.loads(data) if data.strip() else None
        return Response(response.status, response.headers, parsed)

    @contextlib.contextmanager
    def stream(self, path: str, body: object) -> Iterator[http.client.HTTPResponse]:
        """The open response of a streaming call, to read line by line; closed on exit."""
        conn = self.connection()
        try:
            conn.request("POST", path, json.dumps(body).encode(), self.headers(self.api_key))
            yield conn.getresponse()
        finally:
            conn.close()


@pytest.fixture(scope="session")
def rest(router: ServiceProcess) -> Iterator[Rest]:
    gateway = GatewayProcess(
        router.address, f"-cors-origins={CORS_ORIGIN}", f"-max-body-bytes={MAX_BODY_BYTES}"
    )
    yield Rest(gateway.port, API_KEY)
    gateway.terminate()
