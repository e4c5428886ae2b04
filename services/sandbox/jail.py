"""OS isolation for sandbox children, in layers that each stand on their own.

The pre-warmed parent (the zygote) leaves the network namespace once; each child it forks then
closes every file descriptor but its pipe, drops to an unprivileged user, sets rlimits and
no_new_privs, loses all filesystem and TCP access and signal/abstract-socket reach through
Landlock, and finally installs a seccomp filter that kills the process on any attempt to create a
socket, thread or process, exec, ptrace or mount. A layer the platform lacks is reported as
unavailable (the zygote probes every layer at start-up); a layer that was available never fails
silently in a child: the child exits instead of running a program half-isolated.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import struct
from dataclasses import asdict, dataclass
from typing import Any

LAYERS = (
    "namespaces",
    "privileges",
    "rlimits",
    "no_new_privs",
    "landlock",
    "seccomp",
    "self_test",
)

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_SET_NO_NEW_PRIVS = 38
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_NOBODY = 65534
_TIOCSTI = 0x5412

# Syscalls a program never needs once the child is set up; any of them kills the child.
DENIED_SYSCALLS = [
    "socket",
    "socketpair",
    "connect",
    "bind",
    "listen",
    "accept",
    "accept4",
    "clone",
    "clone3",
    "fork",
    "vfork",
    "execve",
    "execveat",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kill",
    "tkill",
    "tgkill",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",
    "mount",
    "umount2",
    "unshare",
    "setns",
    "chroot",
    "pivot_root",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "personality",
    "open_by_handle_at",
    "name_to_handle_at",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fspick",
    "mount_setattr",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setgroups",
    "memfd_create",
    "mknod",
    "mknodat",
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@dataclass(frozen=True)
class Layer:
    """Whether one isolation layer is in force, and how."""

    name: str
    active: bool
    detail: str


@dataclass(frozen=True)
class JailLimits:
    """Per-child ceilings; a program may ask for less, never more."""

    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    open_files: int = 16


class JailError(Exception):
    """A layer that should be in force could not be applied."""


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise JailError(f"{what}: {os.strerror(err)}")
    return result


def leave_network() -> Layer:
    """Moves the caller (the zygote, so every child too) into an empty network namespace."""
    if _libc.unshare(_CLONE_NEWNET) == 0:
        return Layer("namespaces", True, "new network namespace (no interfaces)")
    first = os.strerror(ctypes.get_errno())
    if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        return Layer("namespaces", True, "new user + network namespace (no interfaces)")
    second = os.strerror(ctypes.get_errno())
    return Layer("namespaces", False, f"unshare(net) failed: {first}; with a user ns: {second}")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    abi = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    return max(int(abi), 0)


def _landlock(abi: int) -> None:
    """Handles every access right the kernel knows and grants none: no file opens, no TCP,
    no signals or abstract unix sockets outside the child."""
    fs = (1 << 13) - 1
    if abi >= 2:
        fs |= 1 << 13  # REFER
    if abi >= 3:
        fs |= 1 << 14  # TRUNCATE
    if abi >= 5:
        fs |= 1 << 15  # IOCTL_DEV
    net = 0b11 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP
    scoped = 0b11 if abi >= 6 else 0  # ABSTRACT_UNIX_SOCKET | SIGNAL
    if abi >= 6:
        attr = struct.pack("=QQQ", fs, net, scoped)
    elif abi >= 4:
        attr = struct.pack("=QQ", fs, net)
    else:
        attr = struct.pack("=Q", fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _check(
        _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, buf, len(attr), 0), "landlock_create_ruleset"
    )
    try:
        _check(_libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, fd, 0), "landlock_restrict_self")
    finally:
        os.close(fd)


def build_seccomp() -> Any:
    """The child's seccomp filter, compiled once in the zygote; None if libseccomp is missing."""
    try:
        import pyseccomp  # type: ignore[import-untyped]
    except (ImportError, OSError):
        return None
    filt = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            filt.add_rule(pyseccomp.KILL_PROCESS, name)
        except (OSError, ValueError, RuntimeError):
            continue  # not a syscall on this architecture
    filt.add_rule(pyseccomp.KILL_PROCESS, "ioctl", pyseccomp.Arg(1, pyseccomp.EQ, _TIOCSTI))
    return filt


def enter(keep_fd: int, limits: JailLimits, layers: dict[str, Layer], seccomp: Any) -> int:
    """Applies every available layer to the calling (freshly forked) child.

    Returns the child's pipe, moved to fd 3; raises JailError if an available layer fails.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(devnull, std)
    os.dup2(keep_fd, 3)
    os.closerange(4, 1 << 16)
    if layers["privileges"].active and os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(_NOBODY, _NOBODY, _NOBODY)
        os.setresuid(_NOBODY, _NOBODY, _NOBODY)
    for res, value in (
        (resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1)),
        (resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)),
        (resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files)),
        (resource.RLIMIT_NPROC, (0, 0)),
        (resource.RLIMIT_FSIZE, (0, 0)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_MEMLOCK, (0, 0)),
    ):
        resource.setrlimit(res, value)
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    if layers["landlock"].active:
        _landlock(landlock_abi())
    if layers["seccomp"].active:
        seccomp.load()
    return 3


def probe_layers(network: Layer, seccomp: Any) -> dict[str, Layer]:
    """What this platform offers, decided in the zygote before any child is forked."""
    abi = landlock_abi()
    root = os.geteuid() == 0
    layers = [
        network,
        Layer(
            "privileges",
            True,
            "children run as nobody (65534)" if root else "already unprivileged (not root)",
        ),
        Layer("rlimits", True, "CPU, address space, open files, processes, file size, core"),
        Layer("no_new_privs", True, "prctl(PR_SET_NO_NEW_PRIVS)"),
        Layer(
            "landlock",
            abi > 0,
            f"ABI {abi}: no filesystem, TCP, signal or abstract-socket access"
            if abi
            else f"unavailable: {os.strerror(ctypes.get_errno() or errno.ENOSYS)}",
        ),
        Layer(
            "seccomp",
            seccomp is not None,
            f"kills on {len(DENIED_SYSCALLS)} syscalls (sockets, threads, processes, exec, ...)"
            if seccomp is not None
            else "unavailable: pyseccomp or libseccomp missing",
        ),
    ]
    return {layer.name: layer for layer in layers}


def describe(layers: dict[str, Layer]) -> list[dict[str, Any]]:
    """Layers as plain data for health details and start-up logs."""
    return [asdict(layers[name]) for name in LAYERS if name in layers]
