"""Where a service finds its secrets in HashiCorp Vault (or OpenBao): a KV v2 mount and path.

Kept apart from `genmesh.runtime.secrets` so `ServiceSettings` can embed it as `vault:` without
importing hvac or the key records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class VaultSettings(BaseModel):
    """Vault address, how to log in, and where the secrets live.

    Under `path` on the KV v2 `mount`, the secret `api-keys` holds one field per API key and
    `providers` one field per upstream provider secret (see `genmesh.runtime.secrets`).
    """

    model_config = ConfigDict(extra="forbid")

    address: str = Field(pattern=r"^https?://", description="e.g. https://vault.vault:8200")
    auth: Literal["token", "kubernetes"] = "token"
    token: SecretStr | None = Field(
        default=None, validate_default=True, description="for auth=token"
    )
    role: str | None = Field(
        default=None, validate_default=True, description="Vault role, for auth=kubernetes"
    )
    jwt_path: Path = Field(
        default=SERVICE_ACCOUNT_TOKEN,
        description="the service-account token file, re-read at each login (it rotates)",
    )
    auth_mount: str = "kubernetes"
    namespace: str | None = None
    mount: str = "secret"
    path: str = "genmesh"
    refresh_seconds: float = Field(default=30.0, gt=0)
    timeout_seconds: float = Field(default=5.0, gt=0)
    tls_verify: bool = True
    ca_cert: Path | None = Field(default=None, description="CA bundle for Vault's certificate")

    # Checked per field, not on the whole model, so an error never echoes the section (and token).
    @field_validator("token")
    @classmethod
    def _token_for_token_auth(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if info.data.get("auth") == "token" and value is None:
            raise ValueError("vault.auth=token needs vault.token")
        return value

    @field_validator("role")
    @classmethod
    def _role_for_kubernetes_auth(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("auth") == "kubernetes" and not value:
            raise ValueError("vault.auth=kubernetes needs vault.role")
        return value
