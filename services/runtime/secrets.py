"""API keys and upstream provider secrets, from Vault KV v2 or, without Vault, from env and a file.

Both sources hold the same two things:

- API keys, one per name. A record is a mapping `{"sha256": <hex digest>, "scopes": [...]}` or
  `{"key": <plaintext>, "scopes": "generate,agent"}` (hashed at once), the same as a JSON string,
  or a bare string taken as the plaintext key with the default scopes. In Vault they are the
  fields of the secret `<path>/api-keys` (so `bao kv put secret/genmesh/api-keys ci=<key>` works);
  in the file, the mapping `api_keys:`.
- Provider secrets (an upstream endpoint's key, ...): the fields of `<path>/providers` in Vault;
  `providers:` in the file, overridden by `GENMESH_SECRET_<NAME>` environment variables.

`LiveSecrets` refreshes periodically so a key added or revoked takes effect without a restart;
when the source is down it keeps the last good values. Engines read provider secrets through
`ProviderSecrets` at each use and ask for an early re-read when an upstream refuses one, so a
rotation reaches them at once, not only at the next periodic refresh.

Values never reach logs or reprs: provider secrets are `SecretStr`, plaintext keys are hashed
while parsing, and error messages are built from field names only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import hvac
import hvac.exceptions
import requests
import yaml
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator

from genmesh.runtime import telemetry
from genmesh.runtime.auth import KeyStore, digest, keys_from_settings
from genmesh.runtime.settings import ApiKey, ConfigError, ServiceSettings
from genmesh.runtime.vault_settings import VaultSettings

log = logging.getLogger(__name__)

KEYS_SECRET = "api-keys"
PROVIDERS_SECRET = "providers"
ENV_PREFIX = "GENMESH_SECRET_"
FILE_REFRESH_SECONDS = 30.0
REREAD_SECONDS = 1.0
Scope = Literal["generate", "agent", "admin", "internal"]


class SecretsError(ConfigError):
    """The source could not be read; the message names the source, never a value."""


@dataclass(frozen=True)
class Secrets:
    """One consistent read of a source."""

    api_keys: tuple[ApiKey, ...] = ()
    providers: Mapping[str, SecretStr] = field(default_factory=dict)

    def provider(self, name: str) -> SecretStr:
        try:
            return self.providers[name]
        except KeyError:
            raise KeyError(f"no provider secret named {name!r}") from None


class _KeyRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: SecretStr | None = None
    sha256: str | None = None
    scopes: frozenset[Scope] = frozenset({"generate", "agent"})

    @field_validator("scopes", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def to_api_key(self, name: str) -> ApiKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of 'key' and 'sha256'")
        hashed = digest(self.key.get_secret_value()) if self.key else str(self.sha256).lower()
        return ApiKey(name=name, sha256=hashed, scopes=frozenset(self.scopes))


def _describe(exc: ValidationError) -> str:
    """A validation error without the offending input (which may be a key)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'record'}: {err['msg']}" for err in exc.errors()
    )


def parse_api_keys(records: Mapping[str, object], source: str) -> tuple[ApiKey, ...]:
    """Key records by name; a bad record is skipped with a warning so the others still work."""
    keys: list[ApiKey] = []
    for name, raw in records.items():
        value: object = raw
        if isinstance(raw, str):
            with contextlib.suppress(ValueError):
                value = json.loads(raw)
            if not isinstance(value, dict):
                value = {"key": raw}
        try:
            keys.append(_KeyRecord.model_validate(value).to_api_key(str(name)))
        except ValidationError as exc:
            log.warning("skipping API key %r from %s: %s", name, source, _describe(exc))
        except ValueError as exc:
            log.warning("skipping API key %r from %s: %s", name, source, exc)
    return tuple(keys)


def parse_providers(values: Mapping[str, object], source: str) -> dict[str, SecretStr]:
    providers: dict[str, SecretStr] = {}
    for name, value in values.items():
        if isinstance(value, str):
            providers[str(name)] = SecretStr(value)
        else:
            log.warning("skipping provider secret %r from %s: not a string", name, source)
    return providers


class SecretsProvider(ABC):
    """A source of API keys and provider secrets. `fetch` blocks; call it from a thread."""

    @abstractmethod
    def fetch(self) -> Secrets:
        """Reads everything afresh; raises `SecretsError` when the source cannot answer."""

    @property
    @abstractmethod
    def refresh_seconds(self) -> float: ...


