"""The tti service end to end on loopback with the embedded model: what a caller gets back."""

from __future__ import annotations

import asyncio
import random
import struct
import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from PIL import Image

from genmesh.client import error_details
from genmesh.tti import shapes
from genmesh.tti.settings import EMBEDDED_MODEL
from genmesh.v1 import common_pb2, inference_pb2
from tests.tti.conftest import (
    decode,
    final,
    image_item,
    images,
    infer,
    model_details,
    png,
    request,
    until,
)

if TYPE_CHECKING:
    from tests.tti.conftest import Stub

PROMPT = "a red circle at the top left on a blue background"


def scene_png(caption_scene: shapes.Scene) -> bytes:
    return png(shapes.render(caption_scene, random.Random(0)))


async def test_text_to_image_streams_progress_then_a_png(stub: Stub) -> None:
    events = await infer(stub, request(PROMPT, steps=5, seed=7))
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    assert [(p.step, p.total_steps) for p in progress] == [(i, 5) for i in range(1, 6)]
    result = final(events)
    assert result.finish_reason == common_pb2.FINISH_REASON_STOP
    assert result.model == EMBEDDED_MODEL
    [output] = result.outputs
    assert output.kind == common_pb2.CONTENT_KIND_IMAGE
    assert output.mime_type == "image/png" and output.seed == 7
    assert decode(output.data).size == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)


async def test_same_seed_same_pixels(stub: Stub) -> None:
    first = await infer(stub, request(PROMPT, steps=4, seed=11))
    again = await infer(stub, request(PROMPT, steps=4, seed=11))
    other = await infer(stub, request(PROMPT, steps=4, seed=12))
    assert images(first)[0].tobytes() == images(again)[0].tobytes()
    assert images(first)[0].tobytes() != images(other)[0].tobytes()


async def test_negative_prompt_changes_the_image(stub: Stub) -> None:
    plain = await infer(stub, request(PROMPT, steps=4, seed=3))
    negative = await infer(stub, request(PROMPT, steps=4, seed=3, negative_prompt="a red circle"))
    assert images(plain)[0].tobytes() != images(negative)[0].tobytes()


@pytest.mark.parametrize(
    ("mime_type", "pil_format"), [("image/jpeg", "JPEG"), ("image/webp", "WEBP")]
)
async def test_several_images_in_the_asked_format(
    stub: Stub, mime_type: str, pil_format: str
) -> None:
    result = final(
        await infer(stub, request(PROMPT, steps=3, seed=5, count=3, output_mime_type=mime_type))
    )
    assert [o.seed for o in result.outputs] == [5, 6, 7]
    assert all(o.mime_type == mime_type for o in result.outputs)
    decoded = [decode(o.data) for o in result.outputs]
    assert all(image.format == pil_format for image in decoded)
    assert len({image.tobytes() for image in decoded}) == 3


async def test_custom_size(stub: Stub) -> None:
    [image] = images(await infer(stub, request(PROMPT, steps=2, seed=1, width=48, height=64)))
    assert image.size == (48, 64)


async def test_previews_every_k_steps(stub: Stub) -> None:
    events = await infer(stub, request(PROMPT, steps=6, seed=2, preview_every=2, count=2))
    previews = [e.image_preview for e in events if e.WhichOneof("event") == "image_preview"]
    assert [(p.step, p.index) for p in previews] == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert all(p.mime_type == "image/png" and decode(p.data).size[0] > 0 for p in previews)


async def test_image_to_image_runs_strength_times_steps(stub: Stub) -> None:
    init = scene_png(shapes.Scene("yellow", "square", "black"))
    req = request(
        "a green square on a white background",
        image_item(init, common_pb2.INPUT_ROLE_INPUT_IMAGE),
        steps=10,
        strength=0.5,
        seed=4,
    )
    events = await infer(stub, req)
    totals = {e.progress.total_steps for e in events if e.WhichOneof("event") == "progress"}
    assert totals == {5}
    [image] = images(events)
    assert image.size == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)


