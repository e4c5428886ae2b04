"""What every InferenceService implementation does alike with its Infer stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from genmesh.runtime import errors
from genmesh.runtime.errors import FieldViolation
from genmesh.v1 import common_pb2, inference_pb2


async def first_request(
    requests: AsyncIterator[inference_pb2.InferRequest],
) -> common_pb2.GenerateRequest:
    """The opening message of an Infer stream, which must carry the request."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("message") != "request":
        raise errors.invalid_argument(
            "the first Infer message must be a request",
            FieldViolation("request", "must be set on the first message"),
        )
    return first.request


async def watch_cancel(requests: AsyncIterator[inference_pb2.InferRequest]) -> None:
    """Returns when the caller sends Control CANCEL (or closes its side)."""
    async for message in requests:
        if message.WhichOneof("message") == "control" and (
            message.control.action == common_pb2.Control.ACTION_CANCEL
        ):
            return
    await asyncio.Event().wait()