class VaultSecrets(SecretsProvider):
    """Reads `<path>/api-keys` and `<path>/providers` from a KV v2 mount through hvac.

    With Kubernetes auth it logs in with the pod's service-account token and logs in again
    (re-reading the rotated token file) when Vault starts refusing the current Vault token.
    """

    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings
        token = settings.token.get_secret_value() if settings.token else None
        verify: bool | str = str(settings.ca_cert) if settings.ca_cert else settings.tls_verify
        self._client = hvac.Client(
            url=settings.address,
            token=token if settings.auth == "token" else None,
            verify=verify,
            timeout=int(settings.timeout_seconds),
            namespace=settings.namespace,
        )
        self._logged_in = settings.auth == "token"

    @property
    def refresh_seconds(self) -> float:
        return self.settings.refresh_seconds

    def __repr__(self) -> str:
        return f"VaultSecrets(address={self.settings.address!r}, auth={self.settings.auth!r})"

    def _login(self) -> None:
        jwt = self.settings.jwt_path.read_text().strip()
        self._client.auth.kubernetes.login(
            role=self.settings.role, jwt=jwt, mount_point=self.settings.auth_mount
        )
        self._logged_in = True

    def _read(self, name: str) -> Mapping[str, object]:
        try:
            response = self._client.secrets.kv.v2.read_secret_version(
                path=f"{self.settings.path.strip('/')}/{name}",
                mount_point=self.settings.mount,
                raise_on_deleted_version=True,
            )
        except hvac.exceptions.InvalidPath:
            return {}
        data = response["data"]["data"]
        return data if isinstance(data, dict) else {}

    def _read_all(self) -> tuple[Mapping[str, object], Mapping[str, object]]:
        if not self._logged_in:
            self._login()
        try:
            return self._read(KEYS_SECRET), self._read(PROVIDERS_SECRET)
        except hvac.exceptions.Forbidden:
            if self.settings.auth != "kubernetes":
                raise
            self._login()
            return self._read(KEYS_SECRET), self._read(PROVIDERS_SECRET)

    def fetch(self) -> Secrets:
        try:
            keys, providers = self._read_all()
        except (hvac.exceptions.VaultError, requests.RequestException, OSError) as exc:
            self._logged_in = self.settings.auth == "token"
            raise SecretsError(
                f"vault at {self.settings.address}: {type(exc).__name__}: {exc}"
            ) from None
        source = f"vault {self.settings.mount}/{self.settings.path}"
        return Secrets(
            api_keys=parse_api_keys(keys, f"{source}/{KEYS_SECRET}"),
            providers=parse_providers(providers, f"{source}/{PROVIDERS_SECRET}"),
        )


class LocalSecrets(SecretsProvider):
    """Without Vault: an optional YAML/JSON file (`api_keys:`, `providers:`) and the environment.

    The file suits a mounted Kubernetes Secret, which is updated in place, so it is re-read.
    """

    def __init__(
        self,
        file: Path | None = None,
        environ: Mapping[str, str] | None = None,
        refresh_seconds: float = FILE_REFRESH_SECONDS,
    ) -> None:
        self.file = file
        self._environ = os.environ if environ is None else environ
        self._refresh_seconds = refresh_seconds

    @property
    def refresh_seconds(self) -> float:
        return self._refresh_seconds

    def __repr__(self) -> str:
        return f"LocalSecrets(file={self.file!r})"

    def _load_file(self) -> Mapping[str, Any]:
        if self.file is None:
            return {}
        try:
            data = yaml.safe_load(self.file.read_text())
        except OSError as exc:
            raise SecretsError(f"{self.file}: {exc.strerror}") from None
        except yaml.MarkedYAMLError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
            raise SecretsError(f"{self.file}: invalid YAML near line {line}") from None
        if data is None:
            return {}
        if not isinstance(data, dict) or set(data) - {"api_keys", "providers"}:
            raise SecretsError(f"{self.file}: expected only 'api_keys:' and 'providers:'")
        for section in ("api_keys", "providers"):
            if not isinstance(data.get(section) or {}, dict):
                raise SecretsError(f"{self.file}: '{section}' must be a mapping")
        return data

    def fetch(self) -> Secrets:
        data = self._load_file()
        source = str(self.file)
        providers = parse_providers(data.get("providers") or {}, source)
        providers.update(
            (name[len(ENV_PREFIX) :].lower(), SecretStr(value))
            for name, value in self._environ.items()
            if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX)
        )
        return Secrets(
            api_keys=parse_api_keys(data.get("api_keys") or {}, source), providers=providers
        )


