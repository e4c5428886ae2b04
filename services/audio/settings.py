"""Settings of the audio service (``GENMESH_AUDIO_*`` and the ``audio:`` config section)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from genmesh.runtime.settings import ServiceSettings


class StreamingSettings(BaseModel):
    """How streamed speech is cut into segments (Silero VAD) and how often partials are sent."""

    threshold: float = Field(default=0.5, gt=0, lt=1)
    min_silence_ms: int = Field(default=500, ge=100)
    speech_pad_ms: int = Field(default=200, ge=0)
    max_segment_s: float = Field(default=25.0, gt=1, le=30)
    partial_every_s: float = Field(default=1.0, gt=0)


class AudioSettings(ServiceSettings):
    service_name: ClassVar[str] = "audio"

    port: int = Field(default=50054, ge=0, le=65535)
    # Threads for CTranslate2 (0: one per core); onnxruntime sizes its own pool.
    cpu_threads: int = Field(default=0, ge=0)
    # Concurrent syntheses and recognitions each; up to `queue_size` more wait their turn, each
    # at most `queue_timeout_seconds` (then RESOURCE_EXHAUSTED with a retry delay).
    max_concurrency: int = Field(default=1, ge=1)
    queue_size: int = Field(default=16, ge=0)
    queue_timeout_seconds: float = Field(default=30.0, gt=0)
    max_text_chars: int = Field(default=20_000, gt=0)
    max_audio_seconds: float = Field(default=3600.0, gt=0)
    streaming: StreamingSettings = StreamingSettings()
