"""Settings of the ttt service: which models to load, with which engine."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from genmesh.runtime.settings import ServiceSettings


class ModelSpec(BaseModel):
    """One model the service serves."""

    name: str = Field(min_length=1)
    engine: str = "echo"
    path: str = ""
    options: dict[str, Any] = {}


class TttSettings(ServiceSettings):
    service_name: ClassVar[str] = "ttt"

    port: int = Field(default=50052, ge=0, le=65535)
    models: list[ModelSpec] = [ModelSpec(name="echo", engine="echo")]
    default_model: str = ""

    @model_validator(mode="after")
    def _default_is_known(self) -> TttSettings:
        names = [m.name for m in self.models]
        if not names:
            raise ValueError("models: at least one model is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"models: duplicate names in {names}")
        if not self.default_model:
            self.default_model = names[0]
        elif self.default_model not in names:
            raise ValueError(f"default_model '{self.default_model}' is not one of {names}")
        return self
