"""Key scopes enforced on every public RPC, and keys that come from (and rotate in) Vault."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Iterator

import grpc
import pytest

from genmesh.client import Client, error_details, text_request
from genmesh.v1 import agent_pb2, catalog_pb2, embedding_pb2, generation_pb2, tokenizer_pb2
from tests.router.mesh import CALLS, eventually
from tests.runtime.conftest import VaultServer
from tests.support import ServiceProcess, echo_binding, router_config

KEYS = {
    "generate": ["generate"],
    "agent": ["agent"],
    "admin": ["admin"],
    "catalog-only": [],
}


def plain(name: str) -> str:
    return f"gm-scope-{name}"


def test_every_public_rpc_is_covered() -> None:
    services = [
        (generation_pb2, "GenerationService"),
        (tokenizer_pb2, "TokenizerService"),
        (agent_pb2, "AgentService"),
        (catalog_pb2, "CatalogService"),
        (embedding_pb2, "EmbeddingService"),
    ]
    methods = {
        f"{name}.{method.name}"
        for module, name in services
        for method in module.DESCRIPTOR.services_by_name[name].methods
    }
    assert methods == set(CALLS)


@pytest.fixture(scope="module")
def scoped_router(ttt: ServiceProcess, sandbox: ServiceProcess) -> Iterator[ServiceProcess]:
    keys = [
        {"name": name, "sha256": hashlib.sha256(plain(name).encode()).hexdigest(), "scopes": s}
        for name, s in KEYS.items()
    ]
    process = ServiceProcess(
        "router",
        router_config([echo_binding(ttt.address)], api_keys=keys, sandbox_address=sandbox.address),
    )
    yield process
    process.terminate()


@pytest.mark.parametrize("key", sorted(KEYS))
@pytest.mark.parametrize("rpc", sorted(CALLS))
async def test_scope_enforced_per_rpc(scoped_router: ServiceProcess, rpc: str, key: str) -> None:
    needed, call = CALLS[rpc]
    allowed = needed is None or needed in KEYS[key] or "admin" in KEYS[key]
    async with grpc.aio.insecure_channel(scoped_router.address) as channel:
        try:
            await call(channel, (("x-api-key", plain(key)),))
        except grpc.aio.AioRpcError as error:
            details = error_details(error)
            if allowed:
                pytest.fail(f"{key} was refused {rpc}: {details}")
            assert details.code == grpc.StatusCode.PERMISSION_DENIED
            assert details.metadata == {"scope": needed}
            return
    assert allowed, f"{key} may not call {rpc}"


async def test_keys_come_from_vault_and_rotate(ttt: ServiceProcess, vault: VaultServer) -> None:
    """Rotating a key in Vault: the router accepts the new one and refuses the old one,
    without a restart, and neither ever reaches its logs."""
    admin = vault.admin()
    path = f"router-{secrets.token_hex(4)}"
    old, new = f"gm-old-{secrets.token_hex(8)}", f"gm-new-{secrets.token_hex(8)}"

    def put(value: str) -> None:
        admin.secrets.kv.v2.create_or_update_secret(
            path=f"{path}/api-keys", secret={"rotating": value}, mount_point="secret"
        )

    put(f'{{"key": "{old}", "scopes": "generate"}}')
    vault_settings = {
        "address": vault.address,
        "token": vault.root_token,
        "path": path,
        "refresh_seconds": 0.2,
    }
    router = ServiceProcess(
        "router", router_config([echo_binding(ttt.address)], vault=vault_settings)
    )
    try:
        async with Client(router.address, old) as client:
            assert (await client.generate(text_request("old key"))).outputs[0].text == "old key"
            with pytest.raises(grpc.aio.AioRpcError) as scoped:
                await client.execute("1")
            assert scoped.value.code() == grpc.StatusCode.PERMISSION_DENIED

        await asyncio.to_thread(put, new)

        async def accepts_new() -> bool:
            async with Client(router.address, new) as client:
                try:
                    await client.generate(text_request("new key"))
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                    return False
                return True

        await eventually(accepts_new)
        async with Client(router.address, old) as client:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.generate(text_request("old key"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        router.terminate()
    logs = router.logs()
    assert old not in logs and new not in logs
    assert router.events("api keys updated")
