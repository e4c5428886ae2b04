"""The diffusers engine: any diffusers-format pipeline folder, for text-to-image, image-to-image
and inpainting.

The folder is loaded once with `AutoPipelineForText2Image`; the image-to-image and inpainting
pipelines are derived from it with `from_pipe`, so all three share one copy of the weights. Each
run gets its own scheduler instance (schedulers hold per-run state), which is what lets several
runs share the pipelines. Runs block in torch, so they go to a worker thread; a callback between
denoising steps reports progress, renders optional previews and stops the run when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
)
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

ENGINE = "diffusers"
PREVIEW_SIZE = 64


@dataclass(frozen=True)
class ImageJob:
    """One request, validated and resolved against the model's defaults."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    count: int = 1
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    strength: float = 0.8
    preview_every: int = 0


@dataclass(frozen=True)
class Step:
    """Denoising step `step` of `total` is done; `previews` holds one small image per output
    when a preview was due."""

    step: int
    total: int
    previews: tuple[Image.Image, ...] = ()


@dataclass(frozen=True)
class Done:
    images: tuple[Image.Image, ...]
    seeds: tuple[int, ...]
    cancelled: bool = False


@dataclass(frozen=True)
class ModelFacts:
    name: str
    path: Path
    pipeline: str
    default_width: int
    default_height: int
    device: str
    dtype: str
    size_bytes: int


class StoppedError(Exception):
    """Raised from the step callback to leave the denoising loop early."""


class DiffusersEngine:
    """One pipeline folder on one device."""

    def __init__(self, name: str, path: Path, device: str = "auto") -> None:
        self.name = name
        self.path = path
        self.device = (
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
        # Half precision where it is fast and safe (GPUs); full precision on CPUs.
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        # diffusers pipelines are untyped.
        self._text2img: Any = None
        self._img2img: Any = None
        self._inpaint: Any = None
        self._facts: ModelFacts | None = None

    @property
    def loaded(self) -> bool:
        return self._text2img is not None

    def load(self) -> None:
        """Reads the weights (blocking: call from a worker thread)."""
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        pipe = AutoPipelineForText2Image.from_pretrained(self.path, dtype=self.dtype)
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self._img2img = AutoPipelineForImage2Image.from_pipe(pipe)
        self._inpaint = AutoPipelineForInpainting.from_pipe(pipe)
        for derived in (self._img2img, self._inpaint):
            derived.set_progress_bar_config(disable=True)
        self._facts = self._read_facts(pipe)
        self._text2img = pipe

    def unload(self) -> None:
        self._text2img = self._img2img = self._inpaint = self._facts = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _pipe(self) -> Any:
        if self._text2img is None:
            raise RuntimeError(f"model '{self.name}' is not loaded")
        return self._text2img

    def facts(self) -> ModelFacts:
        if self._facts is None:
            raise RuntimeError(f"model '{self.name}' is not loaded")
        return self._facts

    def _read_facts(self, pipe: Any) -> ModelFacts:
        scale = int(getattr(pipe, "vae_scale_factor", 8))
        sample = pipe.unet.config.sample_size if hasattr(pipe, "unet") else 64
        height, width = (sample, sample) if isinstance(sample, int) else sample
        return ModelFacts(
            name=self.name,
            path=self.path,
            pipeline=type(pipe).__name__,
            default_width=int(width) * scale,
            default_height=int(height) * scale,
            device=self.device,
            dtype=str(self.dtype).removeprefix("torch."),
            size_bytes=sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file()),
        )

    def run(
        self,
        job: ImageJob,
        on_step: Callable[[Step], None],
        stop: threading.Event,
    ) -> Done:
        """Runs one job to the end, or until `stop` is set (checked between steps)."""
        base = self._pipe()
        pipe_cls: Any
        if job.mask is not None:
            pipe_cls, source = AutoPipelineForInpainting, self._inpaint
        elif job.init_image is not None:
            pipe_cls, source = AutoPipelineForImage2Image, self._img2img
        else:
            pipe_cls, source = AutoPipelineForText2Image, base
        pipe = pipe_cls.from_pipe(
            source, scheduler=type(base.scheduler).from_config(base.scheduler.config)
        )
        pipe.set_progress_bar_config(disable=True)
        seeds = tuple(job.seed + i for i in range(job.count))
        generators = [torch.Generator(self.device).manual_seed(s) for s in seeds]

        def step_end(p: Any, index: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if stop.is_set():
                raise StoppedError
            done = index + 1
            previews: tuple[Image.Image, ...] = ()
            if job.preview_every and done % job.preview_every == 0 and done < p.num_timesteps:
                previews = self._previews(p, tensors["latents"])
            on_step(Step(done, p.num_timesteps, previews))
            return tensors

        kwargs: dict[str, Any] = {
            "prompt": [job.prompt] * job.count,
            "negative_prompt": [job.negative_prompt] * job.count,
            "num_inference_steps": job.steps,
            "guidance_scale": job.guidance_scale,
            "generator": generators,
            "callback_on_step_end": step_end,
        }
        size = (job.width, job.height)
        init = job.init_image.convert("RGB").resize(size) if job.init_image else None
        mask = job.mask.convert("L").resize(size) if job.mask else None
        if init is not None:
            kwargs["image"] = init
            kwargs["strength"] = job.strength
        if mask is not None:
            kwargs["mask_image"] = mask
        if job.init_image is None or job.mask is not None:
            kwargs["width"], kwargs["height"] = job.width, job.height
        try:
            images = pipe(**kwargs).images
        except StoppedError:
            return Done((), seeds, cancelled=True)
        if init is not None and mask is not None:
            # The autoencoder round trip blurs what the mask keeps; keep the exact pixels.
            images = [Image.composite(image, init, mask) for image in images]
        return Done(tuple(images), seeds)

    @staticmethod
    def _previews(pipe: Any, latents: torch.Tensor) -> tuple[Image.Image, ...]:
        """Decodes the current latents into small images."""
        vae = pipe.vae
        scaled = latents.to(vae.dtype) / vae.config.scaling_factor
        decoded = vae.decode(scaled).sample
        images = pipe.image_processor.postprocess(decoded, output_type="pil")
        return tuple(image.copy() for image in _thumbnails(images))

    async def generate(
        self, job: ImageJob, stop: threading.Event | None = None
    ) -> AsyncIterator[Step | Done]:
        """Streams the steps of one run, then its result. Setting `stop` (or leaving the iterator
        early) stops the run at the next step boundary; leaving returns only once the worker
        thread has let go, so a slot held around this iterator is not freed while the device is
        still busy."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Step] = asyncio.Queue()
        stop = stop or threading.Event()

        def on_step(event: Step) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        worker = asyncio.ensure_future(asyncio.to_thread(self.run, job, on_step, stop))
        try:
            while not worker.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, worker}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            yield worker.result()
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(worker)


def _thumbnails(images: list[Image.Image]) -> list[Image.Image]:
    for image in images:
        image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    return images
