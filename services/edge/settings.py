"""Edge settings: where it listens, where the router is, what OpenAI model names mean here, and
how much one request may ask for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, model_validator

from genmesh.client import DEFAULT_ADDRESS
from genmesh.runtime.settings import ServiceSettings

# The endpoint families a model name can be used with.
Kind = Literal["chat", "embedding", "image", "speech", "transcription"]

# OpenAI's own model names, which clients often hard-code, name the mesh's default binding for
# their task (the empty binding) on that task's endpoints only; a chat model name is not
# aliased, so a typo is a clear 404.
OPENAI_ALIASES: dict[Kind, dict[str, str]] = {
    "chat": {},
    "embedding": dict.fromkeys(
        ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"), ""
    ),
    "image": dict.fromkeys(("dall-e-2", "dall-e-3", "gpt-image-1"), ""),
    "speech": dict.fromkeys(("tts-1", "tts-1-hd", "gpt-4o-mini-tts"), ""),
    "transcription": dict.fromkeys(
        ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"), ""
    ),
}
MIB = 1024 * 1024


def built_playground() -> Path:
    """Where scripts/build_web.sh leaves the playground it built last."""
    cache = Path(os.environ.get("GENMESH_CACHE") or Path.home() / ".cache" / "genmesh")
    return cache / "web" / "dist"


class EdgeSettings(ServiceSettings):
    """The edge's own settings beside every service's (`max_message_bytes` bounds each message
    to and from the router). The body and upload limits sit below the message limit, so a request
    the router could not take is refused before it is read, not by the channel after."""

    service_name: ClassVar[str] = "edge"

    port: int = Field(default=8000, ge=0, le=65535)
    router_address: str = DEFAULT_ADDRESS
    # Per kind of endpoint: model names a request may use in place of "binding" or
    # "binding/model"; "" is the default binding for the endpoint's task.
    model_aliases: dict[Kind, dict[str, str]] = OPENAI_ALIASES
    # Largest HTTP request body (JSON or multipart).
    max_body_bytes: int = Field(default=16 * MIB, gt=0)
    # Largest file one multipart upload (image, mask, audio) may carry.
    max_upload_bytes: int = Field(default=15 * MIB, gt=0)
    # Most generations one text request may start (prompts times n).
    max_choices: int = Field(default=16, ge=1)
    # The built web playground served at `/` (scripts/build_web.sh builds it).
    web_dir: Path = Field(default_factory=built_playground)
    # Prometheus /metrics pages the playground's status shows queues and request rates of, by
    # service name (e.g. {"router": "http://127.0.0.1:9464/metrics"}).
    status_sources: dict[str, str] = {}

    @model_validator(mode="after")
    def _limits_agree(self) -> Self:
        if self.max_upload_bytes > min(self.max_body_bytes, self.max_message_bytes):
            raise ValueError("max_upload_bytes must not exceed max_body_bytes or max_message_bytes")
        return self

    def aliases(self, kind: Kind) -> dict[str, str]:
        return self.model_aliases.get(kind, {})
