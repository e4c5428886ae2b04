"""The pre-warmed parent: imports and warms the dialect once, then forks a jailed child per run.

It is a separate process started by the sandbox service (never forked from the service itself,
whose gRPC threads must not be cloned). The service sends it a socket per run over a
SOCK_SEQPACKET control channel; it answers with the child's pid and a pidfd (so the service can
kill the child race-free at its deadline) and later with the child's exit status.
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import signal
import socket
import sys
from typing import Any, NoReturn

from genmesh.sandbox import child, jail


def _send(ctrl: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    socket.send_fds(ctrl, [json.dumps(message).encode()], fds or [])


def _self_test(limits: jail.JailLimits, layers: dict[str, jail.Layer], seccomp: Any) -> jail.Layer:
    """Forks a child through the real jail and checks that files and sockets are really denied."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            fd = jail.enter(write_end, limits, layers, seccomp)
            os.write(fd, b"E")
            try:
                with open("/etc/hostname", "rb"):
                    os.write(fd, b"f")
            except PermissionError:
                os.write(fd, b"L")
            except OSError:
                os.write(fd, b"f")
            socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
            os.write(fd, b"s")
        except BaseException as exc:
            os.write(write_end, f"!{exc}".encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if not report.startswith("E"):
        return jail.Layer("self_test", False, f"a jailed child failed to start: {report[1:]}")
    problems = []
    if layers["landlock"].active and "L" not in report:
        problems.append("a file could be opened")
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS
    if layers["seccomp"].active and not killed:
        problems.append("a socket could be created")
    if problems:
        return jail.Layer("self_test", False, "; ".join(problems))
    return jail.Layer("self_test", True, "a jailed child was denied files and killed on socket()")


def _spawn(
    *,
    ctrl: socket.socket,
    run_fd: int,
    template: child.Template,
    limits: jail.JailLimits,
    layers: dict[str, jail.Layer],
    seccomp: Any,
) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            fd = jail.enter(run_fd, limits, layers, seccomp)
            child.execute(template, fd)
        except BaseException:
            os._exit(5)
    os.close(run_fd)
    pidfd = os.pidfd_open(pid)
    try:
        _send(ctrl, {"t": "spawned", "pid": pid}, [pidfd])
    finally:
        os.close(pidfd)


def _reap(ctrl: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(ctrl, {"t": "exit", "pid": pid, "status": status})


def main() -> NoReturn:
    """Entry point: `python -m genmesh.sandbox.zygote CTRL_FD LIMITS_JSON`."""
    ctrl = socket.socket(fileno=int(sys.argv[1]))
    limits = jail.JailLimits(**json.loads(sys.argv[2]))
    network = jail.leave_network()
    template = child.Template()
    seccomp = jail.build_seccomp()
    layers = jail.probe_layers(network, seccomp)
    layers["self_test"] = _self_test(limits, layers, seccomp)
    gc.collect()
    gc.freeze()  # keeps the template's pages shared with children (no copy-on-write by GC)
    _send(ctrl, {"t": "ready", "layers": jail.describe(layers)})

    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(ctrl, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is ctrl:
                try:
                    data, fds, _, _ = socket.recv_fds(ctrl, 4096, 1)
                except InterruptedError:
                    continue
                except OSError:
                    data, fds = b"", []
                if not data:
                    os._exit(0)  # the service is gone; children see EOF on their pipes
                for fd in fds:
                    _spawn(
                        ctrl=ctrl,
                        run_fd=fd,
                        template=template,
                        limits=limits,
                        layers=layers,
                        seccomp=seccomp,
                    )
            else:
                while True:
                    try:
                        if not os.read(wake_read, 512):
                            break
                    except BlockingIOError:
                        break
                _reap(ctrl)


if __name__ == "__main__":
    main()
