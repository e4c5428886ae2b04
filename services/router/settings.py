"""Router settings: binding instances and where the sandbox lives."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator

from genmesh.runtime.settings import ServiceSettings
from genmesh.v1 import common_pb2

TaskName = Literal["text", "image", "image_edit", "speech", "transcription"]
TASKS: dict[TaskName, int] = {
    "text": common_pb2.TASK_TEXT,
    "image": common_pb2.TASK_IMAGE,
    "image_edit": common_pb2.TASK_IMAGE_EDIT,
    "speech": common_pb2.TASK_SPEECH,
    "transcription": common_pb2.TASK_TRANSCRIPTION,
}


class BindingConfig(BaseModel):
    """A binding instance: a name clients use, routed to replicas of a modality service."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    tasks: list[TaskName] = Field(min_length=1)
    addresses: list[str] = Field(min_length=1)
    engine: str = ""
    model: str = ""
    description: str = ""
    default: bool = False
    parameters: dict[str, Any] = {}


class RouterSettings(ServiceSettings):
    service_name: ClassVar[str] = "router"

    port: int = Field(default=50051, ge=0, le=65535)
    bindings: list[BindingConfig] = [
        BindingConfig(
            name="echo",
            tasks=["text"],
            addresses=["127.0.0.1:50052"],
            engine="echo",
            model="echo",
            description="deterministic echo engine on the ttt service",
        )
    ]
    sandbox_address: str = "127.0.0.1:50055"
    # Requests larger than this are rejected with INVALID_ARGUMENT before any work is done;
    # the transport limit (max_message_bytes) stays higher so the client gets details.
    max_request_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    # The key the router presents to modality services; defaults to GENMESH_INTERNAL_KEY.
    backend_key: SecretStr | None = None
    health_check_interval_seconds: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _unique_names(self) -> RouterSettings:
        names = [b.name for b in self.bindings]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"bindings: duplicate names {duplicates}")
        return self

    def outgoing_key(self) -> str | None:
        key = self.backend_key or self.internal_key
        return key.get_secret_value() if key else None
