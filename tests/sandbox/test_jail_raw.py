"""The OS jail against arbitrary code: raw CPython in the real jailed child, the dialect bypassed.

Secrets are planted before the zygote starts: in the environment of the process that starts it
(this one: GENMESH_API_KEY and a Vault token), in that process's memory, and in a file its user
can read. The file and a scratch directory are open to everyone, so that only the jail, not file
permissions, stands between a child and them. Each attack must fail cleanly: it raises in the
program, or the jail or an rlimit kills the child; no canary appears in anything the child sent;
nothing outside the child changed; and the next ordinary run on the same zygote succeeds and finds
none of the marks the attacker's child left in its own state.
"""

from __future__ import annotations

import ast
import asyncio
import os
import platform
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from genmesh.sandbox import jail
from genmesh.sandbox.executor import Zygote
from tests.sandbox import raw_child

pytestmark = pytest.mark.asyncio(loop_scope="session")

API_KEY = f"gmk-{secrets.token_hex(16)}"
VAULT_TOKEN = f"hvs.{secrets.token_hex(16)}"
MEMORY_SECRET = f"mem-{secrets.token_hex(16)}".encode()
FILE_SECRET = f"file-{secrets.token_hex(16)}"
CANARIES = (API_KEY, VAULT_TOKEN, MEMORY_SECRET.decode(), FILE_SECRET)

JAIL = jail.JailLimits(cpu_seconds=1, memory_bytes=256 << 20, open_files=16)
LIMITS = {
    "max_calls": 10,
    "max_output_bytes": 1 << 16,
    "max_output_lines": 100,
    "cpu_seconds": 1,
    "memory_bytes": 256 << 20,
    "recursion": 1000,
}
DEADLINE = 10.0

# Modules that read settings, secrets or TLS material: none may be loaded in a child.
SECRET_READERS = {
    "genmesh.runtime.settings",
    "genmesh.runtime.secrets",
    "genmesh.runtime.vault_settings",
    "genmesh.sandbox.settings",
    "pydantic_settings",
    "hvac",
    "ssl",
    "grpc",
}


@dataclass(frozen=True)
class Attack:
    """Raw code and how it may end; `needs` are the layers any one of which stops it (the case
    is skipped where the platform has none of them); `shows` is a piece of the run's value or
    error message that proves the attempt did what it claims (an allowed read of the child's own
    clean environment found it; a refusal was EPERM from seccomp, not ENOSYS)."""

    name: str
    body: str
    endings: frozenset[str]
    needs: tuple[str, ...]
    shows: str = ""


def attack(name: str, body: str, *endings: str, needs: str = "seccomp", shows: str = "") -> Attack:
    return Attack(name, body, frozenset(endings), tuple(needs.split()), shows)


KILLED = "SIGSYS"
DENIED = "PermissionError"
EPERM = "[Errno 1]"
FILES = "landlock seccomp"

IOVEC = """
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
"""
RLIMIT = """
class rlimit(ctypes.Structure):
    _fields_ = [("cur", ctypes.c_ulong), ("max", ctypes.c_ulong)]
"""

