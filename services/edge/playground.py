"""The web playground at `/` and the API docs at `/docs`: the files scripts/build_web.sh built,
served by the edge itself so that the page, the OpenAI API and `/api` share one origin."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, PlainTextResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketClose

from genmesh.edge.settings import EdgeSettings

# The REST gateway's OpenAPI document, generated from the protos beside its code.
GATEWAY_OPENAPI = Path(__file__).resolve().parents[1] / "gateway/openapi/genmesh.swagger.json"
# A WebSocket to a path no route serves is closed with this code.
POLICY_VIOLATION = 1008
API_PREFIXES = ("/v1/", "/api/")
NOT_BUILT = (
    "The playground is not built: run `make web` (scripts/build_web.sh) in the genmesh source "
    "tree, or point the edge's web_dir setting at a built copy. Looked in: {}\n"
)


class Playground(StaticFiles):
    """The built files, or a 503 saying how to build them (checked at each request, so a build
    made after the edge started is served without a restart)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory=directory, html=True, check_dir=False)
        self.root = directory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await WebSocketClose(POLICY_VIOLATION)(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            # A path no API route serves is the same 404 for every method, as without the page.
            raise HTTPException(404, "Not Found")
        if not (self.root / "index.html").is_file():
            if scope["path"] not in ("/", "/index.html") and not scope["path"].startswith("/docs"):
                raise HTTPException(404, "Not Found")
            response = PlainTextResponse(NOT_BUILT.format(self.root), status_code=503)
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class PageMount(Mount):
    """The files at `/`, leaving the API's paths alone: one of them with the wrong method stays
    a 405, an unknown one a 404 in the API's error shape."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["path"].startswith(API_PREFIXES):
            return Match.NONE, {}
        return super().matches(scope)


def install(app: FastAPI, settings: EdgeSettings) -> None:
    """Last of the app's routes: the files answer every other path."""

    @app.get("/api/openapi/gateway.json", include_in_schema=False)
    async def gateway_openapi() -> FileResponse:
        if not GATEWAY_OPENAPI.is_file():
            raise HTTPException(404, "the REST gateway's OpenAPI document is not installed here")
        return FileResponse(GATEWAY_OPENAPI, media_type="application/json")

    app.router.routes.append(PageMount("/", Playground(settings.web_dir), name="playground"))
