"""Runs one action behind every jail layer in a fresh process (forking pytest, whose gRPC threads
own file descriptors, would not be a faithful child). Usage: python -m tests.sandbox.jail_probe
ACTION FD; the outcome is written to FD, and a killed probe dies with the killing signal."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable

from genmesh.sandbox import jail


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


def whoami() -> object:
    return (os.getuid(), os.getgid(), os.getgroups())


ACTIONS: dict[str, Callable[[], object]] = {
    f.__name__: f
    for f in (
        read_file,
        write_file,
        start_thread,
        unix_socket,
        tcp_socket,
        fork,
        execute,
        signal_parent,
        whoami,
    )
}


def main() -> None:
    action = ACTIONS[sys.argv[1]]
    seccomp = jail.build_seccomp()
    layers = jail.probe_layers(jail.Layer("namespaces", False, "not needed here"), seccomp)
    fd = jail.enter(int(sys.argv[2]), jail.JailLimits(cpu_seconds=5), layers, seccomp)
    try:
        outcome = f"ok {action()!r}"
    except BaseException as exc:
        outcome = type(exc).__name__
    os.write(fd, outcome.encode())
    os._exit(0)


if __name__ == "__main__":
    main()
