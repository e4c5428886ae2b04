"""The pre-warmed parent: imports and warms the dialect once, then forks a jailed child per run.

It is a separate process started by the sandbox service (never forked from the service itself,
whose gRPC threads must not be cloned). The service sends it a socket per run over a
SOCK_SEQPACKET control channel; it answers with the child's pid and a pidfd (so the service can
kill the child race-free at its deadline) and later with the child's exit status.

It runs with the clean environment and isolated interpreter of `jail.zygote_command` and imports
what a child needs (the dialect, its runtime, the wire) and the jail, never settings or secrets,
so it holds nothing a child could steal.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import selectors
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from genmesh.sandbox import child, jail


def _send(ctrl: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    """Tells the service; a service that is gone has nobody to tell, so the zygote ends (its
    children see end-of-file on their pipes and end too)."""
    try:
        socket.send_fds(ctrl, [json.dumps(message).encode()], fds or [])
    except (BrokenPipeError, ConnectionResetError):
        os._exit(0)


def _in_jail(
    attempts: tuple[Callable[[], object], ...],
    limits: jail.JailLimits,
    layers: dict[str, jail.Layer],
    seccomp: jail.Seccomp | None,
) -> tuple[str, int]:
    """Makes each attempt in a child forked through the jail; returns its report ("E" once the
    child is jailed, then " ok" or the errno's name for each attempt; "!" and the error if the
    jail failed) and the child's wait status."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        out = write_end
        try:
            out = jail.enter(write_end, limits, layers, seccomp)
            os.write(out, b"E")
            for attempt in attempts:
                try:
                    attempt()
                    result = "ok"
                except OSError as exc:
                    result = errno.errorcode.get(exc.errno or 0, "?")
                os.write(out, f" {result}".encode())
        except BaseException as exc:
            os.write(out, f"!{exc}".encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return report, status


def _open_a_file() -> None:
    os.close(os.open(sys.executable, os.O_RDONLY))


def _open_a_socket() -> None:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()


def _self_test(
    limits: jail.JailLimits, layers: dict[str, jail.Layer], seccomp: jail.Seccomp | None
) -> jail.Layer:
    """Tries the layers in jailed children, each layer on its own where another would hide it:
    Landlock alone must deny a file; the whole jail must deny it too, refuse an unlisted syscall
    (getcwd) with EPERM and kill the child on socket()."""
    checked, problems = [], []
    if layers["landlock"].active:
        alone = {**layers, "seccomp": jail.Layer("seccomp", False, "left out of this check")}
        report, _ = _in_jail((_open_a_file,), limits, alone, None)
        if not report.startswith("E"):
            return jail.Layer("self_test", False, f"a jailed child failed: {report[1:]}")
        checked.append("Landlock alone denied a file")
        if report != "E EACCES":
            problems.append(f"Landlock alone did not deny a file ({report[1:]})")
    report, status = _in_jail((_open_a_file, os.getcwd, _open_a_socket), limits, layers, seccomp)
    if not report.startswith("E"):
        return jail.Layer("self_test", False, f"a jailed child failed: {report[1:]}")
    opened, cwd, *_ = [*report.split()[1:], "", ""]  # a child killed early answered fewer
    if layers["landlock"].active or layers["seccomp"].active:
        checked.append("the whole jail denied a file")
        if opened == "ok":
            problems.append("the whole jail let a file be opened")
    if layers["seccomp"].active:
        checked.append("an unlisted syscall (getcwd) got EPERM; socket() killed the child")
        if cwd != "EPERM":
            problems.append(f"getcwd() was not refused with EPERM ({cwd or 'no answer'})")
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS):
            problems.append("socket() did not kill the child")
    if problems:
        return jail.Layer("self_test", False, "; ".join(problems))
    return jail.Layer("self_test", True, "; ".join(checked) or "a jailed child started")


def _spawn(
    *,
    ctrl: socket.socket,
    run_fd: int,
    template: child.Template,
    limits: jail.JailLimits,
    layers: dict[str, jail.Layer],
    seccomp: jail.Seccomp | None,
) -> None:
    """Forks a child that enters the jail and then waits for its program on `run_fd`."""
    pid = os.fork()
    if pid == 0:
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            fd = jail.enter(run_fd, limits, layers, seccomp)
            child.execute(template, fd)
        finally:
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
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        cpu = usage.ru_utime + usage.ru_stime
        _send(ctrl, {"t": "exit", "pid": pid, "status": status, "cpu": cpu})


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