async def test_inpainting_keeps_what_the_mask_keeps(stub: Stub) -> None:
    init_image = shapes.render(shapes.Scene("white", "circle", "purple"), random.Random(1))
    mask = Image.new("L", init_image.size, 0)
    mask.paste(255, (0, 0, shapes.IMAGE_SIZE // 2, shapes.IMAGE_SIZE))
    req = request(
        "a red square on a green background",
        image_item(png(init_image), common_pb2.INPUT_ROLE_INPUT_IMAGE),
        image_item(png(mask), common_pb2.INPUT_ROLE_MASK_IMAGE),
        steps=6,
        seed=9,
    )
    [image] = images(await infer(stub, req))
    right = (shapes.IMAGE_SIZE // 2, 0, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    left = (0, 0, shapes.IMAGE_SIZE // 2, shapes.IMAGE_SIZE)
    assert image.convert("RGB").crop(right).tobytes() == init_image.crop(right).tobytes()
    assert image.convert("RGB").crop(left).tobytes() != init_image.crop(left).tobytes()


async def controlled(
    first: common_pb2.GenerateRequest, cancel: asyncio.Event
) -> AsyncIterator[inference_pb2.InferRequest]:
    """An Infer input stream that sends Control CANCEL when `cancel` is set."""
    yield inference_pb2.InferRequest(request=first)
    await cancel.wait()
    yield inference_pb2.InferRequest(
        control=common_pb2.Control(action=common_pb2.Control.ACTION_CANCEL)
    )


async def test_cancel_stops_between_steps_and_frees_the_slot(stub: Stub) -> None:
    cancel = asyncio.Event()
    call = stub.Infer(controlled(request(PROMPT, steps=200, seed=1), cancel))
    events = []
    async for response in call:
        events.append(response.event)
        if response.event.WhichOneof("event") == "progress":
            cancel.set()
    result = final(events)
    assert result.finish_reason == common_pb2.FINISH_REASON_CANCELLED
    assert not result.outputs
    assert len(events) - 1 < 200
    await until(stub, active=0)
    assert final(await infer(stub, request(PROMPT, steps=2, seed=1))).outputs


async def test_deadline_stops_the_run(stub: Stub) -> None:
    """The run is stopped at the step boundary before the deadline. Where that boundary comes
    in time for the final message, it says FINISH_REASON_DEADLINE (with no image: a half-denoised
    one is noise); where a step outlasts the margin left for it, the call ends DEADLINE_EXCEEDED.
    Either way the run ends long before its 200 steps and frees its slot."""
    slow = request(PROMPT, steps=200, seed=1, count=4, width=128, height=128)
    try:
        result = final(await infer(stub, slow, timeout=3.0))
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        assert result.finish_reason == common_pb2.FINISH_REASON_DEADLINE
        assert not result.outputs
    await until(stub, active=0)


async def test_full_queue_is_resource_exhausted(stub: Stub) -> None:
    # One run at a time and one waiting: a third request is refused with a retry delay.
    running = stub.Infer(iter([inference_pb2.InferRequest(request=request(PROMPT, steps=200))]))
    await anext(aiter(running))
    waiting = stub.Infer(iter([inference_pb2.InferRequest(request=request(PROMPT, steps=200))]))
    waiter = asyncio.ensure_future(anext(aiter(waiting)))
    await until(stub, queued=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await infer(stub, request(PROMPT, steps=2))
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.retry_after is not None
    running.cancel()
    waiting.cancel()
    waiter.cancel()
    await until(stub, active=0, queued=0)


async def test_models_are_listed_with_their_limits(stub: Stub) -> None:
    listed = await stub.ListModels(inference_pb2.InferenceServiceListModelsRequest())
    [model] = listed.models
    assert model.name == EMBEDDED_MODEL and model.engine == "diffusers" and model.loaded
    assert set(model.tasks) == {common_pb2.TASK_IMAGE, common_pb2.TASK_IMAGE_EDIT}
    assert model.size_bytes > 0
    details = await model_details(stub)
    assert details["default_width"] == details["default_height"] == shapes.IMAGE_SIZE
    assert details["max_width"] == 128 and details["pipeline"] == "StableDiffusionPipeline"


async def test_unknown_model_is_not_found(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetModelInfo(inference_pb2.InferenceServiceGetModelInfoRequest(model="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    req = request(PROMPT, steps=2)
    req.model = "nope"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await infer(stub, req)
    assert error_details(caught.value).violations.keys() == {"model"}


INIT = image_item(
    scene_png(shapes.Scene("red", "circle", "blue")), common_pb2.INPUT_ROLE_INPUT_IMAGE
)
SMALL_MASK = image_item(png(Image.new("L", (8, 8), 255)), common_pb2.INPUT_ROLE_MASK_IMAGE)


def claimed_size(width: int, height: int) -> bytes:
    """A one-pixel PNG whose header claims `width` x `height`: a few bytes that decoded would
    take gigabytes."""
    data = png(Image.new("RGB", (1, 1)))
    header = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + header + struct.pack(">I", zlib.crc32(header)) + data[33:]


BOMB = image_item(claimed_size(20_000, 20_000), common_pb2.INPUT_ROLE_INPUT_IMAGE)
GARBAGE = common_pb2.InputItem(
    kind=common_pb2.CONTENT_KIND_IMAGE,
    role=common_pb2.INPUT_ROLE_INPUT_IMAGE,
    data=b"not an image",
    mime_type="image/png",
)


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (request(PROMPT, GARBAGE), "inputs[1]"),
        (request(PROMPT, INIT, SMALL_MASK), "inputs"),
        (request(PROMPT, SMALL_MASK), "inputs"),
        (request(""), "inputs"),
        (request(PROMPT, width=256), "image.width"),
        (request(PROMPT, height=36), "image.height"),
        (request(PROMPT, steps=0), "image.steps"),
        (request(PROMPT, steps=201), "image.steps"),
        (request(PROMPT, count=5), "image.count"),
        (request(PROMPT, guidance_scale=-1), "image.guidance_scale"),
        (request(PROMPT, INIT, strength=0), "image.strength"),
        (request(PROMPT, output_mime_type="image/gif"), "image.output_mime_type"),
        # Each of these ended INTERNAL, or OK with no image.
        (request(PROMPT, BOMB), "inputs[1]"),
        (request(PROMPT, count=2, seed=2**63 - 1), "image.seed"),
        (request(PROMPT, INIT, steps=1, strength=0.8), "image.steps"),
    ],
    ids=[
        "undecodable-image",
        "mask-size",
        "mask-without-image",
        "no-prompt",
        "width-over-limit",
        "height-not-multiple-of-8",
        "zero-steps",
        "too-many-steps",
        "too-many-images",
        "negative-guidance",
        "zero-strength",
        "gif-output",
        "png-claiming-400-megapixels",
        "seed-of-the-second-image-past-int64",
        "no-denoising-step",
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    stub: Stub, req: common_pb2.GenerateRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await infer(stub, req)
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details.violations, details.violations


async def test_tokenizer_rpcs_are_unimplemented(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Tokenize(inference_pb2.InferenceServiceTokenizeRequest(text="hi"))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
