"""Settings of the tti service: which pipeline folders to serve, and the limits on requests."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field, model_validator

from genmesh.runtime.settings import ServiceSettings, choose_default

EMBEDDED_MODEL = "genmesh-shapes"
EMBEDDED_PATH = Path(__file__).parent / "models" / EMBEDDED_MODEL


class ImageModelSpec(BaseModel):
    """One diffusers pipeline folder and its request defaults."""

    name: str = Field(min_length=1)
    path: Path = EMBEDDED_PATH
    # "auto" takes the GPU in fp16 when there is one, else the CPU in fp32.
    device: str = "auto"
    steps: int = Field(default=20, ge=1)
    guidance_scale: float = Field(default=4.0, ge=0)
    concurrency: int = Field(default=1, ge=1)
    queue_size: int = Field(default=8, ge=0)
    queue_timeout_seconds: float = Field(default=300.0, gt=0)


class Limits(BaseModel):
    """Bounds on what one request may ask for."""

    max_width: int = Field(default=1024, ge=8)
    max_height: int = Field(default=1024, ge=8)
    max_steps: int = Field(default=150, ge=1)
    max_images: int = Field(default=4, ge=1)


class TtiSettings(ServiceSettings):
    service_name: ClassVar[str] = "tti"

    port: int = Field(default=50053, ge=0, le=65535)
    models: list[ImageModelSpec] = [ImageModelSpec(name=EMBEDDED_MODEL)]
    default_model: str = ""
    limits: Limits = Limits()
    # torch intra-op threads; 0 keeps torch's default (one per core).
    threads: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _default_is_known(self) -> TtiSettings:
        self.default_model = choose_default([m.name for m in self.models], self.default_model)
        return self
