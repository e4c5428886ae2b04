"""The edge's socket: a stream's chunks leave as they are written."""

from __future__ import annotations

import socket

from genmesh.edge.server import listen


def test_accepted_connections_do_not_wait_to_coalesce_writes() -> None:
    with listen("127.0.0.1", 0) as listener, socket.create_connection(listener.getsockname()):
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
