"""Wires the router: backends, personalities, functions, the public services, keys, health."""

from __future__ import annotations

from genmesh.router.agent import AgentService, ServerFunctions, mesh_functions
from genmesh.router.backends import Backends
from genmesh.router.catalog import CatalogService, TokenizerService
from genmesh.router.dispatch import Dispatcher
from genmesh.router.embedding import EmbeddingService
from genmesh.router.functions import FunctionRegistry
from genmesh.router.generation import GenerationService
from genmesh.router.inputs import InputResolver
from genmesh.router.personalities import Personalities
from genmesh.router.settings import load_router_settings
from genmesh.runtime import telemetry
from genmesh.runtime.channel import connect
from genmesh.runtime.server import Service, serve, service_name
from genmesh.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
)


async def main() -> None:
    settings = load_router_settings()
    # Discovery below reports what it skips; logs must be structured from the start.
    telemetry.setup(settings.service_name, settings.telemetry)
    backends = Backends(
        settings.bindings, settings.outgoing_key(), settings.health_check_interval_seconds
    )
    personalities = Personalities.discover(settings.personality_folders, settings.personalities)
    inputs = InputResolver(settings.inputs, settings.max_request_bytes)
    dispatcher = Dispatcher(backends, settings.max_request_bytes, personalities, inputs)
    functions = FunctionRegistry.discover(
        settings.function_folders, mesh_functions(dispatcher.generate)
    )
    agent = AgentService(
        connect(settings.sandbox_address, settings.outgoing_key()),
        ServerFunctions(functions.callables()),
    )
    dispatcher.scripts = agent
    generation = GenerationService(dispatcher)
    catalog = CatalogService(backends, personalities, functions)
    tokenizer = TokenizerService(backends, settings.max_request_bytes, settings.max_message_bytes)
    embedding = EmbeddingService(backends)
    services = [
        Service(
            service_name(generation_pb2, "GenerationService"),
            lambda s: generation_pb2_grpc.add_GenerationServiceServicer_to_server(generation, s),
        ),
        Service(
            service_name(catalog_pb2, "CatalogService"),
            lambda s: catalog_pb2_grpc.add_CatalogServiceServicer_to_server(catalog, s),
        ),
        Service(
            service_name(agent_pb2, "AgentService"),
            lambda s: agent_pb2_grpc.add_AgentServiceServicer_to_server(agent, s),
        ),
        Service(
            service_name(tokenizer_pb2, "TokenizerService"),
            lambda s: tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server(tokenizer, s),
        ),
        Service(
            service_name(embedding_pb2, "EmbeddingService"),
            lambda s: embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(embedding, s),
        ),
    ]

    async def startup() -> None:
        backends.start()

    await serve(settings, services, startup=startup, shutdown=backends.close)
