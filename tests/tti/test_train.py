"""The training script on a short run: it writes a pipeline folder the tti service serves.

The full run (`python -m genmesh.tti.train`) made the embedded model; CI checks the script's
path end to end in a few steps instead, and that the embedded model's recorded recipe is the
script's default one.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from genmesh.runtime.channel import key_interceptors
from genmesh.tti.settings import EMBEDDED_PATH
from genmesh.tti.train import Recipe
from genmesh.v1 import inference_pb2_grpc
from tests.support import INTERNAL_KEY, ServiceProcess
from tests.tti.conftest import images, infer, request

SHORT = ["--steps", "3", "--autoencoder-steps", "2", "--dataset-size", "64", "--batch", "8"]
SHORT_RECIPE = Recipe(steps=3, autoencoder_steps=2, dataset_size=64, batch=8)


def run_training(out: Path, *args: str) -> str:
    """Runs the script to completion and returns its log."""
    run = subprocess.run(
        [sys.executable, "-m", "genmesh.tti.train", str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return run.stderr


def weights(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*.safetensors")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "fresh"
    run_training(out, *SHORT)
    return out


@pytest.fixture(scope="module")
def fresh_tti(trained: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess("tti", {"models": [{"name": "fresh", "path": str(trained)}]})
    yield process
    process.terminate()


async def test_a_short_training_run_gives_a_servable_pipeline(
    trained: Path, fresh_tti: ServiceProcess
) -> None:
    assert Recipe.of(trained) == SHORT_RECIPE
    async with grpc.aio.insecure_channel(
        fresh_tti.address, interceptors=key_interceptors(INTERNAL_KEY)
    ) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        [image] = images(await infer(stub, request("a red circle", steps=2, seed=0)))
    assert image.size == (32, 32)


def copy_of(trained: Path, out: Path) -> Path:
    """A copy of the fixture's folder, written times kept, to train again over."""
    shutil.copytree(trained, out)
    return out


def test_forced_training_with_the_same_seed_gives_the_same_weights(
    trained: Path, tmp_path: Path
) -> None:
    again = copy_of(trained, tmp_path / "again")
    assert "already holds" not in run_training(again, *SHORT, "--force")
    assert weights(again) == weights(trained)


def test_a_changed_recipe_trains_again(trained: Path, tmp_path: Path) -> None:
    other = copy_of(trained, tmp_path / "other")
    assert "already holds" not in run_training(other, *SHORT, "--seed", "2")
    assert weights(other) != weights(trained)
    assert Recipe.of(other) == dataclasses.replace(SHORT_RECIPE, seed=2)


def test_a_folder_trained_with_the_same_recipe_is_kept(trained: Path, tmp_path: Path) -> None:
    kept = copy_of(trained, tmp_path / "kept")
    written = {p: p.stat().st_mtime_ns for p in kept.rglob("*") if p.is_file()}
    assert "already holds" in run_training(kept, *SHORT)
    assert {p: p.stat().st_mtime_ns for p in kept.rglob("*") if p.is_file()} == written


def test_the_embedded_model_was_trained_with_the_scripts_defaults() -> None:
    assert Recipe.of(EMBEDDED_PATH) == Recipe()