ATTACKS = [
    # the environment: the child's own is clean (these reads succeed and find the locale only)
    attack("env-os-environ", "result = dict(os.environ)", "value", needs="", shows="LC_ALL"),
    attack(
        "env-libc-getenv",
        "libc.getenv.restype = ctypes.c_char_p\n"
        "result = [libc.getenv(b'GENMESH_API_KEY'), libc.getenv(b'VAULT_TOKEN')]",
        "value",
        needs="",
        shows="[None, None]",
    ),
    attack(
        "env-libc-environ",
        "env = ctypes.POINTER(ctypes.c_char_p).in_dll(libc, 'environ')\n"
        "result = []\n"
        "while env[len(result)] is not None:\n"
        "    result.append(env[len(result)])",
        "value",
        needs="",
        shows="LC_ALL",
    ),
    attack(
        # argv and the environment the zygote was exec'd with, as they lie on its stack
        "env-exec-block",
        "libc.getauxval.restype = ctypes.c_ulong\n"
        "start = ctypes.c_void_p.in_dll(libc, 'program_invocation_name').value\n"
        "execfn = libc.getauxval(31)\n"
        "result = ctypes.string_at(start, execfn + len(ctypes.string_at(execfn)) + 1 - start)",
        "value",
        needs="",
        shows="LC_ALL=C.UTF-8",
    ),
    *(
        attack(
            f"env-proc-{who}",
            f"result = open('/proc/%s/environ' % P['{who}'], 'rb').read()",
            DENIED,
            needs=FILES,
        )
        for who in ("self", "zygote", "service", "init")
    ),
    # the service's memory
    attack(
        "mem-proc-service",
        "with open('/proc/%d/mem' % P['service'], 'rb') as f:\n"
        "    f.seek(P['address'])\n"
        "    result = f.read(P['length'])",
        DENIED,
        needs=FILES,
    ),
    attack(
        "mem-proc-zygote", "result = open('/proc/%d/mem' % P['zygote'], 'rb')", DENIED, needs=FILES
    ),
    attack(
        "mem-process-vm-readv",
        IOVEC + "buf = ctypes.create_string_buffer(P['length'])\n"
        "here = iovec(ctypes.addressof(buf), P['length'])\n"
        "there = iovec(P['address'], P['length'])\n"
        "sc('process_vm_readv', P['service'], ctypes.byref(here), 1, ctypes.byref(there), 1, 0)\n"
        "result = buf.raw",
        KILLED,
    ),
    attack("mem-ptrace-service", "sc('ptrace', 16, P['service'], 0, 0)", KILLED),
    attack("mem-ptrace-zygote", "sc('ptrace', 16, P['zygote'], 0, 0)", KILLED),
    # files: the secret, host configuration, the project, the runtime itself, /proc
    attack("file-secret", "result = open(P['secret']).read()", DENIED, needs=FILES),
    attack("file-secret-raw-openat", "sc('openat', -100, P['secret'].encode(), 0)", DENIED),
    attack("file-secret-stat", "result = os.stat(P['secret'])", DENIED, shows=EPERM),
    attack("file-secret-listdir", "result = os.listdir(P['secret_dir'])", DENIED, needs=FILES),
    attack("file-passwd", "result = open('/etc/passwd').read()", DENIED, needs=FILES),
    attack("file-project", "result = open(P['project']).read()", DENIED, needs=FILES),
    attack("file-runtime-source", "result = open(os.__file__).read()", DENIED, needs=FILES),
    attack("file-proc-self-maps", "result = open('/proc/self/maps').read()", DENIED, needs=FILES),
    attack("file-readlink-exe", "result = os.readlink('/proc/self/exe')", DENIED),
    attack("file-listdir-root", "result = os.listdir('/')", DENIED, needs=FILES),
    attack("file-open-by-handle", "sc('open_by_handle_at', 3, 0, 0)", KILLED),
    attack("file-import-unloaded", "result = I('sqlite3')", "ModuleNotFoundError", needs=FILES),
    # sockets of every family, by the socket module and by raw syscall
    *(
        attack(f"socket-{family}", f"result = I('socket').socket({number}, {kind}, 0)", KILLED)
        for family, number, kind in (
            ("inet", 2, 1),
            ("inet6", 10, 1),
            ("unix", 1, 1),
            ("netlink", 16, 3),
            ("packet", 17, 3),
        )
    ),
    attack("socket-pair", "result = I('socket').socketpair()", KILLED),
    attack("socket-raw-syscall", "sc('socket', 2, 1, 0)", KILLED),
    attack("socket-sendto-service", "sc('sendto', 3, b'x', 1, 0, None, 0)", KILLED),
    # processes and threads
    attack("process-fork", "result = os.fork()", KILLED),
    attack("process-posix-spawn", "result = os.posix_spawn('/bin/true', ['true'], {})", KILLED),
    attack("process-subprocess", "result = sys.modules['subprocess'].run(['/bin/true'])", DENIED),
    attack("process-system", "result = os.system('true')", KILLED),
    attack("process-exec", "os.execv('/bin/sh', ['sh', '-c', 'true'])", KILLED),
    attack("process-raw-clone", "sc('clone', 17, 0, 0, 0, 0)", KILLED),
    attack("process-raw-vfork", "sc('vfork')", KILLED),
    attack("process-raw-clone3", "sc('clone3', 0, 0)", KILLED),
    attack(
        "thread-threading",
        "t = sys.modules['threading'].Thread(target=len, args=[()])\nt.start()",
        KILLED,
    ),
    attack("thread-raw", "result = I('_thread').start_new_thread(len, ((),))", KILLED),
    # other processes: signals, pidfds, their limits and priorities
    *(
        attack(f"signal-{who}", f"os.kill({pid}, 9)", KILLED)
        for who, pid in (
            ("zygote", "P['zygote']"),
            ("service", "P['service']"),
            ("init", "1"),
            ("group", "0"),
            ("everyone", "-1"),
        )
    ),
    attack("signal-tgkill", "sc('tgkill', P['zygote'], P['zygote'], 9)", KILLED),
    attack("signal-pidfd", "sc('pidfd_open', P['zygote'], 0)", KILLED),
    attack("signal-sigio-owner", "sc('fcntl', 3, 8, P['zygote'])", DENIED),
    attack(
        "limit-of-zygote",
        RLIMIT + "sc('prlimit64', P['zygote'], 0, ctypes.byref(rlimit(0, 0)), None)",
        DENIED,
    ),
    attack("priority-of-zygote", "os.setpriority(os.PRIO_PROCESS, P['zygote'], 19)", DENIED),
    # writes anywhere (the scratch directory is writable by everyone)
    attack("write-file", "open(P['writable'] + '/x', 'w').write('x')", DENIED, needs=FILES),
    attack("write-tmp", "open('/tmp/genmesh-jail-raw', 'w').write('x')", DENIED, needs=FILES),
    attack("write-dev-shm", "open('/dev/shm/genmesh-jail-raw', 'w')", DENIED, needs=FILES),
    attack("write-cwd", "open('genmesh-jail-raw', 'w')", DENIED, needs=FILES),
    attack("write-mkdir", "os.mkdir(P['writable'] + '/d')", DENIED, needs=FILES),
    attack("write-symlink", "os.symlink('/etc/passwd', P['writable'] + '/l')", DENIED),
    attack("write-remove-secret", "os.remove(P['secret'])", DENIED, needs=FILES),
    attack("write-chmod-secret", "os.chmod(P['secret'], 0o777)", DENIED),
    attack("write-proc-self-mem", "open('/proc/self/mem', 'wb')", DENIED, needs=FILES),
    attack("write-oom-score", "open('/proc/self/oom_score_adj', 'w')", DENIED, needs=FILES),
    attack("write-memfd", "result = os.memfd_create('x')", KILLED),
    attack("write-mknod", "os.mknod(P['writable'] + '/fifo', 0o10600)", KILLED),
    # privileges, namespaces and the kernel's wider interfaces
    attack("escalate-setuid", "os.setuid(0)", KILLED),
    attack("escalate-raw-setresuid", "sc('setresuid', 0, 0, 0)", KILLED),
    attack("escalate-setgroups", "os.setgroups([0])", KILLED),
    attack("escalate-user-namespace", "sc('unshare', 0x10000000)", KILLED),
    attack("escalate-mount", "sc('mount', b'none', b'/tmp', b'tmpfs', 0, None)", KILLED),
    attack("escalate-chroot", "sc('chroot', b'/')", KILLED),
    attack("escalate-bpf", "sc('bpf', 0, None, 0)", KILLED),
    attack("escalate-io-uring", "sc('io_uring_setup', 1, None)", KILLED),
    attack("escalate-keyctl", "sc('keyctl', 0, 0, 0, 0, 0)", KILLED),
    attack("escalate-userfaultfd", "sc('userfaultfd', 0)", KILLED),
    attack("escalate-perf-event", "sc('perf_event_open', None, 0, -1, -1, 0)", KILLED),
    attack("escalate-personality", "sc('personality', 0xFFFFFFFF)", KILLED),
    attack("escalate-exec-memory", "sc('mmap', 0, 4096, 7, 0x22, -1, 0)", KILLED),
    attack(
        "escalate-make-memory-executable",
        "page = sc('mmap', 0, 4096, 3, 0x22, -1, 0)\nsc('mprotect', page, 4096, 7)",
        KILLED,
    ),
    attack("escalate-seccomp-listener", "sc('seccomp', 1, 8, None)", DENIED),
    attack("escalate-dumpable", "sc('prctl', 4, 1, 0, 0, 0)", DENIED),
    attack(
        "escalate-terminal-input",
        "if libc.ioctl(0, 0x5412, ctypes.c_char_p(b'x')) == -1:\n"
        "    raise OSError(ctypes.get_errno(), 'TIOCSTI')",
        DENIED,
    ),
    attack(
        "escalate-unknown-syscall",
        "if libc.syscall(1000) == -1:\n    raise OSError(ctypes.get_errno(), 'syscall 1000')",
        DENIED,
        shows=EPERM,
    ),
    # every limit
    attack("limit-cpu", "while True:\n    pass", "SIGXCPU", needs="rlimits"),
    attack(
        "limit-cpu-raised-to-the-hard-limit",
        "R = I('resource')\n"
        "R.setrlimit(R.RLIMIT_CPU, (R.getrlimit(R.RLIMIT_CPU)[1],) * 2)\n"
        "while True:\n    pass",
        "SIGKILL",  # at the hard limit
        needs="rlimits",
    ),
    attack(
        "limit-cpu-signal-ignored",
        "S = I('signal')\nS.signal(S.SIGXCPU, S.SIG_IGN)\nwhile True:\n    pass",
        DENIED,
    ),
    attack("limit-memory", "result = len(bytearray(1 << 30))", "MemoryError", needs="rlimits"),
    attack("limit-memory-string", "result = len('a' * 10**10)", "MemoryError", needs="rlimits"),
    attack(
        "limit-memory-raw-mmap",
        "sc('mmap', 0, 1 << 34, 3, 0x22, -1, 0)",
        "OSError",
        needs="rlimits",
        shows="[Errno 12]",
    ),
    *(
        attack(
            f"limit-{what}-raised",
            f"R = I('resource')\nR.setrlimit(R.{limit}, (1 << 40, 1 << 40))",
            "ValueError",
            needs="rlimits",
        )
        for what, limit in (
            ("cpu", "RLIMIT_CPU"),
            ("memory", "RLIMIT_AS"),
            ("open-files", "RLIMIT_NOFILE"),
            ("file-size", "RLIMIT_FSIZE"),
            ("processes", "RLIMIT_NPROC"),
        )
    ),
    attack("limit-open-files", "fds = []\nwhile True:\n    fds.append(os.dup(3))", DENIED),
    attack("limit-pipes", "result = os.pipe()", DENIED),
    attack("limit-recursion", "def f():\n    return f()\nf()", "RecursionError", needs=""),
    attack(
        "limit-recursion-raised",
        "sys.setrecursionlimit(10**8)\ndef f():\n    return f()\nf()",
        "MemoryError",
        "SIGXCPU",
        needs="rlimits",
    ),
    attack(
        "limit-c-stack",
        "sys.setrecursionlimit(10**8)\nx = []\nfor i in range(10**6):\n    x = [x]\n"
        "sys.modules['json'].dumps(x)",
        "SIGSEGV",
        needs="rlimits",
    ),
    attack("limit-frame-size", "os.write(3, b'\\xff\\xff\\xff\\xff')", "refused", needs=""),
    attack("limit-frame-garbage", "os.write(3, b'\\0\\0\\0\\5hello')", "refused", needs=""),
]
if platform.machine() == "x86_64":
    ATTACKS += [
        # the x32 ABI's socket (syscall numbers with bit 30): another ABI, so the filter kills
        attack("socket-x32-abi", "libc.syscall(0x40000000 | NR['socket'], 2, 1, 0)", KILLED),
        attack("escalate-modify-ldt", "sc('modify_ldt', 0, None, 0)", KILLED),
    ]

