"""Wires the ttt service: settings, engines, InferenceService, health."""

from __future__ import annotations

from genmesh.runtime.limiter import Slots
from genmesh.runtime.secrets import ProviderSecrets
from genmesh.runtime.server import inference_service, serve
from genmesh.runtime.settings import load_settings
from genmesh.ttt.registry import create_engine
from genmesh.ttt.service import ServedModel, TextInferenceService
from genmesh.ttt.settings import TttSettings


async def main() -> None:
    settings = load_settings(TttSettings)
    secrets = ProviderSecrets()
    engines = {spec.name: create_engine(spec, secrets) for spec in settings.models}
    served = {
        spec.name: ServedModel(
            engines[spec.name],
            Slots(spec.name, spec.concurrency, spec.queue_size, spec.queue_timeout_seconds),
            spec.system_prompt,
        )
        for spec in settings.models
    }
    servicer = TextInferenceService(served, settings.default_model, settings.models_dir)

    async def startup() -> None:
        for engine in engines.values():
            await engine.load()

    async def shutdown() -> None:
        for engine in engines.values():
            await engine.unload()

    await serve(
        settings,
        [inference_service(servicer)],
        startup=startup,
        shutdown=shutdown,
        provider_secrets=secrets,
    )
