"""InferenceService for images: validates typed requests, queues them per model and streams
denoising progress, optional previews and the final images.

Every bad input is rejected before any work starts, as INVALID_ARGUMENT naming the field: an
undecodable image, a mask that does not match its image, a size over the limits or not a multiple
of 8, steps, guidance, strength or count out of range, an unknown output type.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import grpc
from PIL import Image, UnidentifiedImageError

from genmesh.runtime import errors
from genmesh.runtime.errors import FieldViolation
from genmesh.runtime.inference import Context, InferenceServicer, InferJob, Requests, Stop
from genmesh.runtime.limiter import Slots
from genmesh.tti.engine import ENGINE, DiffusersEngine, Done, ImageJob, Step
from genmesh.tti.settings import ImageModelSpec, Limits
from genmesh.v1 import common_pb2, inference_pb2

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
SIZE_MULTIPLE = 8
# Input images beyond this are far larger than the pipelines work at, and would take the
# service's memory when decoded.
MAX_INPUT_PIXELS = 4096 * 4096
MAX_GUIDANCE = 50.0
MAX_SEED = 2**63 - 1
# System context (a personality's conditioning) leads the prompt; the user's words follow.
PROMPT_ROLES = (
    common_pb2.INPUT_ROLE_SYSTEM_CONTEXT,
    common_pb2.INPUT_ROLE_UNSPECIFIED,
    common_pb2.INPUT_ROLE_USER_PROMPT,
)


@dataclass
class ServedModel:
    """A loaded pipeline with its defaults and admission control."""

    engine: DiffusersEngine
    spec: ImageModelSpec
    slots: Slots


def encode(image: Image.Image, mime_type: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=FORMATS[mime_type])
    return out.getvalue()


def _payload(item: common_pb2.InputItem, where: str) -> bytes:
    """An image item's bytes: inline, or a base64 data: URI."""
    kind = item.WhichOneof("payload")
    if kind == "data":
        return item.data
    if kind == "uri" and item.uri.startswith("data:") and ";base64," in item.uri:
        try:
            return base64.b64decode(item.uri.split(";base64,", 1)[1], validate=True)
        except binascii.Error:
            pass
    raise errors.invalid_argument(
        "images must be sent as bytes or a base64 data: URI",
        FieldViolation(where, "needs image bytes"),
    )


def decode_image(item: common_pb2.InputItem, where: str) -> Image.Image:
    """The image, its size checked from its header before its pixels are decoded (a PNG of 100
    bytes can claim 400 million)."""
    try:
        image = Image.open(io.BytesIO(_payload(item, where)))
        if image.width * image.height > MAX_INPUT_PIXELS:
            raise errors.invalid_argument(
                "an input image is too large",
                FieldViolation(where, f"more than {MAX_INPUT_PIXELS} pixels"),
            )
        image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise errors.invalid_argument(
            "an input image could not be decoded",
            FieldViolation(where, f"not a decodable image: {exc}"),
        ) from None
    return image


@dataclass(frozen=True)
class Inputs:
    prompt: str
    init_image: Image.Image | None
    mask: Image.Image | None


def read_inputs(request: common_pb2.GenerateRequest) -> Inputs:
    """Sorts the request's items: prompt text, input image and mask."""
    prompt: list[tuple[bool, str]] = []
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    for index, item in enumerate(request.inputs):
        where = f"inputs[{index}]"
        is_text = item.kind == common_pb2.CONTENT_KIND_TEXT or (
            item.kind == common_pb2.CONTENT_KIND_UNSPECIFIED
            and item.WhichOneof("payload") == "text"
        )
        if is_text and item.role in PROMPT_ROLES:
            prompt.append((item.role != common_pb2.INPUT_ROLE_SYSTEM_CONTEXT, item.text.strip()))
        elif item.role == common_pb2.INPUT_ROLE_INPUT_IMAGE and not is_text:
            init_image = decode_image(item, where)
        elif item.role == common_pb2.INPUT_ROLE_MASK_IMAGE and not is_text:
            mask = decode_image(item, where)
        else:
            raise errors.invalid_argument(
                "unsupported input for an image model",
                FieldViolation(where, "expected a text prompt, an input image or a mask image"),
            )
    text = " ".join(t for _, t in sorted(prompt, key=lambda p: p[0]) if t)
    if not text:
        raise errors.invalid_argument(
            "no prompt", FieldViolation("inputs", "needs a non-empty text prompt")
        )
    if mask is not None and init_image is None:
        raise errors.invalid_argument(
            "a mask needs an input image",
            FieldViolation("inputs", "add an INPUT_ROLE_INPUT_IMAGE item to inpaint"),
        )
    if mask is not None and init_image is not None and mask.size != init_image.size:
        raise errors.invalid_argument(
            "the mask does not match the input image",
            FieldViolation(
                "inputs",
                f"mask is {mask.width}x{mask.height}, image is "
                f"{init_image.width}x{init_image.height}",
            ),
        )
    if request.task == common_pb2.TASK_IMAGE_EDIT and init_image is None:
        raise errors.invalid_argument(
            "image editing needs an input image",
            FieldViolation("inputs", "add an INPUT_ROLE_INPUT_IMAGE item"),
        )
    return Inputs(text, init_image, mask)


