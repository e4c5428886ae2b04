"""OS isolation for sandbox children, in layers that each stand on their own.

The sandbox service starts the pre-warmed parent (the zygote) with `zygote_command` and
`zygote_environment`: an isolated interpreter (`python -I -B`: no PYTHON* variables, no user
site, neither the working directory nor a script's directory on sys.path) running in `/` with an
environment of locale variables only. The zygote imports nothing that reads settings or secrets
(only the dialect, its runtime, the wire and this module), so neither it nor any child it forks
holds an API key, a Vault token or TLS material, in its environment or in its memory.

The zygote leaves the network namespace once; each child it forks then, in this order:

- closes every file descriptor but its socket to the service (stdio become /dev/null);
- drops to nobody when the zygote is root, sets rlimits (CPU, address space, open files,
  processes, file size, core dumps, locked memory) and no_new_privs;
- enters a Landlock domain that handles every filesystem right the kernel knows and grants none.
  The allowlist of paths is empty on purpose: every module a program can use is imported in the
  zygote before the fork, and nothing a run does needs a file (a traceback's source lines are
  simply left out). So no runtime file, no `/proc` (the child's own or its parents'), no host
  configuration and no project file can be opened, read, written or executed. Where the ABI has
  them, TCP bind/connect and signals or abstract unix sockets aimed outside the domain are denied
  as well;
- loads a default-deny seccomp filter (compiled to BPF once, in the zygote). The few syscalls a
  running program needs are allowed (`SECCOMP_ALLOWED`, some only with safe arguments:
  `SECCOMP_ALLOWED_IF`). Those that reach beyond the child or into the kernel's riskiest
  interfaces (`SECCOMP_KILLED`: sockets, processes, threads, exec, ptrace, signals, mounts,
  namespaces, credentials, executable memory, ...) kill it with SIGSYS: only an attack makes
  them. Every other syscall fails with EPERM, so a harmless probe (getcwd, uname) is an ordinary
  Python error; EPERM rather than ENOSYS, so that libc does not fall back to an older syscall.
  File syscalls are among those, so either layer alone keeps files out, and stat and readlink,
  which Landlock does not cover, are refused too. A syscall of another ABI (x32, i386) kills.

A layer the platform lacks is reported as unavailable (the zygote probes every layer at start-up
and tries them in jailed children); a layer that was available never fails silently in a child:
the child exits instead of running a program half-isolated.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import struct
import sys
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
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_NOBODY = 65534
_PROT_EXEC = 0x4
_EVERY_BIT = (1 << 64) - 1

# What a running program needs once the child is set up (found with `strace -f` on the zygote
# over the sandbox's tests and benchmark); each acts on the child alone. None creates a file
# descriptor, so the only ones a child ever has are stdio (/dev/null) and its socket.
SECCOMP_ALLOWED = (
    # its socket to the service
    "read",
    "write",
    "close",
    # memory: MemoryError comes from these failing at the address-space rlimit
    "brk",
    "munmap",
    "mremap",
    "madvise",
    # clocks, where the vDSO falls back to the kernel (output is batched by time)
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "time",
    # its own ids
    "getpid",
    "gettid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getgroups",
    # returning from a signal handler inherited from the zygote, and ending
    "rt_sigreturn",
    "restart_syscall",
    "exit",
    "exit_group",
)

# (syscall, argument, mask, value): allowed only when `argument & mask == value`. libseccomp
# compares all 64 bits, so junk in an argument's upper half fails the rule. Memory never becomes
# executable; rlimits are read and lowered for the child itself only (every child runs as the
# same user, so another pid could be a neighbour).
SECCOMP_ALLOWED_IF = (
    ("mmap", 2, _PROT_EXEC, 0),
    ("mprotect", 2, _PROT_EXEC, 0),
    ("prlimit64", 0, _EVERY_BIT, 0),
)
SECCOMP_KILLED_IF = (
    ("mmap", 2, _PROT_EXEC, _PROT_EXEC),
    ("mprotect", 2, _PROT_EXEC, _PROT_EXEC),
)

# Syscalls only an attack makes: each kills the child at once.
SECCOMP_KILLED = (
    # the network, and passing file descriptors over the service's socket
    "socket",
    "socketpair",
    "connect",
    "bind",
    "listen",
    "accept",
    "accept4",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    # new processes, threads and programs
    "clone",
    "clone3",
    "fork",
    "vfork",
    "execve",
    "execveat",
    # other processes: signals, tracing, memory, descriptors
    "kill",
    "tkill",
    "tgkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "process_mrelease",
    "kcmp",
    "migrate_pages",
    "move_pages",
    # namespaces and mounts
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    # credentials
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setgroups",
    "setfsuid",
    "setfsgid",
    "capset",
    # the kernel's widest attack surface, and files made or reached around paths
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "memfd_create",
    "memfd_secret",
    "modify_ldt",
    "personality",
    "open_by_handle_at",
    "name_to_handle_at",
    "mknod",
    "mknodat",
    # the machine itself
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "iopl",
    "ioperm",
    "syslog",
    "vhangup",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "lookup_dcookie",
    "uselib",
    "ustat",
    "sysfs",
)

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


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


@dataclass(frozen=True)
class Seccomp:
    """The children's seccomp filter as a BPF program, compiled once in the zygote (so each child
    loads exactly the program the self-test tried, without compiling it again), and the size of
    its lists on this architecture, for the layer's report."""

    program: bytes
    allowed: int
    killed: int

    def load(self) -> None:
        """Installs the filter in the calling process, which has set no_new_privs."""
        prog = _SockFprog(len(self.program) // 8, self.program)
        _check(
            _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0),
            "prctl(PR_SET_SECCOMP)",
        )


