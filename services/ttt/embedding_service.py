"""The ttt InferenceService with embedding models beside the generation models: Embed, and the
embedding models in ListModels, GetModelInfo and the tokenizer RPCs (token-array inputs are ids
of the embedding model's own vocabulary, which Tokenize gives)."""

from __future__ import annotations

from pathlib import Path

from genmesh.runtime import errors
from genmesh.runtime.inference import Context
from genmesh.ttt.embedding import Embedder, vocabulary_violation
from genmesh.ttt.service import ServedModel, TextInferenceService
from genmesh.v1 import inference_pb2


class TextAndEmbeddingService(TextInferenceService):
    def __init__(
        self,
        models: dict[str, ServedModel],
        default_model: str,
        models_dir: Path | None,
        embedders: dict[str, Embedder],
        max_message_bytes: int,
    ) -> None:
        super().__init__(models, default_model, models_dir, max_message_bytes)
        self.embedders = embedders

    def embedder(self, name: str) -> Embedder:
        """The named embedding model; no name takes the first."""
        found = self.embedders.get(name) if name else next(iter(self.embedders.values()), None)
        if found is None:
            message = f"no embedding model '{name}' on this service"
            raise errors.not_found(message, "model", name or "(default)", "model")
        return found

    async def Embed(  # noqa: N802 - gRPC method name
        self, request: inference_pb2.InferenceServiceEmbedRequest, context: Context
    ) -> inference_pb2.InferenceServiceEmbedResponse:
        response = await self.embedder(request.request.model).embed(request.request)
        context.set_trailing_metadata((("x-request-id", response.request_id),))
        return inference_pb2.InferenceServiceEmbedResponse(response=response)

    async def ListModels(  # noqa: N802
        self, request: inference_pb2.InferenceServiceListModelsRequest, context: Context
    ) -> inference_pb2.InferenceServiceListModelsResponse:
        """Generation models, then embedding models, then the models folder's."""
        models = list((await super().ListModels(request, context)).models)
        loaded = len(self.models)
        models[loaded:loaded] = [e.info() for e in self.embedders.values()]
        return inference_pb2.InferenceServiceListModelsResponse(models=models)

    async def GetModelInfo(  # noqa: N802
        self, request: inference_pb2.InferenceServiceGetModelInfoRequest, context: Context
    ) -> inference_pb2.InferenceServiceGetModelInfoResponse:
        if request.model in self.embedders:
            return inference_pb2.InferenceServiceGetModelInfoResponse(
                model=self.embedders[request.model].info()
            )
        return await super().GetModelInfo(request, context)

    async def Tokenize(  # noqa: N802
        self, request: inference_pb2.InferenceServiceTokenizeRequest, context: Context
    ) -> inference_pb2.InferenceServiceTokenizeResponse:
        if request.model not in self.embedders:
            return await super().Tokenize(request, context)
        engine = self.embedders[request.model].engine

        def count(text: str, special: bool) -> int:
            return len(engine.pieces(text, special))

        return await self.tokenizer.tokenized(request, engine.pieces, count)

    async def Detokenize(  # noqa: N802
        self, request: inference_pb2.InferenceServiceDetokenizeRequest, context: Context
    ) -> inference_pb2.InferenceServiceDetokenizeResponse:
        if request.model not in self.embedders:
            return await super().Detokenize(request, context)
        engine = self.embedders[request.model].engine
        ids = list(request.tokens)
        outside = vocabulary_violation("tokens", ids, engine)
        if outside:
            raise errors.invalid_argument("tokens outside the vocabulary", outside)
        return await self.tokenizer.detokenized(engine.detokenize, ids)
