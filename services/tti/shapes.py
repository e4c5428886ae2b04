"""Procedural captioned shape scenes: the training data of the embedded image model and the
yardstick its prompt adherence is measured with.

One module holds both sides (drawing scenes from captions and reading scenes back out of pixels)
so that what the model is trained on and what the test checks cannot drift apart.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (245, 220, 30),
    "purple": (140, 40, 190),
    "orange": (250, 130, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
# Half-extent of the shape in pixels of the final image.
SIZES: dict[str, float] = {"small": 4.0, "medium": 6.5, "large": 10.0}
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (8.5, 8.5),
    "top right": (23.5, 8.5),
    "bottom left": (8.5, 23.5),
    "bottom right": (23.5, 23.5),
    "center": (16.0, 16.0),
}
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
MAX_CAPTION_WORDS = 16


@dataclass(frozen=True)
class Scene:
    """What one image shows; `caption` is the text a prompt for it would use."""

    colour: str
    shape: str
    background: str
    size: str = "medium"
    position: str = "center"
    say_size: bool = True
    say_position: bool = True

    @property
    def caption(self) -> str:
        size = f"{self.size} " if self.say_size and self.size != "medium" else ""
        if not self.say_position:
            where = ""
        elif self.position == "center":
            where = " in the center"
        else:
            where = f" at the {self.position}"
        return f"a {size}{self.colour} {self.shape}{where} on a {self.background} background"


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order (the tokenizer's vocabulary)."""
    words = ["a", "on", "background", "at", "the", "in", "center", "top", "bottom", "left", "right"]
    words += [*COLOURS, *SHAPES, *SIZES]
    return list(dict.fromkeys(words))


def held_out() -> frozenset[tuple[str, str, str]]:
    """(colour, shape, background) combinations never shown in training, so adherence is
    measured on compositions the model has to generalise to, not recall."""
    combos = [(c, s, b) for c, s, b in itertools.product(COLOURS, SHAPES, COLOURS) if c != b]
    return frozenset(random.Random(1234).sample(combos, len(combos) // 10))


def sample_scene(rng: random.Random, *, held: bool = False) -> Scene:
    """A random scene from the training split, or from the held-out split when `held`."""
    excluded = held_out()
    while True:
        colour, background = rng.sample(list(COLOURS), 2)
        shape = rng.choice(SHAPES)
        if ((colour, shape, background) in excluded) == held:
            break
    size = rng.choice(list(SIZES))
    # A large shape does not fit in a corner; corners take small and medium ones.
    position = "center" if size == "large" else rng.choice(list(POSITIONS))
    return Scene(
        colour,
        shape,
        background,
        size,
        position,
        say_size=held or rng.random() < 0.85,
        say_position=held or rng.random() < 0.85,
    )


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """Draws the scene with a little jitter in place and size, antialiased by supersampling."""
    s = SUPERSAMPLE
    image = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy = POSITIONS[scene.position]
    cx, cy = cx + rng.uniform(-1.5, 1.5), cy + rng.uniform(-1.5, 1.5)
    r = SIZES[scene.size] * rng.uniform(0.9, 1.1)
    fill = COLOURS[scene.colour]
    box = ((cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s)
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        r *= 0.9
        draw.rectangle(((cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s), fill=fill)
    else:
        draw.polygon(
            [(cx * s, (cy - r) * s), ((cx + r) * s, (cy + r) * s), ((cx - r) * s, (cy + r) * s)],
            fill=fill,
        )
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


@dataclass(frozen=True)
class Reading:
    """What `measure` sees in an image."""

    colour: str
    shape: str
    background: str
    quadrant: str


def _nearest_colours(pixels: np.ndarray) -> np.ndarray:
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    distance = ((pixels[..., None, :].astype(np.float32) - palette) ** 2).sum(-1)
    return np.asarray(distance.argmin(-1))


def measure(image: Image.Image) -> Reading:
    """Reads a scene back: the most common palette colour is the background, the most common
    other colour is the shape; its fill of its bounding box tells square (≈1), circle (≈π/4) and
    triangle (≈½) apart, and its centroid gives the quadrant."""
    pixels = np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)))
    labels = _nearest_colours(pixels)
    names = list(COLOURS)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    background = int(counts.argmax())
    counts[background] = 0
    colour = int(counts.argmax())
    mask = labels == colour
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return Reading("none", "none", names[background], "none")
    box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    fill = mask.sum() / box
    shape = "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"
    half = IMAGE_SIZE / 2
    vertical = "top" if ys.mean() + 0.5 < half else "bottom"
    horizontal = "left" if xs.mean() + 0.5 < half else "right"
    return Reading(names[colour], shape, names[background], f"{vertical} {horizontal}")


def evaluation_scenes(count: int, seed: int = 0) -> list[Scene]:
    """Held-out scenes placed in a corner, so colour, shape and quadrant are all measurable."""
    rng = random.Random(seed)
    scenes = []
    for _ in range(count):
        scene = sample_scene(rng, held=True)
        size = rng.choice(("small", "medium"))
        scenes.append(
            Scene(scene.colour, scene.shape, scene.background, size, rng.choice(QUADRANTS))
        )
    return scenes


def adherence(pairs: list[tuple[Scene, Reading]]) -> dict[str, float]:
    """The fraction of images whose measured shape colour, background, shape and quadrant match
    what their prompt asked for."""
    total = max(1, len(pairs))
    return {
        "colour": sum(r.colour == s.colour for s, r in pairs) / total,
        "background": sum(r.background == s.background for s, r in pairs) / total,
        "shape": sum(r.shape == s.shape for s, r in pairs) / total,
        "quadrant": sum(r.quadrant == s.position for s, r in pairs) / total,
    }
