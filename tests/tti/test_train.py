"""The training script on a short run: it writes a pipeline folder the tti service serves.

The full run (`python -m genmesh.tti.train`) made the embedded model; CI checks the script's
path end to end in a few steps instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from genmesh.runtime.channel import key_interceptors
from genmesh.v1 import inference_pb2_grpc
from tests.support import INTERNAL_KEY, ServiceProcess
from tests.tti.conftest import images, infer, request


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "fresh"
    args = ["--steps", "3", "--autoencoder-steps", "2", "--dataset-size", "64", "--batch", "8"]
    run = subprocess.run(
        [sys.executable, "-m", "genmesh.tti.train", str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return out


@pytest.fixture(scope="module")
def fresh_tti(trained: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess("tti", {"models": [{"name": "fresh", "path": str(trained)}]})
    yield process
    process.terminate()


async def test_a_short_training_run_gives_a_servable_pipeline(
    trained: Path, fresh_tti: ServiceProcess
) -> None:
    assert json.loads((trained / "genmesh_training.json").read_text())["steps"] == 3
    async with grpc.aio.insecure_channel(
        fresh_tti.address, interceptors=key_interceptors(INTERNAL_KEY)
    ) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        [image] = images(await infer(stub, request("a red circle", steps=2, seed=0)))
    assert image.size == (32, 32)
