"""Helpers for router tests: requests for the echo engine, and reading error details."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from genmesh.client import text_request
from genmesh.v1 import common_pb2


def slow(prompt: str, delay_ms: int, repeat: int = 1, **fields: str) -> common_pb2.GenerateRequest:
    """An echo request that streams one character every `delay_ms`."""
    request = text_request(
        prompt, parameters=common_pb2.TextParameters(max_tokens=100_000), **fields
    )
    request.extra.update({"delay_ms": delay_ms, "repeat": repeat})
    return request


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Waits until `check` holds (state that settles in the background, e.g. health)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.05)
