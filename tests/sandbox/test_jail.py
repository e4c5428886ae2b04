"""The OS layers alone: `jail.enter` in a fresh process, with the dialect's rules out of the way,
and the layers the service reports. test_jail_raw.py attacks the real zygote's children.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from genmesh.sandbox import jail
from genmesh.sandbox.executor import Executor


def jailed(action: str) -> tuple[str, int | None]:
    """Runs `action` in a fresh jailed process; returns its report and killing signal."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.sandbox.jail_probe", action, str(write_end)],
        pass_fds=[write_end],
        cwd=Path(__file__).parents[2],
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    code = process.wait(timeout=60)
    return report, -code if code < 0 else None


@pytest.mark.parametrize("action", ["read_file", "write_file"])
def test_files_are_denied(action: str) -> None:
    assert jailed(action) == ("PermissionError", None)


@pytest.mark.parametrize(
    "action", ["start_thread", "unix_socket", "tcp_socket", "fork", "execute", "signal_parent"]
)
def test_threads_sockets_processes_and_signals_kill_the_child(action: str) -> None:
    report, killed_by = jailed(action)
    assert killed_by == signal.SIGSYS, report


def test_child_runs_unprivileged() -> None:
    report, _ = jailed("whoami")
    if os.geteuid() == 0:
        assert report == "ok (65534, 65534, [])"


@pytest.mark.asyncio(loop_scope="session")
async def test_every_layer_is_reported(executor: Executor) -> None:
    names = [layer["name"] for layer in executor.layers]
    assert names == list(jail.LAYERS)
    assert not executor.missing_layers(), executor.missing_layers()
    details = {layer["name"]: layer["detail"] for layer in executor.layers}
    assert details["seccomp"].startswith("default deny")
    assert details["self_test"] == (
        "Landlock alone denied a file; the whole jail denied a file; "
        "an unlisted syscall (getcwd) got EPERM; socket() killed the child"
    )
