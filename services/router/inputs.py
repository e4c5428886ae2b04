"""`InputItem.uri`, resolved in the router so that backends only ever see text and bytes.

- `data:` URIs (RFC 2397), base64 or percent-encoded, always.
- `file://` URIs inside `inputs.file_roots` only. The path is resolved (symlinks, `..`) before
  the check, and the file opened without following a last symlink, so nothing outside a root
  is read; only regular files are (a FIFO or a device could block or never end).
- `http(s)://` URIs from the hosts in `inputs.http_hosts` only, without following redirects,
  within `inputs.http_timeout_seconds`.

A resolved URI holds at most `inputs.max_uri_bytes`. Text items (kind text or JSON, or a
document of a text type) get the decoded text, others the bytes; an item without a media type
takes the URI's. Refusals are INVALID_ARGUMENT naming `inputs[i].uri`; a host that cannot be
reached is UNAVAILABLE. The resolved request is checked again as at the edge, so a URI cannot
bring in what an inline payload could not.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import mimetypes
import os
import stat
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import httpx2

from genmesh.router import validation
from genmesh.router.settings import InputSettings
from genmesh.runtime import errors
from genmesh.runtime.errors import FieldViolation, ServiceError
from genmesh.v1 import common_pb2

TEXT_KINDS = (common_pb2.CONTENT_KIND_TEXT, common_pb2.CONTENT_KIND_JSON)
TEXT_TYPES = ("text/", "application/json")


def refused(field: str, description: str, reason: str = "URI_NOT_ALLOWED") -> ServiceError:
    return errors.invalid_argument(
        f"{field} cannot be used: {description}", FieldViolation(field, description), reason=reason
    )


def _charset(mime: str) -> str:
    for parameter in mime.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"')
    return "utf-8"


def parse_data_uri(field: str, uri: str) -> tuple[bytes, str]:
    """The bytes and media type of a data: URI."""
    header, comma, payload = uri[len("data:") :].partition(",")
    if not comma:
        raise refused(field, "a data: URI needs a ',' before its data", "URI_INVALID")
    parameters = header.split(";")
    encoded = parameters[-1].strip().lower() == "base64"
    if encoded:
        parameters.pop()
    mime = ";".join(parameters).strip()
    if not mime or mime.startswith(";"):
        mime = "text/plain" + mime
    raw = unquote_to_bytes(payload)
    if not encoded:
        return raw, mime
    try:
        return base64.b64decode(raw, validate=True), mime
    except binascii.Error:
        raise refused(field, "the data: URI's base64 is invalid", "URI_INVALID") from None


class InputResolver:
    """Applies `InputSettings` to the uri payloads of requests."""

    def __init__(
        self, settings: InputSettings | None = None, max_request_bytes: int = 8 * 1024 * 1024
    ) -> None:
        self.settings = settings or InputSettings()
        self.max_request_bytes = max_request_bytes
        self.roots = [root.resolve() for root in self.settings.file_roots]

    async def resolve(self, request: common_pb2.GenerateRequest) -> None:
        """Replaces each uri payload of `request` with what it points at, in place."""
        pending = [
            (index, item)
            for index, item in enumerate(request.inputs)
            if item.WhichOneof("payload") == "uri"
        ]
        if not pending:
            return
        for index, item in pending:
            field = f"inputs[{index}].uri"
            content, mime = await self._read(field, item.uri)
            self._fill(field, item, content, mime)
        validation.check_request(request, self.max_request_bytes, needs_inputs=False)

    async def _read(self, field: str, uri: str) -> tuple[bytes, str]:
        scheme = uri.partition(":")[0].lower()
        if scheme == "data":
            content, mime = parse_data_uri(field, uri)
        elif scheme == "file":
            content, mime = await asyncio.to_thread(self._read_file, field, uri)
        elif scheme in ("http", "https"):
            content, mime = await self._fetch(field, uri)
        else:
            raise refused(field, "only data:, file:// and http(s):// URIs are understood")
        self._check_size(field, len(content))
        return content, mime

    def _check_size(self, field: str, size: int) -> None:
        if size > self.settings.max_uri_bytes:
            raise refused(
                field,
                f"holds more than the limit of {self.settings.max_uri_bytes} bytes",
                "URI_TOO_LARGE",
            )

    def _read_file(self, field: str, uri: str) -> tuple[bytes, str]:
        if not self.roots:
            raise refused(field, "file:// URIs are not allowed on this router")
        parts = urlsplit(uri)
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/") or "\0" in path:
            raise refused(field, "must be file:///<absolute path>", "URI_INVALID")
        try:
            real = Path(path).resolve()
        except (OSError, RuntimeError):
            raise refused(field, "the path cannot be resolved", "URI_UNREADABLE") from None
        if not any(real.is_relative_to(root) for root in self.roots):
            raise refused(field, "is outside the folders this router may read")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            with open(os.open(real, flags), "rb") as file:
                if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                    raise refused(field, "is not a regular file", "URI_UNREADABLE")
                content = file.read(self.settings.max_uri_bytes + 1)
        except FileNotFoundError:
            raise refused(field, "no such file", "URI_UNREADABLE") from None
        except OSError as exc:
            raise refused(field, f"cannot be read ({exc.strerror})", "URI_UNREADABLE") from None
        return content, mimetypes.guess_type(real.name)[0] or ""

    def _allowed_host(self, url: httpx2.URL) -> bool:
        host = url.host.lower()
        return host in self.settings.http_hosts or (
            url.port is not None and f"{host}:{url.port}" in self.settings.http_hosts
        )

    async def _fetch(self, field: str, uri: str) -> tuple[bytes, str]:
        try:
            url = httpx2.URL(uri)
        except httpx2.InvalidURL:
            raise refused(field, "is not a valid URL", "URI_INVALID") from None
        if not self._allowed_host(url):
            raise refused(field, f"host '{url.host}' is not in this router's allowlist")
        chunks: list[bytes] = []
        try:
            async with (
                asyncio.timeout(self.settings.http_timeout_seconds),
                httpx2.AsyncClient(follow_redirects=False, trust_env=False) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise refused(field, f"answered HTTP {response.status_code}", "URI_UNREADABLE")
                length = response.headers.get("content-length", "")
                self._check_size(field, int(length) if length.isdigit() else 0)
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    self._check_size(field, size)
                    chunks.append(chunk)
                mime = response.headers.get("content-type", "")
        except (TimeoutError, httpx2.HTTPError):
            raise errors.unavailable(
                f"{field} could not be fetched from '{url.host}'", "URI_UNREACHABLE", field=field
            ) from None
        return b"".join(chunks), mime

    @staticmethod
    def _fill(field: str, item: common_pb2.InputItem, content: bytes, mime: str) -> None:
        item.mime_type = item.mime_type or mime
        textual = item.kind in TEXT_KINDS or (
            item.kind == common_pb2.CONTENT_KIND_DOCUMENT
            and item.mime_type.lower().startswith(TEXT_TYPES)
        )
        if not textual:
            item.data = content
            return
        charset = _charset(item.mime_type)
        try:
            item.text = content.decode(charset)
        except (LookupError, UnicodeError):  # codecs such as punycode raise bare UnicodeError
            raise refused(field, f"is not valid {charset} text", "URI_INVALID") from None
