"""Wires the tti service: settings, diffusers engines, InferenceService, health."""

from __future__ import annotations

import asyncio

import torch

from genmesh.runtime.limiter import Slots
from genmesh.runtime.server import inference_service, serve
from genmesh.runtime.settings import load_settings
from genmesh.tti.engine import DiffusersEngine
from genmesh.tti.service import ImageInferenceService, ServedModel
from genmesh.tti.settings import TtiSettings


async def main() -> None:
    settings = load_settings(TtiSettings)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    models = {
        spec.name: ServedModel(
            DiffusersEngine(spec.name, spec.path, spec.device),
            spec,
            Slots(spec.name, spec.concurrency, spec.queue_size, spec.queue_timeout_seconds),
        )
        for spec in settings.models
    }
    servicer = ImageInferenceService(models, settings.default_model, settings.limits)

    async def startup() -> None:
        for model in models.values():
            await asyncio.to_thread(model.engine.load)

    async def shutdown() -> None:
        for model in models.values():
            model.engine.unload()

    await serve(
        settings,
        [inference_service(servicer)],
        startup=startup,
        shutdown=shutdown,
    )