def resolve_job(
    request: common_pb2.GenerateRequest, model: ServedModel, limits: Limits
) -> tuple[ImageJob, str]:
    """The engine job for a request, and the output media type."""
    if request.task not in (
        common_pb2.TASK_UNSPECIFIED,
        common_pb2.TASK_IMAGE,
        common_pb2.TASK_IMAGE_EDIT,
    ):
        raise errors.invalid_argument(
            "this service generates images",
            FieldViolation("task", "must be TASK_IMAGE or TASK_IMAGE_EDIT"),
        )
    if request.WhichOneof("parameters") not in (None, "image"):
        raise errors.invalid_argument(
            "image requests take image parameters",
            FieldViolation("parameters", "set `image`, not another task's parameters"),
        )
    inputs = read_inputs(request)
    params = request.image
    facts = model.engine.facts()
    bad: list[FieldViolation] = []
    steps = params.steps if params.HasField("steps") else model.spec.steps
    if not 1 <= steps <= limits.max_steps:
        bad.append(FieldViolation("image.steps", f"must be in 1..{limits.max_steps}"))
    guidance = (
        params.guidance_scale if params.HasField("guidance_scale") else model.spec.guidance_scale
    )
    if not 0 <= guidance <= MAX_GUIDANCE:
        bad.append(FieldViolation("image.guidance_scale", f"must be in [0, {MAX_GUIDANCE:g}]"))
    # An edit keeps its input's size (to a multiple of 8) unless asked otherwise.
    base = (
        inputs.init_image.size if inputs.init_image else (facts.default_width, facts.default_height)
    )
    width = params.width or max(SIZE_MULTIPLE, base[0] // SIZE_MULTIPLE * SIZE_MULTIPLE)
    height = params.height or max(SIZE_MULTIPLE, base[1] // SIZE_MULTIPLE * SIZE_MULTIPLE)
    for name, value, limit in (
        ("width", width, limits.max_width),
        ("height", height, limits.max_height),
    ):
        if not SIZE_MULTIPLE <= value <= limit or value % SIZE_MULTIPLE:
            bad.append(
                FieldViolation(
                    f"image.{name}", f"must be a multiple of {SIZE_MULTIPLE} in 8..{limit}"
                )
            )
    count = params.count or 1
    if not 1 <= count <= limits.max_images:
        bad.append(FieldViolation("image.count", f"must be in 1..{limits.max_images}"))
    strength = params.strength if params.HasField("strength") else 0.8
    if not 0 < strength <= 1:
        bad.append(FieldViolation("image.strength", "must be in (0, 1]"))
    if params.HasField("strength") and inputs.init_image is None:
        bad.append(FieldViolation("image.strength", "applies to image-to-image only"))
    if inputs.init_image is not None and inputs.mask is None and int(steps * strength) < 1:
        # Image-to-image runs the last steps x strength of the schedule: none would be no image.
        bad.append(FieldViolation("image.steps", f"times strength {strength:g} must be at least 1"))
    if params.HasField("seed") and params.seed > MAX_SEED - (count - 1):
        # Image i is drawn with seed + i, which each output reports as an int64.
        bad.append(FieldViolation("image.seed", f"must be at most {MAX_SEED} - (count - 1)"))
    mime_type = params.output_mime_type or "image/png"
    if mime_type not in FORMATS:
        bad.append(FieldViolation("image.output_mime_type", f"must be one of {sorted(FORMATS)}"))
    if params.preview_every < 0:
        bad.append(FieldViolation("image.preview_every", "must be >= 0"))
    if bad:
        raise errors.invalid_argument("invalid image parameters", *bad)
    job = ImageJob(
        prompt=inputs.prompt,
        negative_prompt=params.negative_prompt,
        steps=steps,
        guidance_scale=guidance,
        seed=params.seed if params.HasField("seed") else secrets.randbits(31),
        width=width,
        height=height,
        count=count,
        init_image=inputs.init_image,
        mask=inputs.mask,
        strength=strength if inputs.mask is None else 1.0,
        preview_every=params.preview_every,
    )
    return job, mime_type


def model_info(model: ServedModel, limits: Limits) -> common_pb2.ModelInfo:
    info = common_pb2.ModelInfo(
        name=model.engine.name,
        engine=ENGINE,
        tasks=[common_pb2.TASK_IMAGE, common_pb2.TASK_IMAGE_EDIT],
        supports_vision=True,
        loaded=model.engine.loaded,
    )
    details: dict[str, Any] = {
        "default_steps": model.spec.steps,
        "default_guidance_scale": model.spec.guidance_scale,
        "max_width": limits.max_width,
        "max_height": limits.max_height,
        "max_steps": limits.max_steps,
        "max_images": limits.max_images,
        "size_multiple": SIZE_MULTIPLE,
        "output_mime_types": sorted(FORMATS),
        "concurrency": model.slots.concurrency,
        "active": model.slots.active,
        "queued": model.slots.waiting,
    }
    if model.engine.loaded:
        facts = model.engine.facts()
        info.size_bytes = facts.size_bytes
        details.update(
            pipeline=facts.pipeline,
            default_width=facts.default_width,
            default_height=facts.default_height,
            device=facts.device,
            dtype=facts.dtype,
        )
    info.details.update(details)
    return info


class ImageRun(InferJob):
    """One image run: progress per denoising step (the run's output so far) and optional
    previews, then the encoded images; a stop lands between steps."""

    output_events = frozenset({"progress", "image_preview"})

    def __init__(self, served: ServedModel, job: ImageJob, mime_type: str) -> None:
        self.engine = served.engine
        self.model = served.engine.name
        self.slots = served.slots
        self.job = job
        self.mime_type = mime_type
        self.done: Done | None = None

    async def events(self, stop: Stop) -> AsyncGenerator[common_pb2.StreamEvent, None]:
        generation = self.engine.generate(self.job, stop.flag)
        try:
            async for event in generation:
                if isinstance(event, Done):
                    self.done = event
                    continue
                for step_event in step_events(event):
                    yield step_event
        finally:
            with contextlib.suppress(Exception):
                await generation.aclose()  # type: ignore[attr-defined]

    async def result(self) -> common_pb2.GenerateResponse:
        done = self.done
        if done is None or done.cancelled:
            return common_pb2.GenerateResponse()
        images = await asyncio.to_thread(
            lambda: [encode(image, self.mime_type) for image in done.images]
        )
        return common_pb2.GenerateResponse(
            outputs=[
                common_pb2.OutputItem(
                    kind=common_pb2.CONTENT_KIND_IMAGE,
                    data=data,
                    mime_type=self.mime_type,
                    seed=seed,
                )
                for data, seed in zip(images, done.seeds, strict=False)
            ],
            finish_reason=common_pb2.FINISH_REASON_STOP,
        )


def step_events(step: Step) -> list[common_pb2.StreamEvent]:
    events = [
        common_pb2.StreamEvent(
            progress=common_pb2.Progress(step=step.step, total_steps=step.total, stage="denoising")
        )
    ]
    for index, preview in enumerate(step.previews):
        data = encode(preview, "image/png")
        events.append(
            common_pb2.StreamEvent(
                image_preview=common_pb2.ImagePreview(
                    data=data, mime_type="image/png", step=step.step, index=index
                )
            )
        )
    return events


class ImageInferenceService(InferenceServicer):
    def __init__(self, models: dict[str, ServedModel], default_model: str, limits: Limits) -> None:
        self.models = models
        self.default_model = default_model
        self.limits = limits

    def model(self, name: str) -> ServedModel:
        model = self.models.get(name or self.default_model)
        if model is None:
            raise errors.not_found(f"no model '{name}' on this service", "model", name, "model")
        return model

    async def job(self, request: common_pb2.GenerateRequest, _: Requests) -> ImageRun:
        model = self.model(request.model)
        job, mime_type = await asyncio.to_thread(resolve_job, request, model, self.limits)
        return ImageRun(model, job, mime_type)

    async def ListModels(  # noqa: N802
        self, request: inference_pb2.InferenceServiceListModelsRequest, context: Context
    ) -> inference_pb2.InferenceServiceListModelsResponse:
        return inference_pb2.InferenceServiceListModelsResponse(
            models=[model_info(m, self.limits) for m in self.models.values()]
        )

    async def GetModelInfo(  # noqa: N802
        self, request: inference_pb2.InferenceServiceGetModelInfoRequest, context: Context
    ) -> inference_pb2.InferenceServiceGetModelInfoResponse:
        return inference_pb2.InferenceServiceGetModelInfoResponse(
            model=model_info(self.model(request.model), self.limits)
        )

    async def Tokenize(  # noqa: N802
        self, request: inference_pb2.InferenceServiceTokenizeRequest, context: Context
    ) -> inference_pb2.InferenceServiceTokenizeResponse:
        raise no_tokenizer()

    async def Detokenize(  # noqa: N802
        self, request: inference_pb2.InferenceServiceDetokenizeRequest, context: Context
    ) -> inference_pb2.InferenceServiceDetokenizeResponse:
        raise no_tokenizer()


def no_tokenizer() -> errors.ServiceError:
    return errors.ServiceError(
        grpc.StatusCode.UNIMPLEMENTED,
        "image models have no tokenizer RPCs",
        reason="TOKENIZER_UNAVAILABLE",
    )