CLEAN = (
    "result = [sys.modules['statistics'].mean([1, 2, 3]), 'poisoned' in B, dict(os.environ), "
    "sys.modules['json'].dumps({'a': [1, 2]})]"
)


@dataclass
class Jail:
    zygote: Zygote
    layers: dict[str, dict[str, Any]]
    params: dict[str, Any]
    writable: Path
    secret: Path

    async def run(self, body: str, *, poison: bool = False) -> raw_child.Outcome:
        source = raw_child.program(body, self.params, poison=poison)
        return await raw_child.run(self.zygote, source, LIMITS, DEADLINE)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def jailed() -> AsyncIterator[Jail]:
    """A zygote started by a process holding every canary, with the attacks' parameters."""
    scratch = Path(tempfile.mkdtemp(prefix="genmesh-jail-"))
    secret_dir, writable = scratch / "secrets", scratch / "writable"
    secret_dir.mkdir()
    writable.mkdir()
    secret = secret_dir / "api-key"
    secret.write_text(FILE_SECRET)
    for path, mode in ((scratch, 0o755), (secret_dir, 0o755), (writable, 0o777), (secret, 0o644)):
        path.chmod(mode)
    zygote = Zygote(JAIL)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GENMESH_API_KEY", API_KEY)
        env.setenv("VAULT_TOKEN", VAULT_TOKEN)
        layers = {layer["name"]: layer for layer in await zygote.start()}
        assert zygote.process is not None
        params = {
            "self": "self",
            "service": os.getpid(),
            "zygote": zygote.process.pid,
            "init": 1,
            "address": id(MEMORY_SECRET) + bytes.__basicsize__ - 1,
            "length": len(MEMORY_SECRET),
            "secret": str(secret),
            "secret_dir": str(secret_dir),
            "writable": str(writable),
            "project": str(Path(__file__).parents[2] / "pyproject.toml"),
        }
        try:
            yield Jail(zygote, layers, params, writable, secret)
        finally:
            await zygote.stop()
            shutil.rmtree(scratch)


