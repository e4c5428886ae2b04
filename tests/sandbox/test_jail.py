"""The OS layers alone: raw Python in a jailed child, with the dialect's rules out of the way.

These check what would stop a program that got past the dialect and the restricted runtime.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable

import pytest

from genmesh.sandbox import jail
from genmesh.sandbox.executor import Executor


def jailed(action: Callable[[], object]) -> tuple[str, int | None]:
    """Runs `action` in a forked child behind every layer; returns its report and killing signal."""
    seccomp = jail.build_seccomp()
    layers = jail.probe_layers(jail.Layer("namespaces", False, "not needed here"), seccomp)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        fd = jail.enter(write_end, jail.JailLimits(cpu_seconds=5), layers, seccomp)
        try:
            outcome = f"ok {action()!r}"
        except BaseException as exc:
            outcome = f"{type(exc).__name__}"
        os.write(fd, outcome.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return report, os.WTERMSIG(status) if os.WIFSIGNALED(status) else None


def read_file() -> object:
    with open("/etc/hostname", "rb") as f:
        return f.read()


def write_file() -> object:
    with open("/tmp/genmesh-jail-probe", "w") as f:
        return f.write("x")


def start_thread() -> object:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    return "started"


def unix_socket() -> object:
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)


def tcp_socket() -> object:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect(("127.0.0.1", 1))
    return sock


def fork() -> object:
    return os.fork()


def execute() -> object:
    return os.execv("/bin/true", ["true"])


def signal_parent() -> object:
    os.kill(os.getppid(), 0)
    return "signalled"


@pytest.mark.parametrize("action", [read_file, write_file])
def test_files_are_denied(action: Callable[[], object]) -> None:
    assert jailed(action) == ("PermissionError", None)


@pytest.mark.parametrize(
    "action", [start_thread, unix_socket, tcp_socket, fork, execute, signal_parent]
)
def test_threads_sockets_processes_and_signals_kill_the_child(action: Callable[[], object]) -> None:
    report, killed_by = jailed(action)
    assert killed_by == signal.SIGSYS, report


def test_child_runs_unprivileged() -> None:
    report, _ = jailed(lambda: (os.getuid(), os.getgid(), os.getgroups()))
    if os.geteuid() == 0:
        assert report == "ok (65534, 65534, [])"


@pytest.mark.asyncio(loop_scope="session")
async def test_every_layer_is_reported(executor: Executor) -> None:
    names = [layer["name"] for layer in executor.layers]
    assert names == list(jail.LAYERS)
    assert not executor.missing_layers(), executor.missing_layers()
