"""Example server-side functions for sandbox programs: every public async function here is
registered by the router under its name, with a JSON schema from its signature."""

from __future__ import annotations

from typing import Literal

LengthUnit = Literal["mm", "cm", "m", "km", "in", "ft", "mi"]
METRES = {
    "mm": 0.001,
    "cm": 0.01,
    "m": 1.0,
    "km": 1000.0,
    "in": 0.0254,
    "ft": 0.3048,
    "mi": 1609.344,
}


async def convert_length(value: float, from_unit: LengthUnit, to_unit: LengthUnit) -> float:
    """Converts a length between metric and imperial units."""
    return value * METRES[from_unit] / METRES[to_unit]


async def word_count(text: str) -> dict[str, int]:
    """Counts the words, lines and characters of a text."""
    return {"words": len(text.split()), "lines": len(text.splitlines()), "chars": len(text)}
