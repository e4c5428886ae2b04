"""Secrets from a real Vault-compatible server (dev mode on loopback) and from env/file."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from genmesh.runtime.auth import KeyStore, digest
from genmesh.runtime.secrets import (
    LiveSecrets,
    LocalSecrets,
    SecretsError,
    VaultSecrets,
    start_secrets,
)
from genmesh.runtime.settings import ConfigError, ServiceSettings, load_settings
from genmesh.runtime.vault_settings import VaultSettings

if TYPE_CHECKING:
    from tests.runtime.conftest import TokenReviewStub, VaultServer


def new_key() -> str:
    return "gm-" + secrets.token_urlsafe(24)


def settings_for(vault: VaultServer, **fields: object) -> VaultSettings:
    """Settings for a fresh path, so tests sharing one server do not see each other's keys."""
    values: dict[str, object] = {
        "address": vault.address,
        "token": vault.root_token,
        "path": f"genmesh-{uuid.uuid4().hex[:8]}",
    }
    values.update(fields)
    return VaultSettings.model_validate(values)


def put(vault: VaultServer, settings: VaultSettings, name: str, data: dict[str, object]) -> None:
    vault.admin().secrets.kv.v2.create_or_update_secret(
        path=f"{settings.path}/{name}", secret=data, mount_point=settings.mount
    )


def revoke_logins(vault: VaultServer, mount: str) -> None:
    """Revokes every Vault token issued by a login on this auth mount."""
    vault.admin().adapter.put(f"/v1/sys/leases/revoke-prefix/auth/{mount}/login")