def leaked(text: str) -> list[str]:
    return [canary for canary in CANARIES if canary in text]


async def assert_next_run_is_clean(jailed: Jail) -> None:
    """An ordinary run on the same zygote succeeds and sees nothing an earlier child changed,
    and nothing outside the children changed either."""
    outcome = await jailed.run(CLEAN)
    assert outcome.ending == "value", outcome
    assert ast.literal_eval(outcome.value) == [
        2,
        False,
        jail.zygote_environment(),
        '{"a": [1, 2]}',
    ]
    assert jailed.zygote.alive
    assert jailed.secret.read_text() == FILE_SECRET
    assert stat.S_IMODE(jailed.secret.stat().st_mode) == 0o644
    assert not list(jailed.writable.iterdir())


@pytest.mark.parametrize("case", ATTACKS, ids=[a.name for a in ATTACKS])
async def test_attack_fails_cleanly_and_the_next_run_is_clean(jailed: Jail, case: Attack) -> None:
    if case.needs and not any(jailed.layers[name]["active"] for name in case.needs):
        details = "; ".join(f"{n}: {jailed.layers[n]['detail']}" for n in case.needs)
        pytest.skip(f"needs a layer this platform lacks ({details})")
    outcome = await jailed.run(case.body, poison=True)
    assert outcome.ending in case.endings, outcome
    assert not leaked(outcome.text()), outcome
    assert case.shows in f"{outcome.value} {(outcome.error or {}).get('message')}", outcome
    await assert_next_run_is_clean(jailed)


