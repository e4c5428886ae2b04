"""ListModels and GetModelInfo over a models folder holding the three on-disk formats."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from genmesh.ttt.models import default_gguf, derived_model
from genmesh.ttt.settings import DEFAULT_EMBEDDING_MODEL
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests.support import INTERNAL_KEY, ServiceProcess

METADATA = (("x-api-key", INTERNAL_KEY),)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / default_gguf().name).symlink_to(default_gguf())
    (root / "nested").mkdir()
    (root / "nested" / "smol-onnx").symlink_to(derived_model("onnx"), target_is_directory=True)
    (root / "smol-hf").symlink_to(derived_model("hf"), target_is_directory=True)
    (root / "notes.txt").write_text("not a model")
    return root


@pytest.fixture(scope="module")
def service(folder: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess("ttt", {"models_dir": str(folder)})
    yield process
    process.terminate()


@pytest.fixture
async def stub(
    service: ServiceProcess,
) -> AsyncIterator[inference_pb2_grpc.InferenceServiceAsyncStub]:
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


async def test_list_models_shows_loaded_and_found_models(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub,
) -> None:
    response = await stub.ListModels(
        inference_pb2.InferenceServiceListModelsRequest(), metadata=METADATA
    )
    models = {m.name: m for m in response.models}
    assert models["echo"].loaded
    gguf = models[default_gguf().stem]
    assert (gguf.engine, gguf.loaded, gguf.context_size) == ("llama.cpp", False, 8192)
    assert gguf.size_bytes == default_gguf().stat().st_size
    assert models["smol-onnx"].engine == "onnxruntime-genai"
    assert models["smol-hf"].engine == "transformers"
    assert all(m.context_size == 8192 for m in models.values() if not m.loaded)
    assert not any(m.supports_vision or m.supports_audio for m in response.models)
    assert models[DEFAULT_EMBEDDING_MODEL].kind == common_pb2.MODEL_KIND_EMBEDDING
    assert len(models) == 5


async def test_model_info_of_a_folder_model(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub,
) -> None:
    response = await stub.GetModelInfo(
        inference_pb2.InferenceServiceGetModelInfoRequest(model="smol-hf"), metadata=METADATA
    )
    assert response.model.max_output_tokens == 8192
    assert response.model.details["format"] == "hf"
    assert str(response.model.details["path"]).endswith("smol-hf")
