"""CatalogService and TokenizerService: what the mesh offers, answered from config and backends."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from genmesh.router import validation
from genmesh.router.backends import Backends, BindingRoute
from genmesh.router.dispatch import Context, translate
from genmesh.router.functions import FunctionRegistry
from genmesh.router.personalities import Personalities
from genmesh.runtime import errors
from genmesh.runtime.errors import FieldViolation
from genmesh.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    inference_pb2,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
)

_M = TypeVar("_M", bound=Message)


async def call_backend(route: BindingRoute, method: str, request: Any, context: Context) -> Any:
    """A unary call to one replica, retried once on another replica when unavailable."""
    replica = route.pick()
    for attempt in range(2):
        try:
            rpc = getattr(replica.stub, method)
            return await rpc(request, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt or len(route.replicas) < 2:
                raise translate(error, route) from None
            replica.mark_down()
            replica = route.pick(exclude=replica)
    raise errors.unavailable(f"binding '{route.name}' is unavailable", binding=route.name)


# A model's kind when its service does not say: what the first of its tasks makes it.
TASK_KINDS = {
    common_pb2.TASK_TEXT: common_pb2.MODEL_KIND_CHAT,
    common_pb2.TASK_IMAGE: common_pb2.MODEL_KIND_IMAGE,
    common_pb2.TASK_IMAGE_EDIT: common_pb2.MODEL_KIND_IMAGE,
    common_pb2.TASK_SPEECH: common_pb2.MODEL_KIND_SPEECH,
    common_pb2.TASK_TRANSCRIPTION: common_pb2.MODEL_KIND_TRANSCRIPTION,
}


def described(model: common_pb2.ModelInfo, route: BindingRoute) -> common_pb2.ModelInfo:
    """A backend's model info as the catalog shows it: with its binding and its kind."""
    model.binding = route.name
    if not model.kind and model.tasks:
        model.kind = TASK_KINDS.get(model.tasks[0], common_pb2.MODEL_KIND_UNSPECIFIED)
    return model