# Attacks that do reach a canary without the jail: the same code in an ordinary process
# started by this one (so with its environment, its user and its rights over this process).
CONTROLS = {
    "env-os-environ": API_KEY,
    "env-libc-getenv": VAULT_TOKEN,
    "env-proc-self": API_KEY,
    "mem-proc-service": MEMORY_SECRET.decode(),
    "mem-process-vm-readv": MEMORY_SECRET.decode(),
    "file-secret": FILE_SECRET,
}


# Runs a program's source from stdin as the jailed child would, in an empty namespace.
UNJAILED = (
    "import sys\nns = {'__builtins__': {}}\nexec(sys.stdin.read(), ns)\nprint(ns['__result__'])"
)


@pytest.mark.parametrize("name", CONTROLS)
async def test_the_attack_would_find_its_canary_outside_the_jail(jailed: Jail, name: str) -> None:
    if name.startswith("mem-") and os.geteuid() != 0:
        pytest.skip("reading a parent's memory needs root (ptrace rights over it)")
    (case,) = [a for a in ATTACKS if a.name == name]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-c",
        UNJAILED,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    found, _ = await process.communicate(raw_child.program(case.body, jailed.params).encode())
    assert process.returncode == 0
    assert CONTROLS[name] in found.decode()


async def test_the_zygote_starts_clean(jailed: Jail) -> None:
    """Its environment is exactly the jail's, its argv and working directory hold nothing."""
    assert jailed.zygote.process is not None
    proc = Path(f"/proc/{jailed.zygote.process.pid}")
    environ = (proc / "environ").read_bytes().decode()
    assert dict(v.split("=", 1) for v in environ.split("\0") if v) == jail.zygote_environment()
    argv = (proc / "cmdline").read_bytes().decode().split("\0")[:-1]
    assert argv[:4] == [sys.executable, "-s", "-P", "-B"]
    assert not leaked(" ".join(argv))
    assert os.readlink(proc / "cwd") == "/"


async def test_no_secret_in_the_memory_of_the_zygote_or_a_child(jailed: Jail) -> None:
    assert jailed.zygote.process is not None
    child = await jailed.zygote.spawn()  # jailed, waiting for its program
    try:
        for pid in (jailed.zygote.process.pid, child.pid):
            memory = raw_child.readable_memory(pid)
            # the scan does reach the stack, where the limits from argv lie
            assert any(b'"cpu_seconds": 1' in region for region in memory)
            found = [c for c in CANARIES for region in memory if c.encode() in region]
            assert not found, f"process {pid} holds {found}"
    finally:
        child.close()


async def test_a_child_holds_no_module_that_reads_secrets(jailed: Jail) -> None:
    outcome = await jailed.run("result = sorted(sys.modules)")
    modules = set(ast.literal_eval(outcome.value))
    assert "genmesh.sandbox.child" in modules
    assert not modules & SECRET_READERS
