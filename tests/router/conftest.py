"""Router fixtures beyond the session's echo mesh: a sandbox service, and the real Vault-compatible
server of the secrets tests (fixtures shared from tests/runtime)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.runtime.conftest import start_vault, vault, vault_bin  # noqa: F401 - shared fixtures
from tests.support import ServiceProcess


@pytest.fixture(scope="session")
def sandbox() -> Iterator[ServiceProcess]:
    process = ServiceProcess("sandbox", {})
    yield process
    process.terminate()
