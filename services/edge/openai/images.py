"""`/v1/images/generations` and `/v1/images/edits` through the tti service.

OpenAI marks the area to repaint with transparent pixels (of the mask, or of the image when no
mask is sent); genmesh's mask is white where it repaints, so edits translate one to the other.
Decoding and encoding run in a worker thread, off the event loop every request shares.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from pydantic import Field

from genmesh.edge import errors
from genmesh.edge.mesh import Caller, Mesh
from genmesh.edge.openai.common import (
    CallerDep,
    Count,
    MeshDep,
    OpenAIRequest,
    Seed,
    SettingsDep,
    binding_and_model,
    form_fields,
    generate,
    now,
    read_form,
    upload,
)
from genmesh.edge.settings import EdgeSettings
from genmesh.v1 import common_pb2

router = APIRouter()
SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
OUTPUT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# What an uploaded image may be, and its largest size: far above what the tti service makes,
# far below what would take the edge's memory when decoded.
INPUT_FORMATS = ["PNG", "JPEG", "WEBP"]
MAX_PIXELS = 4096 * 4096
PARAMS = errors.Params(
    ("prompt", "image", "mask"),
    "image",
    {"image.width": "size", "image.height": "size", "image.count": "n"},
)


class ImageRequest(OpenAIRequest):
    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int | None = Field(default=None, ge=1, le=10)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    # genmesh's own, sent with the OpenAI SDK's `extra_body`.
    negative_prompt: str = ""
    steps: Count | None = None
    guidance_scale: float | None = None
    seed: Seed | None = None
    strength: float | None = None

    def parameters(self) -> common_pb2.ImageParameters:
        width = height = 0
        if self.size not in (None, "auto"):
            matched = SIZE.match(self.size)
            if not matched:
                raise errors.invalid("size", "size: must be WIDTHxHEIGHT, e.g. 64x64, or auto")
            width, height = int(matched.group(1)), int(matched.group(2))
            if not (width and height):
                raise errors.invalid("size", "size: width and height must be at least 1")
        with errors.out_of_range():
            return self._parameters(width, height)

    def _parameters(self, width: int, height: int) -> common_pb2.ImageParameters:
        return common_pb2.ImageParameters(
            negative_prompt=self.negative_prompt,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            width=width,
            height=height,
            count=self.n or 1,
            strength=self.strength,
            output_mime_type=OUTPUT_TYPES[self.output_format or "png"],
        )


def text_item(text: str) -> common_pb2.InputItem:
    return common_pb2.InputItem(
        kind=common_pb2.CONTENT_KIND_TEXT, role=common_pb2.INPUT_ROLE_USER_PROMPT, text=text
    )


def image_item(data: bytes, role: common_pb2.InputRole.ValueType) -> common_pb2.InputItem:
    return common_pb2.InputItem(
        kind=common_pb2.CONTENT_KIND_IMAGE, role=role, data=data, mime_type="image/png"
    )


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def open_image(data: bytes, param: str) -> Image.Image:
    """A PNG, JPEG or WebP of at most MAX_PIXELS, its size checked before its pixels are
    decoded; a palette image with a transparent colour comes with an alpha channel."""
    try:
        image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
        if image.width * image.height > MAX_PIXELS:
            raise errors.invalid(param, f"{param}: more than {MAX_PIXELS} pixels")
        image.load()
    except UnidentifiedImageError:
        known = ", ".join(INPUT_FORMATS)
        raise errors.invalid(param, f"{param}: not an image in a known format ({known})") from None
    except Image.DecompressionBombError as exc:
        raise errors.invalid(param, f"{param}: not a usable image ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise errors.invalid(param, f"{param}: not a readable image ({exc})") from None
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        return image.convert("RGBA")
    return image


def repaint_mask(image: Image.Image) -> Image.Image | None:
    """White where `image` is fully transparent (what OpenAI repaints), black elsewhere; None
    when it has no transparency. An opaque mask is taken as genmesh's own (white repaints)."""
    if "A" not in image.getbands():
        return None
    return image.getchannel("A").point(lambda alpha: 255 if alpha == 0 else 0)


def edit_images(image_data: bytes, mask_data: bytes | None) -> tuple[bytes, bytes | None]:
    """The uploaded image as an RGB PNG, and genmesh's mask as a PNG (None: edit it all)."""
    image = open_image(image_data, "image")
    mask: Image.Image | None = None
    if mask_data is not None:
        sent = open_image(mask_data, "mask")
        if sent.size != image.size:
            raise errors.invalid("mask", f"mask: must be {image.width}x{image.height} as the image")
        mask = repaint_mask(sent) or sent.convert("L")
    elif "A" in image.getbands() and image.getchannel("A").getextrema()[0] == 0:
        mask = repaint_mask(image)
    return png(image.convert("RGB")), None if mask is None else png(mask)


async def respond(
    body: ImageRequest,
    inputs: list[common_pb2.InputItem],
    task: common_pb2.Task.ValueType,
    http: Request,
    mesh: Mesh,
    caller: Caller,
    settings: EdgeSettings,
) -> JSONResponse:
    binding, model = binding_and_model(body.model, settings.aliases("image"))
    request = common_pb2.GenerateRequest(
        request_id=caller.request_id,
        task=task,
        binding=binding,
        model=model,
        inputs=inputs,
        image=body.parameters(),
    )
    response = await generate(http, mesh, caller, request, PARAMS)
    data: list[dict[str, Any]] = []
    for output in response.outputs:
        encoded = base64.b64encode(output.data).decode()
        if body.response_format == "url":
            data.append({"url": f"data:{output.mime_type};base64,{encoded}"})
        else:
            data.append({"b64_json": encoded})
    result = {"created": now(), "data": data, "output_format": body.output_format or "png"}
    return JSONResponse(result)


@router.post("/v1/images/generations")
async def generations(
    body: ImageRequest, http: Request, mesh: MeshDep, caller: CallerDep, settings: SettingsDep
) -> JSONResponse:
    task = common_pb2.TASK_IMAGE
    return await respond(body, [text_item(body.prompt)], task, http, mesh, caller, settings)


@router.post("/v1/images/edits")
async def edits(
    http: Request, mesh: MeshDep, caller: CallerDep, settings: SettingsDep
) -> JSONResponse:
    """Multipart: `image` (PNG, JPEG or WebP), optional `mask`, and the fields of a generation."""
    async with read_form(http) as form:
        body = form_fields(form, ImageRequest)
        source = await upload(form, "image", settings.max_upload_bytes)
        mask_upload = await upload(form, "mask", settings.max_upload_bytes, required=False)
    assert source is not None
    mask_data = mask_upload.data if mask_upload else None
    image, mask = await asyncio.to_thread(edit_images, source.data, mask_data)
    inputs = [text_item(body.prompt), image_item(image, common_pb2.INPUT_ROLE_INPUT_IMAGE)]
    if mask is not None:
        inputs.append(image_item(mask, common_pb2.INPUT_ROLE_MASK_IMAGE))
    task = common_pb2.TASK_IMAGE_EDIT
    return await respond(body, inputs, task, http, mesh, caller, settings)