def provider_from_settings(settings: ServiceSettings) -> SecretsProvider:
    if settings.vault is not None:
        return VaultSecrets(settings.vault)
    return LocalSecrets(settings.secrets_file)


class LiveSecrets:
    """The current secrets of a provider, refreshed in the background.

    A failed refresh logs a warning (never a value) and keeps the last good secrets, so a Vault
    outage does not lock every client out; `on_update` runs after each successful read.
    """

    def __init__(
        self,
        provider: SecretsProvider,
        on_update: Callable[[Secrets], None] | None = None,
        reread_seconds: float = REREAD_SECONDS,
    ) -> None:
        self.provider = provider
        self.on_update = on_update
        self.reread_seconds = reread_seconds
        self.current = Secrets()
        self._task: asyncio.Task[None] | None = None
        self._reread: asyncio.Task[bool] | None = None
        self._last_reread = -reread_seconds

    async def load(self) -> Secrets:
        """The first read; unlike a refresh, a failure here is fatal (there is nothing to keep)."""
        self._apply(await asyncio.to_thread(self.provider.fetch))
        return self.current

    async def refresh(self) -> bool:
        try:
            secrets = await asyncio.to_thread(self.provider.fetch)
        except SecretsError as exc:
            log.warning("secrets refresh failed, keeping the last good values: %s", exc)
            return False
        self._apply(secrets)
        return True

    async def reread(self) -> bool:
        """A refresh ahead of schedule, for a consumer whose upstream just refused a secret.

        Callers at the same time share one read, and reads start at most once per
        `reread_seconds`, so a secret that is wrong at the source too cannot turn every request
        into a read of the source. True when a read succeeded.
        """
        if self._reread is None or self._reread.done():
            now = time.monotonic()
            if now - self._last_reread < self.reread_seconds:
                return False
            self._last_reread = now
            self._reread = asyncio.create_task(self.refresh(), name="secrets-reread")
        return await asyncio.shield(self._reread)

    def _apply(self, secrets: Secrets) -> None:
        before = {key.name: key.sha256 for key in self.current.api_keys}
        after = {key.name: key.sha256 for key in secrets.api_keys}
        if before != after:
            telemetry.event(
                log,
                "api keys updated",
                added=sorted(after.keys() - before.keys()),
                removed=sorted(before.keys() - after.keys()),
                rotated=sorted(n for n in before.keys() & after.keys() if before[n] != after[n]),
            )
        self.current = secrets
        if self.on_update:
            self.on_update(secrets)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.provider.refresh_seconds)
            await self.refresh()

    async def start(self) -> None:
        """Loads, then keeps refreshing until `aclose`."""
        await self.load()
        self._task = asyncio.create_task(self._loop(), name="secrets-refresh")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class ProviderSecrets:
    """Provider secrets by name for a service's engines, which are built before the server has
    read its secrets: `bind` hands them the live ones once it has.

    Values are looked up at each use and never copied, so a rotation at the source reaches the
    engines with the next refresh, or at once through `rotated`.
    """

    def __init__(self) -> None:
        self._live: LiveSecrets | None = None

    def bind(self, live: LiveSecrets) -> None:
        self._live = live

    def _current(self) -> Secrets:
        return self._live.current if self._live is not None else Secrets()

    def _value(self, name: str) -> str | None:
        secret = self._current().providers.get(name)
        return secret.get_secret_value() if secret is not None else None

    def get(self, name: str) -> str:
        """The secret's current value; KeyError (naming it, not showing it) when there is none."""
        return self._current().provider(name).get_secret_value()

    async def rotated(self, name: str, refused: str) -> bool:
        """Whether the secret changed since `refused`, the value an upstream just refused; the
        source is re-read early to find out."""
        if self._live is not None and self._value(name) == refused:
            await self._live.reread()
        return self._value(name) != refused


async def start_secrets(settings: ServiceSettings, keys: KeyStore) -> LiveSecrets:
    """Feeds `keys` from the configured source, on top of the keys given in the settings."""
    static = keys_from_settings(settings)
    live = LiveSecrets(
        provider_from_settings(settings),
        on_update=lambda secrets: keys.replace([*static, *secrets.api_keys]),
    )
    await live.start()
    return live
