"""Router settings: binding instances, personalities, functions and where the sandbox lives."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from genmesh.runtime.settings import CONFIG_ENV, ConfigError, ServiceSettings, load_settings
from genmesh.v1 import common_pb2

TaskName = Literal["text", "image", "image_edit", "speech", "transcription"]
TASKS: dict[TaskName, common_pb2.Task.ValueType] = {
    "text": common_pb2.TASK_TEXT,
    "image": common_pb2.TASK_IMAGE,
    "image_edit": common_pb2.TASK_IMAGE_EDIT,
    "speech": common_pb2.TASK_SPEECH,
    "transcription": common_pb2.TASK_TRANSCRIPTION,
}
# The GenerateRequest.parameters field that carries each task's typed parameters.
PARAMETER_FIELDS: dict[int, str] = {
    common_pb2.TASK_TEXT: "text",
    common_pb2.TASK_IMAGE: "image",
    common_pb2.TASK_IMAGE_EDIT: "image",
    common_pb2.TASK_SPEECH: "speech",
    common_pb2.TASK_TRANSCRIPTION: "transcription",
}
ZOO = Path(__file__).parent / "zoo"


def parameters_message(task: int, values: dict[str, Any]) -> Message:
    """`values` (proto JSON names) as the typed parameter message of `task`; ValueError if
    a name or value does not fit."""
    field = PARAMETER_FIELDS[task]
    message: Message = getattr(common_pb2.GenerateRequest(), field).__class__()
    try:
        json_format.ParseDict(values, message)
    except json_format.ParseError as exc:
        raise ValueError(f"not valid {field} parameters: {exc}") from None
    return message


class BindingConfig(BaseModel):
    """A binding instance: a name clients use, routed to replicas of a modality service."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    tasks: list[TaskName] = Field(min_length=1)
    addresses: list[str] = Field(min_length=1)
    engine: str = ""
    model: str = ""
    description: str = ""
    default: bool = False
    # Default parameters of the binding's tasks (e.g. max_tokens, temperature, steps),
    # under a request's and a personality's; and default engine extras.
    parameters: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    # Admission control: this many requests in flight at once, up to max_queue more waiting,
    # each at most queue_timeout_seconds; beyond that callers get RESOURCE_EXHAUSTED with a
    # retry delay. By default the router does not queue: a request waits in one place, the
    # service's queue, which knows its engine's slots, and whose refusal (with its RetryInfo)
    # reaches the caller. A router queue is for sharing one backend between bindings.
    max_concurrent: int = Field(default=4096, ge=1)
    max_queue: int = Field(default=0, ge=0)
    queue_timeout_seconds: float = Field(default=30.0, gt=0)

    @field_validator("addresses")
    @classmethod
    def _host_port(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"'{address}' is not host:port")
        return addresses

    @model_validator(mode="after")
    def _parameters_fit(self) -> BindingConfig:
        for task in self.tasks:
            parameters_message(TASKS[task], self.parameters)
        return self


class PersonalityOverride(BaseModel):
    """Per-personality switches, keyed by the personality's folder name (as in LOLLMS)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True


class InputSettings(BaseModel):
    """Where an `InputItem.uri` may point (data: URIs always may); see genmesh.router.inputs."""

    model_config = ConfigDict(extra="forbid")

    # file:// URIs are read only inside these folders, after symlinks and '..' are resolved;
    # none (the default) refuses every file:// URI.
    file_roots: list[Path] = []
    # http(s):// URIs are fetched only from these hosts, "name" (any port) or "name:port";
    # none (the default) refuses every http(s):// URI. Redirects are not followed.
    http_hosts: list[str] = []
    # The most one URI may hold once read, and how long a fetch may take in all.
    max_uri_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    http_timeout_seconds: float = Field(default=10.0, gt=0)

    @field_validator("http_hosts")
    @classmethod
    def _lower_case(cls, hosts: list[str]) -> list[str]:
        return [host.strip().lower() for host in hosts]


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
    # More binding instances, one YAML file each (like LOLLMS's bindings folder).
    bindings_folder: Path | None = None
    sandbox_address: str = "127.0.0.1:50055"
    # Folders holding personalities in the LOLLMS layout (<folder>/<name>/config.yaml).
    personality_folders: list[Path] = [ZOO / "personalities"]
    personalities: dict[str, PersonalityOverride] = {}
    # Folders of trusted Python files whose public async functions sandbox programs may call.
    function_folders: list[Path] = [ZOO / "functions"]
    # Requests larger than this are rejected with INVALID_ARGUMENT before any work is done;
    # the transport limit (max_message_bytes) stays higher so the client gets details.
    max_request_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    # The key the router presents to modality services; defaults to GENMESH_INTERNAL_KEY.
    backend_key: SecretStr | None = None
    # Replicas are checked this often (and at once when their connection drops).
    health_check_interval_seconds: float = Field(default=0.5, gt=0)
    # What InputItem.uri may refer to: files under allowed roots, allowlisted web hosts.
    inputs: InputSettings = InputSettings()

    @model_validator(mode="after")
    def _unique_names(self) -> RouterSettings:
        check_unique(self.bindings)
        return self

    def outgoing_key(self) -> str | None:
        key = self.backend_key or self.internal_key
        return key.get_secret_value() if key else None


def check_unique(bindings: list[BindingConfig]) -> None:
    names = [b.name for b in bindings]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"bindings: duplicate names {duplicates}")


def binding_files(folder: Path) -> list[BindingConfig]:
    """The binding instances in `folder`, one per *.yaml file; the name defaults to the file's.

    Errors name the file and the field, since these files are edited by hand.
    """
    if not folder.is_dir():
        raise ConfigError(f"router.bindings_folder: {folder} is not a folder")
    bindings = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a mapping of binding fields")
        data.setdefault("name", path.stem)
        try:
            bindings.append(BindingConfig.model_validate(data))
        except ValidationError as exc:
            problems = [
                f"  {path}: {'.'.join(str(p) for p in e['loc']) or '(binding)'}: {e['msg']}"
                for e in exc.errors()
            ]
            raise ConfigError("invalid binding file:\n" + "\n".join(problems)) from None
    return bindings


def load_router_settings() -> RouterSettings:
    """The settings, with the bindings folder merged in; errors name the file they came from."""
    try:
        settings = load_settings(RouterSettings)
    except ConfigError as exc:
        source = os.environ.get(CONFIG_ENV)
        where = f"\n  (read from {source} and GENMESH_ROUTER_* variables)" if source else ""
        raise ConfigError(f"{exc}{where}") from None
    if settings.bindings_folder is not None:
        settings.bindings = [*settings.bindings, *binding_files(settings.bindings_folder)]
        try:
            check_unique(settings.bindings)
        except ValueError as exc:
            raise ConfigError(f"router: {exc} (with {settings.bindings_folder})") from None
    return settings
