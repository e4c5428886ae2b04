"""Maps an engine name in the settings to its implementation, importing heavy engines lazily so
a service only loads the libraries its configured models need."""

from __future__ import annotations

from genmesh.runtime.settings import ConfigError
from genmesh.ttt.engine import TextEngine
from genmesh.ttt.settings import ModelSpec


def create_engine(spec: ModelSpec) -> TextEngine:
    if spec.engine == "echo":
        from genmesh.ttt.echo import EchoEngine

        return EchoEngine(spec.name)
    raise ConfigError(f"ttt.models[{spec.name}].engine: unknown engine '{spec.engine}'")
