"""`/api/converse`: a WebSocket bridged to the router's bidirectional `Converse`, for the
playground's voice loop (browsers cannot speak gRPC).

The protocol is the RPC's own, one JSON text frame per message in protobuf's JSON mapping: the
client's first frame is `{"api_key": "..."}` (a browser cannot set headers on a WebSocket), then
ConverseRequest messages; the edge sends ConverseResponse messages. A failed call is a last
frame `{"error": {...}}` (as /api's error answers) and the socket closes; the socket closing
cancels the call.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import grpc
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from google.protobuf import json_format

from genmesh.edge.api import MeshError, to_json
from genmesh.edge.mesh import Caller, Mesh
from genmesh.runtime.channel import peer_error
from genmesh.v1 import catalog_pb2, generation_pb2

router = APIRouter()
# WebSocket close codes: the client sent something that is not a message; the mesh failed.
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011


class BadFrameError(Exception):
    pass


def request_of(frame: str) -> generation_pb2.ConverseRequest:
    try:
        return json_format.Parse(frame, generation_pb2.ConverseRequest())
    except json_format.ParseError as exc:
        raise BadFrameError(f"not a ConverseRequest: {exc}") from None


@router.websocket("/api/converse")
async def converse(socket: WebSocket) -> None:
    await socket.accept()
    try:
        hello = json.loads(await socket.receive_text())
        key = hello.get("api_key") if isinstance(hello, dict) else None
    except (ValueError, WebSocketDisconnect):
        key = None
    if not isinstance(key, str) or not (key.isascii() and key.isprintable()):
        await socket.close(POLICY_VIOLATION, 'the first frame must be {"api_key": "..."}')
        return
    mesh: Mesh = socket.app.state.mesh
    metadata = Caller(key or None, uuid.uuid4().hex).metadata
    try:
        # The key, checked first: a refusal that races the first write of a stream reaches
        # grpc's client as INTERNAL, which would hide the reason from the page.
        await mesh.catalog.ListBindings(catalog_pb2.ListBindingsRequest(), metadata=metadata)
    except grpc.aio.AioRpcError as error:
        await refuse(socket, error)
        return
    call = mesh.generation.Converse(metadata=metadata)
    forwarding = asyncio.ensure_future(forward(socket, call))
    try:
        async for response in call:
            await socket.send_text(json.dumps(to_json(response)))
    except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
        # A call the client's side ended (a bad frame, or leaving) reads as cancelled here.
        ended = forwarding.result() if forwarding.done() else None
        if isinstance(ended, BadFrameError):
            await socket.close(POLICY_VIOLATION, str(ended)[:120])
        elif isinstance(error, grpc.aio.AioRpcError) and ended is None:
            failed = await peer_error(call, error)
            # None: the call ended well, and only a frame the client sent after it failed.
            await (socket.close() if failed is None else refuse(socket, failed))
        elif not forwarding.done():
            raise
        return
    finally:
        call.cancel()
        forwarding.cancel()
        await asyncio.gather(forwarding, return_exceptions=True)
    await socket.close()


async def refuse(socket: WebSocket, error: grpc.aio.AioRpcError) -> None:
    await socket.send_text(json.dumps(MeshError(error).body()))
    await socket.close(INTERNAL_ERROR)


async def forward(
    socket: WebSocket, call: grpc.aio.StreamStreamCall[Any, Any]
) -> BadFrameError | WebSocketDisconnect | None:
    """The client's frames to the call until it ends; the client leaving, or sending a frame
    that is not a message, cancels the call (and is returned)."""
    try:
        while True:
            await call.write(request_of(await socket.receive_text()))
    except (WebSocketDisconnect, BadFrameError) as exc:
        call.cancel()
        return exc
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        # The call ended first: its status is the answer.
        return None