class CatalogService(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(
        self, backends: Backends, personalities: Personalities, functions: FunctionRegistry
    ) -> None:
        self.backends = backends
        self.personalities = personalities
        self.functions = functions

    async def ListBindings(  # noqa: N802 - gRPC method name
        self, request: catalog_pb2.ListBindingsRequest, context: Context
    ) -> catalog_pb2.ListBindingsResponse:
        validation.task(request.task)
        bindings = []
        for route in self.backends.routes.values():
            if request.task and request.task not in route.tasks:
                continue
            default = any(self.backends.default_for(t) is route for t in route.tasks)
            bindings.append(
                catalog_pb2.Binding(
                    name=route.name,
                    tasks=route.tasks,
                    engine=route.config.engine,
                    model=route.config.model,
                    description=route.config.description,
                    replicas=len(route.replicas),
                    healthy_replicas=route.healthy_count(),
                    is_default=default,
                )
            )
        return catalog_pb2.ListBindingsResponse(bindings=bindings)

    async def ListPersonalities(  # noqa: N802
        self, request: catalog_pb2.ListPersonalitiesRequest, context: Context
    ) -> catalog_pb2.ListPersonalitiesResponse:
        return catalog_pb2.ListPersonalitiesResponse(personalities=self.personalities.listed())

    async def ListFunctions(  # noqa: N802
        self, request: catalog_pb2.ListFunctionsRequest, context: Context
    ) -> catalog_pb2.ListFunctionsResponse:
        return catalog_pb2.ListFunctionsResponse(
            functions=[f.info() for f in self.functions.by_name.values()]
        )

    async def ListModels(  # noqa: N802
        self, request: catalog_pb2.ListModelsRequest, context: Context
    ) -> catalog_pb2.ListModelsResponse:
        validation.names(binding=request.binding)
        if request.kind not in common_pb2.ModelKind.values():
            known = ", ".join(common_pb2.ModelKind.keys())
            raise errors.invalid_argument(
                f"unknown model kind {request.kind}",
                FieldViolation("kind", f"must be one of {known}"),
            )
        routes = (
            [self.backends.get(request.binding)]
            if request.binding
            else list(self.backends.routes.values())
        )
        answers = await asyncio.gather(
            *(
                call_backend(
                    r, "ListModels", inference_pb2.InferenceServiceListModelsRequest(), context
                )
                for r in routes
            )
        )
        models: list[common_pb2.ModelInfo] = []
        for route, answer in zip(routes, answers, strict=True):
            for model in answer.models:
                described(model, route)
                if not request.kind or model.kind == request.kind:
                    models.append(model)
        return catalog_pb2.ListModelsResponse(models=models)

    async def GetModelInfo(  # noqa: N802
        self, request: catalog_pb2.GetModelInfoRequest, context: Context
    ) -> catalog_pb2.GetModelInfoResponse:
        validation.names(binding=request.binding, model=request.model)
        if not request.binding:
            raise errors.invalid_argument(
                "GetModelInfo needs a binding", FieldViolation("binding", "is required")
            )
        route = self.backends.get(request.binding)
        answer = await call_backend(
            route,
            "GetModelInfo",
            inference_pb2.InferenceServiceGetModelInfoRequest(
                model=request.model or route.config.model
            ),
            context,
        )
        return catalog_pb2.GetModelInfoResponse(model=described(answer.model, route))


def text_route(backends: Backends, binding: str, model: str, what: str) -> BindingRoute:
    """The named text binding, or the default one: only text services have tokenizers and
    embedding models (`what` says which the caller wants, for the error)."""
    validation.names(binding=binding, model=model)
    if not binding:
        return backends.default_for(common_pb2.TASK_TEXT)
    route = backends.get(binding)
    if common_pb2.TASK_TEXT not in route.tasks:
        raise errors.invalid_argument(
            f"binding '{binding}' has no {what}",
            FieldViolation("binding", "must be a binding that serves TASK_TEXT"),
        )
    return route


class TokenizerService(tokenizer_pb2_grpc.TokenizerServiceServicer):
    def __init__(self, backends: Backends, max_request_bytes: int, max_message_bytes: int) -> None:
        self.backends = backends
        # A text is held to a generation request's limit; an answer to the transport's.
        self.max_request_bytes = max_request_bytes
        self.max_message_bytes = max_message_bytes

    def _route(self, binding: str, model: str) -> BindingRoute:
        return text_route(self.backends, binding, model, "tokenizer")

    async def _tokenize(
        self,
        request: tokenizer_pb2.TokenizeRequest | tokenizer_pb2.CountTokensRequest,
        context: Context,
        special: bool = False,
        count_only: bool = False,
    ) -> inference_pb2.InferenceServiceTokenizeResponse:
        validation.check_size(request, self.max_request_bytes, "text")
        route = self._route(request.binding, request.model)
        backend_request = inference_pb2.InferenceServiceTokenizeRequest(
            model=request.model or route.config.model,
            text=request.text,
            add_special_tokens=special,
            count_only=count_only,
        )
        answer: inference_pb2.InferenceServiceTokenizeResponse = await call_backend(
            route, "Tokenize", backend_request, context
        )
        return answer

    def _fitting(self, response: _M, field: str, advice: str) -> _M:
        """`response`, if one message carries it (else INVALID_ARGUMENT naming `field`)."""
        errors.check_response_size(response.ByteSize(), self.max_message_bytes, field, advice)
        return response

    async def Tokenize(  # noqa: N802
        self, request: tokenizer_pb2.TokenizeRequest, context: Context
    ) -> tokenizer_pb2.TokenizeResponse:
        answer = await self._tokenize(request, context, special=request.add_special_tokens)
        response = tokenizer_pb2.TokenizeResponse(tokens=answer.tokens, pieces=answer.pieces)
        advice = "list the tokens of a shorter text at a time, or only count them (CountTokens)"
        return self._fitting(response, "text", advice)

    async def Detokenize(  # noqa: N802
        self, request: tokenizer_pb2.DetokenizeRequest, context: Context
    ) -> tokenizer_pb2.DetokenizeResponse:
        route = self._route(request.binding, request.model)
        answer = await call_backend(
            route,
            "Detokenize",
            inference_pb2.InferenceServiceDetokenizeRequest(
                model=request.model or route.config.model, tokens=request.tokens
            ),
            context,
        )
        response = tokenizer_pb2.DetokenizeResponse(text=answer.text)
        return self._fitting(response, "tokens", "detokenize fewer tokens at a time")

    async def CountTokens(  # noqa: N802
        self, request: tokenizer_pb2.CountTokensRequest, context: Context
    ) -> tokenizer_pb2.CountTokensResponse:
        answer = await self._tokenize(request, context, count_only=True)
        # A service of an earlier version lists the tokens instead of counting them.
        return tokenizer_pb2.CountTokensResponse(count=answer.count or len(answer.tokens))
