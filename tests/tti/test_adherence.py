"""Prompt adherence of the embedded model, measured on the pixels it generates.

Prompts are compositions held out of training (colour, shape and background combinations the
model never saw together); each image is read back by `shapes.measure`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genmesh.tti import shapes
from tests.tti.conftest import images, infer, request

if TYPE_CHECKING:
    from tests.tti.conftest import Stub

PROMPTS = 24
IMAGES_PER_PROMPT = 2


async def test_held_out_prompts_are_followed(stub: Stub) -> None:
    pairs = []
    for index, scene in enumerate(shapes.evaluation_scenes(PROMPTS)):
        req = request(scene.caption, steps=20, seed=1000 + 10 * index, count=IMAGES_PER_PROMPT)
        pairs += [(scene, shapes.measure(image)) for image in images(await infer(stub, req))]
    scores = shapes.adherence(pairs)
    print(f"prompt adherence on {len(pairs)} held-out images: {scores}")
    assert scores["colour"] >= 0.8 and scores["background"] >= 0.8, scores
    assert scores["shape"] >= 0.6, scores
    # Position has no target of its own; this catches a model that ignores it (chance is 0.25).
    assert scores["quadrant"] >= 0.5, scores
