"""`InputItem.uri` is resolved by a real router in front of the echo engine, which echoes the
prompt: a reply equal to the URI's content shows the backend got the content, not the URI."""

from __future__ import annotations

import base64
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from genmesh.client import Client, error_details
from genmesh.v1 import common_pb2, generation_pb2
from tests.support import API_KEY, ServiceProcess, echo_binding, router_config

MAX_URI_BYTES = 1024
TEXT = common_pb2.CONTENT_KIND_TEXT
PAGES: dict[str, tuple[int, bytes, dict[str, str]]] = {
    "/prompt.txt": (200, b"from the web", {"Content-Type": "text/plain; charset=utf-8"}),
    "/big.txt": (200, b"x" * (MAX_URI_BYTES + 1), {"Content-Type": "text/plain"}),
    "/moved": (302, b"", {"Location": "http://example.com/prompt.txt"}),
}


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    """A local web server with a few pages; anything else is 404."""

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body, headers = PAGES.get(self.path, (404, b"", {}))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the tests look at what the router made of the pages."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An allowed root with a prompt, a file too large, a symlink out and a FIFO; a secret
    beside the root."""
    base = tmp_path_factory.mktemp("inputs")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "prompt.txt").write_text("from a file")
    (root / "sub" / "héllo wörld.txt").write_text("from a sub folder")
    (root / "big.txt").write_bytes(b"x" * (MAX_URI_BYTES + 1))
    (base / "secret.txt").write_text("outside the root")
    (root / "escape.txt").symlink_to(base / "secret.txt")
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture(scope="module")
def closed() -> str:
    """An allowed host where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
async def allowed(ttt: ServiceProcess, files: Path, web: str, closed: str) -> AsyncIterator[Client]:
    """A client of a router that allows the test's files and web servers."""
    inputs = {
        "file_roots": [str(files)],
        "http_hosts": [web, closed],
        "max_uri_bytes": MAX_URI_BYTES,
    }
    router = ServiceProcess("router", router_config([echo_binding(ttt.address)], inputs=inputs))
    try:
        async with Client(router.address, API_KEY) as connected:
            yield connected
    finally:
        router.terminate()


def uri_request(
    uri: str, kind: common_pb2.ContentKind.ValueType = TEXT, **item: Any
) -> common_pb2.GenerateRequest:
    prompt = common_pb2.InputItem(
        kind=kind, role=common_pb2.INPUT_ROLE_USER_PROMPT, uri=uri, **item
    )
    return common_pb2.GenerateRequest(task=common_pb2.TASK_TEXT, inputs=[prompt])


async def echoed(client: Client, uri: str, **item: Any) -> str:
    response = await client.generate(uri_request(uri, **item))
    return response.outputs[0].text