def kubernetes_mount(vault: VaultServer, token_review: TokenReviewStub) -> str:
    """A fresh Kubernetes auth mount whose logins `token_review` vouches for, with a role
    "router" for the router's service account and the policy named after the mount."""
    mount = f"k8s-{uuid.uuid4().hex[:6]}"
    admin = vault.admin()
    admin.sys.enable_auth_method("kubernetes", path=mount)
    admin.auth.kubernetes.configure(
        kubernetes_host=token_review.url,
        kubernetes_ca_cert=token_review.ca_pem,
        disable_local_ca_jwt=True,
        mount_point=mount,
    )
    admin.auth.kubernetes.create_role(
        name="router",
        bound_service_account_names=["router"],
        bound_service_account_namespaces=["genmesh"],
        policies=[mount],
        mount_point=mount,
    )
    return mount


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Waits for a background refresh to have happened; the bound is generous, not a measure."""
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        await asyncio.sleep(0.05)


def test_token_auth_reads_every_key_form_and_provider_secrets(vault: VaultServer) -> None:
    hashed, plain, as_json = new_key(), new_key(), new_key()
    settings = settings_for(vault)
    put(
        vault,
        settings,
        "api-keys",
        {
            "ci": {"sha256": digest(hashed), "scopes": ["generate"]},
            "laptop": plain,
            "ops": f'{{"key": "{as_json}", "scopes": "agent,admin"}}',
        },
    )
    put(vault, settings, "providers", {"openai": "sk-upstream"})

    got = VaultSecrets(settings).fetch()

    store = KeyStore(got.api_keys)
    assert store.verify(hashed) is not None
    assert store.verify(hashed).scopes == {"generate"}  # type: ignore[union-attr]
    assert store.verify(plain).scopes == {"generate", "agent"}  # type: ignore[union-attr]
    assert store.verify(as_json).scopes == {"agent", "admin"}  # type: ignore[union-attr]
    assert store.verify(new_key()) is None
    assert got.provider("openai").get_secret_value() == "sk-upstream"
    with pytest.raises(KeyError, match="anthropic"):
        got.provider("anthropic")


def test_missing_secrets_mean_no_keys(vault: VaultServer) -> None:
    got = VaultSecrets(settings_for(vault)).fetch()
    assert got.api_keys == ()
    assert dict(got.providers) == {}


def test_a_bad_record_is_skipped_and_the_others_still_work(
    vault: VaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = new_key(), new_key()
    settings = settings_for(vault)
    put(
        vault,
        settings,
        "api-keys",
        {"good": good, "typo": {"key": bad, "scopes": ["generate", "root"]}},
    )
    with caplog.at_level(logging.WARNING):
        store = KeyStore(VaultSecrets(settings).fetch().api_keys)
    assert store.verify(good) is not None
    assert store.verify(bad) is None
    assert "'typo'" in caplog.text
    assert bad not in caplog.text


def test_a_wrong_token_is_reported_without_the_token(vault: VaultServer) -> None:
    wrong = "hvs." + secrets.token_hex(12)
    with pytest.raises(SecretsError, match="permission denied") as raised:
        VaultSecrets(settings_for(vault, token=wrong)).fetch()
    assert vault.address in str(raised.value)
    assert wrong not in str(raised.value)


async def test_refresh_adds_revokes_and_rotates_keys_without_restart(vault: VaultServer) -> None:
    old, new, kept = new_key(), new_key(), new_key()
    settings = settings_for(vault, refresh_seconds=0.1)
    put(vault, settings, "api-keys", {"rotating": old, "kept": kept})
    store = KeyStore()
    live = LiveSecrets(VaultSecrets(settings), on_update=lambda s: store.replace(s.api_keys))
    await live.start()
    try:
        assert store.verify(old) is not None
        put(vault, settings, "api-keys", {"rotating": new, "kept": kept, "added": new_key()})
        await eventually(lambda: store.verify(old) is None, "old key revoked")
        assert store.verify(new) is not None
        assert store.verify(kept) is not None
        assert {k.name for k in live.current.api_keys} == {"rotating", "kept", "added"}
        vault.admin().secrets.kv.v2.delete_latest_version_of_secret(
            path=f"{settings.path}/api-keys", mount_point=settings.mount
        )
        await eventually(lambda: len(store) == 0, "every key revoked with the secret")
    finally:
        await live.aclose()


async def test_an_outage_keeps_the_last_good_values(
    start_vault: Callable[[], VaultServer], caplog: pytest.LogCaptureFixture
) -> None:
    vault = start_vault()
    key = new_key()
    settings = settings_for(vault)
    put(vault, settings, "api-keys", {"ci": key})
    put(vault, settings, "providers", {"openai": "sk-before-outage"})
    store = KeyStore()
    live = LiveSecrets(VaultSecrets(settings), on_update=lambda s: store.replace(s.api_keys))
    await live.load()

    vault.stop()
    with caplog.at_level(logging.WARNING):
        assert await live.refresh() is False

    assert store.verify(key) is not None
    assert live.current.provider("openai").get_secret_value() == "sk-before-outage"
    assert "keeping the last good values" in caplog.text
    assert vault.address in caplog.text
    assert key not in caplog.text
    assert "sk-before-outage" not in caplog.text
    with pytest.raises(SecretsError):
        await LiveSecrets(VaultSecrets(settings)).load()


def test_kubernetes_auth_logs_in_through_token_review_and_again_when_revoked(
    vault: VaultServer, token_review: TokenReviewStub, tmp_path: Path
) -> None:
    key = new_key()
    settings = settings_for(vault, auth="kubernetes", token=None, role="router")
    mount = kubernetes_mount(vault, token_review)
    vault.admin().sys.create_or_update_policy(
        name=mount, policy=f'path "secret/data/{settings.path}/*" {{ capabilities = ["read"] }}'
    )
    put(vault, settings, "api-keys", {"ci": key})
    jwt_file = tmp_path / "token"
    jwt_file.write_text(token_review.issue("genmesh", "router"))
    provider = VaultSecrets(settings.model_copy(update={"jwt_path": jwt_file, "auth_mount": mount}))

    assert KeyStore(provider.fetch().api_keys).verify(key) is not None
    assert token_review.reviews == 1

    # Vault tokens expire or get revoked; the provider logs in again with the (rotated) JWT.
    revoke_logins(vault, mount)
    jwt_file.write_text(token_review.issue("genmesh", "router"))
    assert KeyStore(provider.fetch().api_keys).verify(key) is not None
    assert token_review.reviews == 2

    # A service account the cluster no longer vouches for cannot read anything.
    revoke_logins(vault, mount)
    jwt_file.write_text(token_review.issue("genmesh", "router", valid=False))
    with pytest.raises(SecretsError, match="permission denied"):
        provider.fetch()
    assert token_review.reviews == 3


def test_kubernetes_auth_rejects_an_unbound_service_account(
    vault: VaultServer, token_review: TokenReviewStub, tmp_path: Path
) -> None:
    mount = kubernetes_mount(vault, token_review)
    jwt_file = tmp_path / "token"
    jwt_file.write_text(token_review.issue("genmesh", "sandbox"))
    settings = settings_for(
        vault, auth="kubernetes", token=None, role="router", jwt_path=jwt_file, auth_mount=mount
    )
    with pytest.raises(SecretsError, match="service account name not authorized"):
        VaultSecrets(settings).fetch()


async def test_local_file_and_env_fallback_refreshes(tmp_path: Path) -> None:
    first, second = new_key(), new_key()
    file = tmp_path / "secrets.yaml"
    file.write_text(
        f"api_keys:\n  ci: {first}\n  admin: {{sha256: {digest(second)}, scopes: [admin]}}\n"
        "providers:\n  openai: sk-from-file\n  mistral: mk-from-file\n"
    )
    store = KeyStore()
    provider = LocalSecrets(file, environ={"GENMESH_SECRET_OPENAI": "sk-from-env", "HOME": "/"})
    live = LiveSecrets(provider, on_update=lambda s: store.replace(s.api_keys))
    await live.load()

    assert store.verify(first) is not None
    assert store.verify(second).scopes == {"admin"}  # type: ignore[union-attr]
    assert live.current.provider("openai").get_secret_value() == "sk-from-env"
    assert live.current.provider("mistral").get_secret_value() == "mk-from-file"

    file.write_text(f"api_keys:\n  admin: {{key: {second}, scopes: admin}}\n")
    assert await live.refresh()
    assert store.verify(first) is None
    assert store.verify(second) is not None

    file.write_text("api_keys: [unclosed\n")
    assert await live.refresh() is False
    assert store.verify(second) is not None


def test_no_file_means_env_only() -> None:
    got = LocalSecrets(environ={"GENMESH_SECRET_OPENAI": "sk-env"}).fetch()
    assert got.api_keys == ()
    assert got.provider("openai").get_secret_value() == "sk-env"


def test_a_broken_file_names_the_file_not_its_contents(tmp_path: Path) -> None:
    file = tmp_path / "secrets.yaml"
    file.write_text("providers:\n  openai: sk-secret-value\n  : [\n")
    with pytest.raises(SecretsError, match="invalid YAML near line") as raised:
        LocalSecrets(file).fetch()
    assert "sk-secret-value" not in str(raised.value)
    with pytest.raises(SecretsError, match="No such file or directory"):
        LocalSecrets(tmp_path / "missing.yaml").fetch()


def test_settings_validate_the_login_method(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs vault\.token"):
        VaultSettings(address="http://127.0.0.1:8200")
    with pytest.raises(ValueError, match=r"needs vault\.role"):
        VaultSettings(address="http://127.0.0.1:8200", auth="kubernetes")
    with pytest.raises(ValueError, match="address"):
        VaultSettings(address="127.0.0.1:8200", token="t")  # type: ignore[arg-type]


async def test_values_never_reach_logs_or_reprs(
    vault: VaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    key, upstream = new_key(), "sk-" + secrets.token_hex(16)
    settings = settings_for(vault)
    put(vault, settings, "api-keys", {"ci": key, "bad": {"key": key, "scopes": "nope"}})
    put(vault, settings, "providers", {"openai": upstream, "bad": 42})
    with caplog.at_level(logging.DEBUG):
        live = LiveSecrets(VaultSecrets(settings))
        await live.load()
        put(vault, settings, "api-keys", {"other": new_key()})
        await live.refresh()
        texts = [
            caplog.text,
            repr(settings),
            str(settings.model_dump()),
            repr(live.provider),
            repr(live.current),
            str(live.current),
        ]
    for text in texts:
        assert key not in text
        assert upstream not in text
        assert vault.root_token not in text
    assert "api keys updated" in caplog.text


class ProbeSettings(ServiceSettings):
    service_name = "probe"


async def test_service_settings_embed_vault_and_feed_the_key_store(
    vault: VaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_vault, from_env = new_key(), new_key()
    path = f"genmesh-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("GENMESH_API_KEY", from_env)
    monkeypatch.setenv("GENMESH_PROBE_VAULT__ADDRESS", vault.address)
    monkeypatch.setenv("GENMESH_PROBE_VAULT__TOKEN", vault.root_token)
    monkeypatch.setenv("GENMESH_PROBE_VAULT__PATH", path)
    monkeypatch.setenv("GENMESH_PROBE_VAULT__REFRESH_SECONDS", "0.1")
    settings = load_settings(ProbeSettings)
    assert settings.vault is not None
    put(vault, settings.vault, "api-keys", {"ci": from_vault})
    store = KeyStore()
    live = await start_secrets(settings, store)
    try:
        assert store.verify(from_vault) is not None
        assert store.verify(from_env) is not None
        put(vault, settings.vault, "api-keys", {})
        await eventually(lambda: store.verify(from_vault) is None, "vault key revoked")
        assert store.verify(from_env) is not None
    finally:
        await live.aclose()


def test_a_bad_vault_section_names_the_field_not_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENMESH_PROBE_VAULT__ADDRESS", "http://127.0.0.1:8200")
    monkeypatch.setenv("GENMESH_PROBE_VAULT__TOKEN", "hvs.not-shown")
    for auth, field in [("ldap", "auth"), ("kubernetes", "role")]:
        monkeypatch.setenv("GENMESH_PROBE_VAULT__AUTH", auth)
        with pytest.raises(ConfigError, match=rf"probe\.vault\.{field}") as raised:
            load_settings(ProbeSettings)
        assert "hvs.not-shown" not in str(raised.value)
