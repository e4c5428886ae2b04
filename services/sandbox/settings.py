"""Settings of the sandbox service: per-run ceilings and whether isolation is mandatory."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from genmesh.runtime.settings import ServiceSettings
from genmesh.sandbox.executor import RunLimits


class SandboxSettings(ServiceSettings):
    service_name: ClassVar[str] = "sandbox"

    port: int = Field(default=50055, ge=0, le=65535)
    wall_seconds: float = Field(default=30.0, gt=0)
    cpu_seconds: int = Field(default=10, gt=0)
    max_calls: int = Field(default=1000, gt=0)
    # A printed line crosses to the service in one frame, where JSON may escape each byte into
    # six: 2 MiB keeps the largest possible line within the 16 MiB frame limit.
    max_output_bytes: int = Field(default=1 << 20, gt=0, le=2 << 20)
    max_output_lines: int = Field(default=10_000, gt=0)
    memory_bytes: int = Field(default=1 << 30, ge=64 << 20)
    recursion: int = Field(default=1000, ge=100, le=10_000)
    # Refuse to start unless every isolation layer is in force (production); by default a
    # missing layer is logged loudly and reported through health instead.
    require_isolation: bool = False

    def limits(self) -> RunLimits:
        return RunLimits(
            wall_seconds=self.wall_seconds,
            cpu_seconds=self.cpu_seconds,
            max_calls=self.max_calls,
            max_output_bytes=self.max_output_bytes,
            max_output_lines=self.max_output_lines,
            memory_bytes=self.memory_bytes,
            recursion=self.recursion,
        )
