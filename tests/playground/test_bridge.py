"""The WebSocket bridge to `Converse` (/api/converse), spoken to as the playground does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support import API_KEY, ServiceProcess

POLICY_VIOLATION = 1008


@contextmanager
def opened(edge: ServiceProcess, key: str = API_KEY) -> Iterator[ClientConnection]:
    with connect(f"ws://{edge.address}/api/converse", open_timeout=30) as socket:
        socket.send(json.dumps({"api_key": key}))
        yield socket


def echo_conversation(socket: ClientConnection, text: str) -> list[dict[str, Any]]:
    socket.send(json.dumps({"config": {"task": "TASK_TEXT", "binding": "echo"}}))
    turn = {"kind": "CONTENT_KIND_TEXT", "role": "INPUT_ROLE_USER_PROMPT", "text": text}
    socket.send(json.dumps({"turn": {"turn_id": "t1", "inputs": [turn]}}))
    frames = []
    while True:
        frame = json.loads(socket.recv(timeout=60))
        frames.append(frame)
        if "error" in frame or "final" in frame.get("event", {}):
            return frames


def test_a_turn_streams_back_as_json(playground: ServiceProcess) -> None:
    with opened(playground) as socket:
        frames = echo_conversation(socket, "hello bridge")
    assert all(f["turn_id"] == "t1" for f in frames)
    text = "".join(f["event"].get("text_delta", {}).get("text", "") for f in frames)
    assert "hello bridge" in text
    assert frames[-1]["event"]["final"]["finish_reason"] == "FINISH_REASON_STOP"


def test_a_wrong_key_is_a_readable_error(playground: ServiceProcess) -> None:
    with opened(playground, key="gm-wrong") as socket:
        error = json.loads(socket.recv(timeout=30))["error"]
    assert error["code"] == "UNAUTHENTICATED", error
    assert error["status"] == 401


def test_a_frame_that_is_not_a_message_closes_the_socket(playground: ServiceProcess) -> None:
    with opened(playground) as socket:
        socket.send(json.dumps({"no_such_field": 1}))
        try:
            while True:
                socket.recv(timeout=30)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            assert closed.rcvd.code == POLICY_VIOLATION
            assert "ConverseRequest" in closed.rcvd.reason


def test_a_refused_config_is_reported_while_frames_still_arrive(playground: ServiceProcess) -> None:
    """The router refuses the config while the bridge still writes the frames after it; the
    bridge's failed write must not turn that refusal into grpc's own INTERNAL."""
    config = {"config": {"task": "TASK_TEXT", "binding": "no-such-binding"}}
    turn = {"turn": {"turn_id": "t", "inputs": [{"kind": "CONTENT_KIND_TEXT", "text": "hi"}]}}
    for _ in range(30):
        with opened(playground) as socket:
            socket.send(json.dumps(config))
            for _ in range(20):
                socket.send(json.dumps(turn))
            error = json.loads(socket.recv(timeout=30))["error"]
        assert error["code"] == "NOT_FOUND", error