class JailError(Exception):
    """A layer that should be in force could not be applied."""


def zygote_command(ctrl_fd: int, limits: JailLimits) -> list[str]:
    """The zygote's argv: an interpreter without user site or working directory on its path
    (`-s -P`; its environment is the jail's own, so `-E` is not needed and would drop the hash
    seed), the control socket's number and the limits (nothing secret: anyone on the host can
    read a process's argv)."""
    zygote = "genmesh.sandbox.zygote"
    return [
        sys.executable,
        "-s",
        "-P",
        "-B",
        "-m",
        zygote,
        str(ctrl_fd),
        json.dumps(asdict(limits)),
    ]


def zygote_environment() -> dict[str, str]:
    """The zygote's whole environment, built here rather than filtered from the service's, so no
    variable the service was started with (keys, tokens, proxies, paths) reaches a child. The hash
    seed is fixed so that iterating a set of strings gives the same order in every zygote: a run
    replayed from its call log must make the same calls in the same order."""
    return {"LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0"}


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
    """Handles every access right the kernel knows and grants none (no rule is added): no file
    access at all, no TCP, no signals or abstract unix sockets outside the child."""
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


def build_seccomp() -> Seccomp | None:
    """The children's seccomp filter; None if pyseccomp or libseccomp is missing."""
    try:
        import pyseccomp  # type: ignore[import-untyped]
    except (ImportError, OSError, RuntimeError):  # RuntimeError: pyseccomp without libseccomp
        return None
    filt = pyseccomp.SyscallFilter(defaction=pyseccomp.ERRNO(errno.EPERM))
    filt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)

    def add(action: int, name: str, *condition: int) -> bool:
        """Adds one rule; False for a syscall this architecture does not have."""
        try:
            number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
        except OSError:
            return False  # unknown to this libseccomp
        if number < 0:
            return False  # not a syscall here (libseccomp's pseudo number)
        if condition:
            arg, mask, value = condition
            filt.add_rule(action, number, pyseccomp.Arg(arg, pyseccomp.MASKED_EQ, mask, value))
        else:
            filt.add_rule(action, number)
        return True

    allowed = {name for name in SECCOMP_ALLOWED if add(pyseccomp.ALLOW, name)}
    allowed |= {name for name, *cond in SECCOMP_ALLOWED_IF if add(pyseccomp.ALLOW, name, *cond)}
    killed = {name for name in SECCOMP_KILLED if add(pyseccomp.KILL_PROCESS, name)}
    for name, *cond in SECCOMP_KILLED_IF:
        add(pyseccomp.KILL_PROCESS, name, *cond)
    with os.fdopen(os.memfd_create("seccomp", os.MFD_CLOEXEC), "w+b") as bpf:
        filt.export_bpf(bpf)
        bpf.seek(0)
        return Seccomp(bpf.read(), len(allowed), len(killed))


def enter(
    keep_fd: int, limits: JailLimits, layers: dict[str, Layer], seccomp: Seccomp | None
) -> int:
    """Applies every available layer to the calling (freshly forked) child.

    Returns the child's socket, moved to fd 3; raises JailError if an available layer fails.
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
    if layers["seccomp"].active and seccomp is not None:
        seccomp.load()
    return 3


def _landlock_detail(abi: int) -> str:
    if not abi:
        return f"unavailable: {os.strerror(ctypes.get_errno() or errno.ENOSYS)}"
    denied = ["every file (an empty allowlist)"]
    if abi >= 4:
        denied.append("TCP bind and connect")
    if abi >= 6:
        denied.append("signals and abstract unix sockets outside the child")
    return f"ABI {abi}: denies " + ", ".join(denied)


def probe_layers(network: Layer, seccomp: Seccomp | None) -> dict[str, Layer]:
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
        Layer(
            "rlimits",
            True,
            "CPU, address space, open files, processes, file size, core, locked memory",
        ),
        Layer("no_new_privs", True, "prctl(PR_SET_NO_NEW_PRIVS)"),
        Layer("landlock", abi > 0, _landlock_detail(abi)),
        Layer(
            "seccomp",
            seccomp is not None,
            f"default deny: {seccomp.allowed} syscalls allowed, {seccomp.killed} kill the child "
            "(sockets, processes, threads, exec, ptrace, signals, mounts, ...), EPERM for the rest"
            if seccomp is not None
            else "unavailable: pyseccomp or libseccomp missing",
        ),
    ]
    return {layer.name: layer for layer in layers}


def describe(layers: dict[str, Layer]) -> list[dict[str, Any]]:
    """Layers as plain data for health details and start-up logs."""
    return [asdict(layers[name]) for name in LAYERS if name in layers]
