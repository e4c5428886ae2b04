"""Wires the ttt service: settings, engines, InferenceService, health."""

from __future__ import annotations

import asyncio

from genmesh.runtime.secrets import ProviderSecrets
from genmesh.runtime.server import inference_service, serve
from genmesh.runtime.settings import load_settings
from genmesh.ttt.embedding import Embedder, EmbeddingEngine
from genmesh.ttt.embedding_service import TextAndEmbeddingService
from genmesh.ttt.engine import TextEngine
from genmesh.ttt.registry import create_embedding_engine, create_engine
from genmesh.ttt.service import ServedModel
from genmesh.ttt.settings import TttSettings


async def main() -> None:
    settings = load_settings(TttSettings)
    secrets = ProviderSecrets()
    engines = {spec.name: create_engine(spec, secrets) for spec in settings.models}
    served = {
        spec.name: ServedModel(engines[spec.name], spec.slots(spec.name), spec.system_prompt)
        for spec in settings.models
    }
    embedders = {
        spec.name: Embedder(create_embedding_engine(spec), spec)
        for spec in settings.embedding_models
    }
    servicer = TextAndEmbeddingService(
        served, settings.default_model, settings.models_dir, embedders, settings.max_message_bytes
    )
    loaded: list[TextEngine | EmbeddingEngine] = [
        *engines.values(),
        *(e.engine for e in embedders.values()),
    ]

    async def startup() -> None:
        for engine in loaded:
            await engine.load()

    async def shutdown() -> None:
        await asyncio.to_thread(servicer.tokenizer.close)
        for engine in loaded:
            await engine.unload()

    await serve(
        settings,
        [inference_service(servicer)],
        startup=startup,
        shutdown=shutdown,
        provider_secrets=secrets,
    )
