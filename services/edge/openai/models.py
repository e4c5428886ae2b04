"""`/v1/models`: the bindings (ids as clients use them in `model`) and each binding's models
(`binding/model`), from CatalogService."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from fastapi import APIRouter

from genmesh.edge import errors
from genmesh.edge.openai.common import CallerDep, MeshDep, SettingsDep, binding_and_model
from genmesh.v1 import catalog_pb2

router = APIRouter()
OWNER = "genmesh"


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": OWNER}


@router.get("/v1/models")
async def list_models(mesh: MeshDep, caller: CallerDep) -> dict[str, Any]:
    """Every binding, then each binding's models; a binding whose service is down is listed
    without its models (requests to it say why they fail)."""
    meta = caller.metadata
    listed = await mesh.catalog.ListBindings(catalog_pb2.ListBindingsRequest(), metadata=meta)
    names = [b.name for b in listed.bindings]
    answers = await asyncio.gather(
        *(
            mesh.catalog.ListModels(catalog_pb2.ListModelsRequest(binding=name), metadata=meta)
            for name in names
        ),
        return_exceptions=True,
    )
    ids = list(names)
    for answer in answers:
        if isinstance(answer, grpc.aio.AioRpcError):
            continue
        if isinstance(answer, BaseException):
            raise answer
        ids += [f"{m.binding}/{m.name}" for m in answer.models]
    return {"object": "list", "data": [model_object(i) for i in dict.fromkeys(ids)]}


@router.get("/v1/models/{model_id:path}")
async def get_model(
    model_id: str, mesh: MeshDep, caller: CallerDep, settings: SettingsDep
) -> dict[str, Any]:
    """A binding, `binding/model`, or an alias (OpenAI's names for the default bindings)."""
    aliases = {k: v for kind in settings.model_aliases.values() for k, v in kind.items()}
    binding, model = binding_and_model(model_id, aliases)
    if not binding:
        return model_object(model_id)
    with errors.translated(errors.Params(renames={"binding": "model"})):
        await mesh.catalog.GetModelInfo(
            catalog_pb2.GetModelInfoRequest(binding=binding, model=model), metadata=caller.metadata
        )
    return model_object(model_id)