async def refused(client: Client, uri: str, **item: Any) -> tuple[grpc.StatusCode, str, str]:
    """The code, the reason and the violation of `inputs[0].uri` of a request that failed."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.generate(uri_request(uri, **item))
    details = error_details(caught.value)
    field = next(iter(details.violations), "")
    return caught.value.code(), details.reason, field


async def test_data_uris_percent_encoded_and_base64(client: Client) -> None:
    assert await echoed(client, "data:,hello%20world") == "hello world"
    encoded = base64.b64encode("ünïcode".encode()).decode()
    assert await echoed(client, f"data:text/plain;charset=utf-8;base64,{encoded}") == "ünïcode"


async def test_a_data_uri_gives_its_media_type_to_an_item_without_one(client: Client) -> None:
    code, _, field = await refused(client, "data:image/svg+xml,%3Csvg/%3E")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field == "inputs[0].mime_type"  # an image type does not fit a text item


async def test_resolved_bytes_are_checked_like_inline_ones(client: Client) -> None:
    fake = base64.b64encode(b"not a png").decode()
    code, _, field = await refused(
        client, f"data:image/png;base64,{fake}", kind=common_pb2.CONTENT_KIND_IMAGE
    )
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].data")


@pytest.mark.parametrize(
    "uri",
    ["data:text/plain;base64,@@@", "data:no-comma", "ftp://example.com/x", "gopher:x", "prompt"],
)
async def test_malformed_and_unknown_uris_are_invalid_argument(client: Client, uri: str) -> None:
    code, _, field = await refused(client, uri)
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].uri")


# Punycode is a codec that raises a bare UnicodeError: it ended INTERNAL.
@pytest.mark.parametrize(
    "uri", ["data:text/plain;charset=utf-8,%FF%FE", "data:;charset=punycode,%5Cx"]
)
async def test_text_that_is_not_in_its_charset_is_invalid_argument(
    client: Client, uri: str
) -> None:
    code, reason, field = await refused(client, uri)
    assert (code, reason, field) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "URI_INVALID",
        "inputs[0].uri",
    )


async def test_files_inside_an_allowed_root_are_read(allowed: Client, files: Path) -> None:
    assert await echoed(allowed, f"file://{files}/prompt.txt") == "from a file"
    quoted = f"file://localhost{files}/sub/h%C3%A9llo%20w%C3%B6rld.txt"
    assert await echoed(allowed, quoted) == "from a sub folder"
    assert await echoed(allowed, f"file://{files}/sub/../prompt.txt") == "from a file"


async def test_files_reached_through_a_stream_are_read(allowed: Client, files: Path) -> None:
    deltas = [
        event.text_delta.text
        async for event in allowed.generate_stream(uri_request(f"file://{files}/prompt.txt"))
        if event.HasField("text_delta")
    ]
    assert "".join(deltas) == "from a file"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("{root}/../secret.txt", "URI_NOT_ALLOWED"),
        ("{root}/escape.txt", "URI_NOT_ALLOWED"),
        ("/etc/passwd", "URI_NOT_ALLOWED"),
        ("{root}/missing.txt", "URI_UNREADABLE"),
        ("{root}/sub", "URI_UNREADABLE"),
        ("{root}/fifo", "URI_UNREADABLE"),
        ("{root}/big.txt", "URI_TOO_LARGE"),
    ],
)
async def test_nothing_outside_a_root_or_unreadable_is_read(
    allowed: Client, files: Path, path: str, reason: str
) -> None:
    code, got, field = await refused(allowed, "file://" + path.format(root=files))
    assert (code, got, field) == (grpc.StatusCode.INVALID_ARGUMENT, reason, "inputs[0].uri")


async def test_a_file_uri_naming_another_host_is_refused(allowed: Client, files: Path) -> None:
    code, _, field = await refused(allowed, f"file://example.com{files}/prompt.txt")
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].uri")


async def test_pages_of_an_allowed_host_are_fetched(allowed: Client, web: str) -> None:
    assert await echoed(allowed, f"http://{web}/prompt.txt") == "from the web"


@pytest.mark.parametrize(
    ("page", "reason"),
    [("/moved", "URI_UNREADABLE"), ("/missing", "URI_UNREADABLE"), ("/big.txt", "URI_TOO_LARGE")],
)
async def test_redirects_errors_and_large_pages_are_refused(
    allowed: Client, web: str, page: str, reason: str
) -> None:
    code, got, field = await refused(allowed, f"http://{web}{page}")
    assert (code, got, field) == (grpc.StatusCode.INVALID_ARGUMENT, reason, "inputs[0].uri")


async def test_an_allowed_host_that_does_not_answer_is_unavailable(
    allowed: Client, closed: str
) -> None:
    code, reason, _ = await refused(allowed, f"http://{closed}/prompt.txt")
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "URI_UNREACHABLE")


async def test_what_the_settings_do_not_allow_is_refused(
    client: Client, allowed: Client, files: Path, web: str
) -> None:
    port = web.rpartition(":")[2]
    cases = [
        (client, f"file://{files}/prompt.txt"),  # no roots by default
        (client, f"http://{web}/prompt.txt"),  # no hosts by default
        (allowed, f"http://localhost:{port}/prompt.txt"),  # the same server by another name
        (allowed, "https://example.com/prompt.txt"),
    ]
    for router, uri in cases:
        refusal = await refused(router, uri)
        assert refusal == (grpc.StatusCode.INVALID_ARGUMENT, "URI_NOT_ALLOWED", "inputs[0].uri")


async def test_converse_resolves_the_config_and_each_turn(allowed: Client, files: Path) -> None:
    system = common_pb2.InputItem(
        kind=TEXT, role=common_pb2.INPUT_ROLE_SYSTEM_CONTEXT, uri="data:,be%20brief"
    )
    config = common_pb2.GenerateRequest(inputs=[system])
    prompt = common_pb2.InputItem(kind=TEXT, uri=f"file://{files}/prompt.txt")
    messages = [
        generation_pb2.ConverseRequest(config=config),
        generation_pb2.ConverseRequest(
            turn=generation_pb2.ConverseTurn(turn_id="t1", inputs=[prompt])
        ),
    ]
    call = allowed.generation.Converse(iter(messages), metadata=allowed.metadata)
    finals = [r.event.final async for r in call if r.event.HasField("final")]
    assert finals[0].outputs[0].text == "from a file"
    assert finals[0].usage.prompt_tokens == len("be brief") + len("from a file")
