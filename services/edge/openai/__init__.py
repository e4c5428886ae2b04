"""The OpenAI-compatible API: OpenAI's HTTP requests translated to genmesh's typed ones."""

from __future__ import annotations

from fastapi import APIRouter

from genmesh.edge.openai import audio, embeddings, images, models, text

router = APIRouter()
for part in (models, text, embeddings, images, audio):
    router.include_router(part.router)
