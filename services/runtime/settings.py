"""Typed configuration shared by every service.

A service's settings come, strongest first, from constructor arguments, `GENMESH_<SERVICE>_*`
environment variables, the `<service>:` section of the YAML file named by `GENMESH_CONFIG`, and
the defaults. A bad value fails startup with a message that names the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from genmesh.runtime.vault_settings import VaultSettings

CONFIG_ENV = "GENMESH_CONFIG"


class ApiKey(BaseModel):
    """A key the service accepts. Only its SHA-256 digest is kept in memory."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: frozenset[str] = frozenset({"generate", "agent"})


class TelemetrySettings(BaseModel):
    """Where traces go; tracing stays local (no export) when no endpoint is set."""

    otlp_endpoint: str | None = None
    service_namespace: str = "genmesh"


class ServiceSettings(BaseSettings):
    """Settings every service has. Subclasses set `service_name` and their own defaults."""

    service_name: ClassVar[str] = "service"

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    api_keys: list[ApiKey] = []
    # Plain keys from the environment (GENMESH_API_KEY, GENMESH_INTERNAL_KEY); hashed at load.
    api_key: SecretStr | None = Field(default=None, validation_alias="GENMESH_API_KEY")
    internal_key: SecretStr | None = Field(default=None, validation_alias="GENMESH_INTERNAL_KEY")
    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    telemetry: TelemetrySettings = TelemetrySettings()
    # Port of the Prometheus /metrics endpoint (0: any free port); none when unset.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # More keys and the upstream provider secrets: from Vault when configured, else from this
    # file and GENMESH_SECRET_<NAME> (see genmesh.runtime.secrets).
    vault: VaultSettings | None = None
    secrets_file: Path | None = None

    model_config = SettingsConfigDict(extra="forbid", populate_by_name=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.model_config = SettingsConfigDict(
            extra="forbid",
            populate_by_name=True,
            env_prefix=f"GENMESH_{cls.service_name.upper()}_",
            env_nested_delimiter="__",
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file:
            sources.append(_SectionYamlSource(settings_cls, Path(config_file), cls.service_name))
        return tuple(sources)


class _SectionYamlSource(YamlConfigSettingsSource):
    """Reads one service's section of the mesh-wide YAML file."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path, section: str) -> None:
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}={path}: no such file")
        self._section = section
        super().__init__(settings_cls, yaml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        section = data.get(self._section) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{file_path}: section '{self._section}' must be a mapping")
        return section


class ConfigError(Exception):
    """A configuration problem, reported without a traceback."""


S = TypeVar("S", bound=ServiceSettings)
_SECRET_WORDS = ("key", "token", "secret", "password")


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Builds settings, turning validation errors into one readable message per field."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = [f"invalid {cls.service_name} settings:"]
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(root)"
            secret = any(word in field.lower() for word in _SECRET_WORDS)
            got = "" if secret else f" (got {err.get('input')!r})"
            lines.append(f"  {cls.service_name}.{field}: {err['msg']}{got}")
        raise ConfigError("\n".join(lines)) from None


def choose_default(names: list[str], default: str) -> str:
    """Validates a model list and its default (the first when unset), for services that host
    several models."""
    if not names:
        raise ValueError("models: at least one model is needed")
    if len(set(names)) != len(names):
        raise ValueError(f"models: duplicate names in {names}")
    if not default:
        return names[0]
    if default not in names:
        raise ValueError(f"default_model '{default}' is not one of {names}")
    return default
