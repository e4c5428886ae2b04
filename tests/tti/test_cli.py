"""`genmesh image` against a real router in front of the tti service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from genmesh.tti import shapes
from tests.support import ServiceProcess, router_config, run_cli


@pytest.fixture(scope="module")
def router(tti: ServiceProcess) -> Iterator[ServiceProcess]:
    binding = {
        "name": "shapes",
        "tasks": ["image", "image_edit"],
        "addresses": [tti.address],
        "engine": "diffusers",
        "model": "genmesh-shapes",
    }
    process = ServiceProcess("router", router_config([binding]))
    yield process
    process.terminate()


def test_image_then_inpaint_it(router: ServiceProcess, tmp_path: Path) -> None:
    out = tmp_path / "circle.png"
    made = run_cli(
        router,
        "image",
        "a red circle on a blue background",
        "-o",
        str(out),
        "--steps",
        "4",
        "--seed",
        "3",
        "--size",
        "48x48",
    )
    assert made.returncode == 0, made.stderr
    assert "step 4/4" in made.stderr and "seed 3" in made.stdout
    assert Image.open(out).size == (48, 48)

    mask = tmp_path / "mask.png"
    Image.new("L", (48, 48), 255).save(mask)
    edited = tmp_path / "edited.webp"
    done = run_cli(
        router,
        "image",
        "a green square",
        "-o",
        str(edited),
        "--init-image",
        str(out),
        "--mask",
        str(mask),
        "--steps",
        "3",
        "--seed",
        "1",
    )
    assert done.returncode == 0, done.stderr
    with Image.open(edited) as image:
        assert image.format == "WEBP" and image.size == (48, 48)


def test_several_images_get_numbered_files(router: ServiceProcess, tmp_path: Path) -> None:
    out = tmp_path / "shape.jpg"
    made = run_cli(
        router, "image", "a white triangle", "-o", str(out), "--steps", "2", "--count", "2"
    )
    assert made.returncode == 0, made.stderr
    for name in ("shape-1.jpg", "shape-2.jpg"):
        assert Image.open(tmp_path / name).size == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)


def test_bad_size_names_the_field(router: ServiceProcess, tmp_path: Path) -> None:
    failed = run_cli(
        router, "image", "a red circle", "-o", str(tmp_path / "x.png"), "--size", "30x32"
    )
    assert failed.returncode == 1
    assert "INVALID_ARGUMENT" in failed.stderr and "image.width" in failed.stderr
